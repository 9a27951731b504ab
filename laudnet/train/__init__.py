"""Training infrastructure: config, checkpoints, distributed helpers and metrics logging."""
