"""The server's tunables (limits, micro-batching, the uncertain band), validated in one place."""
from __future__ import annotations

import dataclasses
import math

# Batch sizes the detector is compiled for at start-up (rounded up to the device count, capped by
# max_batch): a micro-batch runs in the smallest bucket that holds it, padded.
DEFAULT_BUCKETS = (1, 4, 16, 32)


class ServeOptionError(ValueError):
    """A server option that cannot work (a negative limit, a port out of range, ...)."""


@dataclasses.dataclass(frozen=True)
class ServeOptions:
    max_batch: int = 32  # images per batched detector call; 1 turns micro-batching off
    batch_wait_ms: float = 5.0  # how long the first queued image waits for others to join its batch
    max_queue: int = 256  # images waiting for the detector; more -> 503 with Retry-After
    max_upload_bytes: int = 10 * 1024 * 1024  # per file, enforced while the body streams in
    max_batch_files: int = 32  # files per POST /v1/detect/batch
    max_pixels: int = 40_000_000  # width x height read from the header, refused before decoding
    min_side: int = 64  # smallest accepted image side in pixels
    # |p_fake - threshold| below this -> "uncertain"; 0: off; None: the band calibration.json measured
    # (validation accuracy >= 0.95 outside it), off without one.
    uncertain_band: float | None = None
    max_generate_steps: int = 300  # cap on a generate request's optimisation steps
    generate_steps: int = 0  # steps when a request gives none; 0: the fitted config's, capped
    max_generate_pending: int = 4  # generate requests running or waiting; more -> 503
    decode_threads: int = 2  # threads decoding uploads off the event loop
    graceful_shutdown_s: float = 30.0  # on SIGTERM/Ctrl-C: how long in-flight requests may take

    def validate(self) -> "ServeOptions":
        def positive_int(name, minimum=1):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ServeOptionError(f"--{name} must be an integer >= {minimum}, got {value!r}")

        for name in ("max_batch", "max_queue", "max_upload_bytes", "max_batch_files", "max_pixels",
                     "min_side", "max_generate_steps", "max_generate_pending", "decode_threads"):
            positive_int(name)
        positive_int("generate_steps", 0)
        if not (math.isfinite(self.batch_wait_ms) and 0 <= self.batch_wait_ms <= 1000):
            raise ServeOptionError(f"--batch_wait_ms must be in [0, 1000], got {self.batch_wait_ms}")
        if self.uncertain_band is not None and not (math.isfinite(self.uncertain_band) and 0 <= self.uncertain_band < 0.5):
            raise ServeOptionError(f"--uncertain_band must be in [0, 0.5) (0 turns it off), got {self.uncertain_band}")
        if self.generate_steps > self.max_generate_steps:
            raise ServeOptionError(f"--generate_steps={self.generate_steps} exceeds --max_generate_steps="
                                   f"{self.max_generate_steps}")
        if not (math.isfinite(self.graceful_shutdown_s) and self.graceful_shutdown_s > 0):
            raise ServeOptionError(f"--graceful_shutdown_s must be > 0, got {self.graceful_shutdown_s}")
        return self

    def buckets(self, shards: int = 1) -> tuple[int, ...]:
        """Compiled batch sizes: DEFAULT_BUCKETS up to max_batch, plus max_batch, each rounded up to a
        multiple of the data-parallel device count (the batch is split over the devices)."""
        shards = max(1, int(shards))
        wanted = [b for b in DEFAULT_BUCKETS if b < self.max_batch] + [self.max_batch]
        return tuple(sorted({-(-b // shards) * shards for b in wanted}))
