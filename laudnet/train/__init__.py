"""Training: config, checkpoints, distributed helpers, metrics, losses and schedules; set-up (`build.py`), the per-task
parts (`task.py`), the run and its checkpoints (`run.py`), the entry point `train` (`loop.py`), evaluation
(`evaluation.py`); the `train`/`eval`/`viz` commands (`cli.py`), plots (`viz.py`) and the CPU demo (`demo.py`)."""
