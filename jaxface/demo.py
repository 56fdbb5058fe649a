"""`make demo`: the main jobs on the embedded synthetic faces, end to end, with the paths printed."""
from __future__ import annotations

import pathlib
import time

from jaxface import config as config_lib


def _banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def run(workdir: pathlib.Path, quick: bool = False) -> dict:
    from jaxface.data import report
    from jaxface.train import trainer

    workdir = pathlib.Path(workdir)
    t0 = time.perf_counter()
    overrides = {}
    if quick:
        overrides = {"num_train_steps": 30, "eval_every_steps": 0, "checkpoint_every_steps": 30,
                     "data.num_train": 512, "data.num_test": 256, "data.num_val": 128}
    cfg = config_lib.load_config("configs/attributes/synthfaces_tiny.py", overrides)
    attr_dir = workdir / "attributes"

    _banner("1/3 data: synthetic faces (jaxface data)")
    data = report.attribute_report(cfg, attr_dir)
    print(data["text"])

    _banner(f"2/3 train: VGG-Face width {cfg.model.width} at {cfg.model.input_size} px, "
            f"{cfg.num_train_steps} steps (jaxface train)")
    from jaxface import files

    files.write_text(attr_dir / "config.json", cfg.to_json_best_effort(indent=2))
    trainer.train(cfg, attr_dir)

    _banner("3/3 evaluate on the test split (jaxface evaluate)")
    ev = trainer.evaluate_command(cfg, attr_dir, split="test")
    print(ev["text"])

    _banner(f"done in {time.perf_counter() - t0:.0f} s; results")
    outputs = list(data["outputs"]) + list(ev["outputs"]) + [attr_dir / "checkpoints",
                                                              attr_dir / "metrics.jsonl"]
    for p in outputs:
        print(f"  {p}")
    return {"outputs": outputs, "eval": ev["metrics"]}
