"""Tasks of the one trainer, looked up by name in `base.TASKS` (config.task)."""
