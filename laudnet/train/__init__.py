"""Training: config, checkpoints, distributed helpers, metrics, losses and schedules, the loop (`loop.py`), the
`train`/`eval`/`viz` commands (`cli.py`), plots (`viz.py`) and the CPU demo (`demo.py`)."""
