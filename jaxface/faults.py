"""Deterministic fault injection for the fault tests, switched on by one environment variable.

    JAXFACE_FAULTS="train_step@3=SIGINT"               Ctrl-C as the 3rd training step finishes
    JAXFACE_FAULTS="checkpoint_save@2=ENOSPC"          the 2nd checkpoint save finds the disk full
    JAXFACE_FAULTS="eval_batch@1=SIGTERM,fit_batch@2=SIGINT"

Each `hit(point)` counts its calls in this process; at the given count it sends the signal to this
process (handled exactly as one from a terminal or a scheduler) or raises the OSError. A test can then
say what happens at step k instead of sleeping and hoping. Unset (every normal run), a hit is one
dictionary lookup.
"""
from __future__ import annotations

import errno
import os
import signal

ENV = "JAXFACE_FAULTS"
# Where a fault can be injected: the loops a user can interrupt and the write a full disk can fail.
POINTS = {
    "train_step": "after each training step",
    "checkpoint_save": "at each checkpoint save, before anything is written",
    "eval_batch": "after each batch of an evaluation or prediction pass",
    "fit_batch": "after each streamed batch of fit-cgmm",
    "sweep_batch": "after each rendered batch of a generate sweep",
}
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}
ERRORS = {"ENOSPC": errno.ENOSPC, "EROFS": errno.EROFS, "EIO": errno.EIO}

_parsed: tuple[str, dict[str, list[tuple[int, str]]]] | None = None
_counts: dict[str, int] = {}


class FaultSpecError(ValueError):
    """A malformed JAXFACE_FAULTS value."""


def parse(spec: str) -> dict[str, list[tuple[int, str]]]:
    """'point@count=action,...' -> {point: [(count, action), ...]}, every part checked."""
    plan: dict[str, list[tuple[int, str]]] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        where, sep, action = item.partition("=")
        point, at, count = where.partition("@")
        if not sep or not at:
            raise FaultSpecError(f"{ENV}: {item!r} is not point@count=action, e.g. train_step@3=SIGINT")
        if point not in POINTS:
            raise FaultSpecError(f"{ENV}: unknown point {point!r}; valid points: {', '.join(POINTS)}")
        if action not in SIGNALS and action not in ERRORS:
            raise FaultSpecError(f"{ENV}: unknown action {action!r}; valid actions: "
                                 f"{', '.join([*SIGNALS, *ERRORS])}")
        if not count.isdigit() or int(count) < 1:
            raise FaultSpecError(f"{ENV}: the count in {item!r} must be a positive integer")
        plan.setdefault(point, []).append((int(count), action))
    return plan


def _plan() -> dict[str, list[tuple[int, str]]]:
    global _parsed
    spec = os.environ.get(ENV, "")
    if _parsed is None or _parsed[0] != spec:
        _parsed = (spec, parse(spec) if spec else {})
        _counts.clear()
    return _parsed[1]


def hit(point: str) -> None:
    """Marks one pass through POINT; performs the fault planned for this pass, if any."""
    plan = _plan()
    if point not in plan:
        return
    _counts[point] = n = _counts.get(point, 0) + 1
    for count, action in plan[point]:
        if count != n:
            continue
        if action in SIGNALS:
            os.kill(os.getpid(), SIGNALS[action])
        else:
            code = ERRORS[action]
            raise OSError(code, f"{os.strerror(code)} (injected by {ENV} at {point} #{n})")
