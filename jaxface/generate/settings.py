"""Inversion settings of `jaxface generate`: one frozen, hashable Settings per inversion (equal settings
share a batched, compiled call), read from a config's `invert` (or `classvis`) section."""
from __future__ import annotations

import dataclasses

from jaxface.invert import param as param_lib


METHODS = ("invert", "classvis")
PARAMS = param_lib.PARAM_KINDS
INITS = ("noise", "mean", "exemplar")
PRIORS = ("global", "conditional")
DEFAULT_NUM = 8
MAX_SEED = 2**32 - 1


class GenerateError(ValueError):
    """A generate request that cannot run (bad names, options, files or a missing fitted model)."""


# ------------------------------------------------------------------------------------- settings
@dataclasses.dataclass(frozen=True)
class Settings:
    """Static settings of one inversion (hashable: equal settings share a batched, compiled call)."""

    steps: int = 200
    lr: float = 0.05
    optimizer: str = "adam"
    momentum: float = 0.9
    param: str = "fft"
    pixel_mode: str = "sigmoid"
    decay_power: float = 1.0
    init: str = "noise"
    noise_std: float = 0.05
    jitter: int = 2
    pad: int = 0
    scales: tuple = ()
    rotate_degrees: float = 0.0
    blur_every: int = 4
    blur_sigma: float = 0.5
    tv_weight: float = 0.05
    l2_weight: float = 0.0
    range_weight: float = 0.0
    prior_weight: float = 0.0  # param='pca': weight of the Gaussian prior on the coefficients
    # param='pca': 'global' (every training face) or 'conditional' (the faces with the requested
    # attributes: the prior's Gaussian given the attribute vector is the start and the penalty's centre)
    prior: str = "global"
    # After the inversion, this many more steps on the pixels themselves, from its result and with the
    # same target (for param='pca': detail outside the prior's subspace); 0: none.
    refine_steps: int = 0
    head_mode: str = "log_prob"
    loop: str = "auto"
    chunk: int = 0
    max_batch: int = 32

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, overrides: dict | None, where: str = "settings") -> "Settings":
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(self.names()))
        if unknown:
            raise GenerateError(
                f"unknown {where} key(s) {', '.join(map(repr, unknown))}; valid: {', '.join(self.names())}")
        values = dataclasses.asdict(self)
        for key, value in overrides.items():
            default = values[key]
            try:
                if isinstance(default, bool):
                    value = bool(value)
                elif isinstance(default, int):
                    if float(value) != int(float(value)):
                        raise ValueError("not an integer")
                    value = int(float(value))
                elif isinstance(default, float):
                    value = float(value)
                elif isinstance(default, tuple):
                    value = tuple(float(v) for v in (value or ()))
                else:
                    value = str(value)
            except (TypeError, ValueError):
                raise GenerateError(f"{where} {key}={value!r}: expected a {type(default).__name__}") from None
            values[key] = value
        out = Settings(**values)
        out.validate(where)
        return out

    def validate(self, where: str = "settings") -> None:
        if self.steps < 1:
            raise GenerateError(f"{where}: steps must be at least 1, got {self.steps}")
        if not self.lr > 0:
            raise GenerateError(f"{where}: lr must be > 0, got {self.lr}")
        if self.init not in INITS:
            raise GenerateError(f"{where}: init={self.init!r}; valid: {', '.join(INITS)}")
        if self.prior not in PRIORS:
            raise GenerateError(f"{where}: prior={self.prior!r}; valid: {', '.join(PRIORS)}")
        if self.prior == "conditional" and self.param != "pca":
            raise GenerateError(f"{where}: prior='conditional' is a prior on param='pca' coefficients; "
                                f"param={self.param!r} has none")
        if self.refine_steps < 0:
            raise GenerateError(f"{where}: refine_steps must be >= 0, got {self.refine_steps}")
        if self.max_batch < 1:
            raise GenerateError(f"{where}: max_batch must be at least 1, got {self.max_batch}")
        if self.noise_std < 0:
            raise GenerateError(f"{where}: noise_std must be >= 0, got {self.noise_std}")
        if self.param not in PARAMS:
            raise GenerateError(f"{where}: param={self.param!r}; valid: {', '.join(PARAMS)}")
        if self.prior_weight < 0 or (self.prior_weight > 0 and self.param != "pca"):
            raise GenerateError(f"{where}: prior_weight={self.prior_weight} needs param='pca' and must be >= 0")

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["scales"] = list(self.scales)
        return d


def _config_dict(section) -> dict:
    if section is None:
        return {}
    return section.to_dict() if hasattr(section, "to_dict") else dict(section)


def settings_from_config(config, method: str) -> Settings:
    """invert section, plus the classvis section's overrides for method='classvis'."""
    base = Settings().replace(_config_dict(config.get("invert")), "config invert")
    if method == "classvis":
        base = base.replace(_config_dict(config.get("classvis")), "config classvis")
    return base
