"""Native kernels XLA calls through FFI (optional; every model runs without them)."""
