"""``laudnet train``'s entry point: :func:`train` runs a whole :class:`~laudnet.train.config.TrainConfig` (LAUDNet,
Han et al., TPAMI 2024) on one CPU, one GPU or one process per GPU under ``torchrun`` (DistributedDataParallel; NCCL
on GPU, gloo on CPU):

- ``mode: static`` trains the network without maskers (for data that has no torchvision weights);
- ``mode: dynamic`` trains with maskers, usually from ``init`` (a static laudnet checkpoint or a torchvision weights
  file), with the frozen static network loaded from the same weights as the distillation teacher (as in the paper).

The recipe is the official one: SGD with Nesterov momentum (or AdamW, for ViTs) and two parameter groups (maskers get
``masker_lr_mult`` × the backbone lr), a per-iteration cosine schedule with optional linear warm-up, the Gumbel
temperature updated every iteration, label smoothing, gradient accumulation, bf16 autocast and channels_last on CUDA.

Nothing is lost on interruption: ``last.pt`` is written atomically after every epoch and when SIGTERM or SIGINT
arrives (after the optimiser step in flight; the signal may reach the whole process group, DataLoader workers
included), and ``resume`` continues from it so that an interrupted and resumed run takes exactly the steps of an
uninterrupted one (:class:`~laudnet.train.run.TrainingRun`). ``best.pt`` keeps the checkpoint of the best validation.

Here: the run folder (fresh, overwritten or resumed), the process group and the stop signals; the task's parts are in
:mod:`laudnet.train.task`, the epoch loop and checkpoints in :mod:`laudnet.train.run`. No argparse here: the command
line is :mod:`laudnet.train.cli`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from laudnet.train import distributed as dist_utils

# `x as x`: names other code imports from here (the set-up and evaluation were part of this module).
from laudnet.train.build import build_datasets as build_datasets
from laudnet.train.build import build_model as build_model
from laudnet.train.build import build_optimizer as build_optimizer
from laudnet.train.build import check_config_inputs as check_config_inputs
from laudnet.train.build import classifier_prefix as classifier_prefix
from laudnet.train.build import load_init as load_init
from laudnet.train.build import model_paradigm as model_paradigm
from laudnet.train.build import read_init_state as read_init_state
from laudnet.train.build import size_kwargs as size_kwargs
from laudnet.train.checkpoint import load_checkpoint
from laudnet.train.config import TrainConfig, save_resolved
from laudnet.train.evaluation import EvalResult as EvalResult
from laudnet.train.evaluation import evaluate as evaluate
from laudnet.train.run import TrainResult, TrainState, build_run, saved_best
from laudnet.train.schedules import lr_factor as lr_factor
from laudnet.train.stop import StopFlag
from laudnet.train.task import TASKS


def train(
    cfg: TrainConfig,
    *,
    on_step: Callable[[TrainState], None] | None = None,
    log: Callable[[str], None] | None = print,
) -> TrainResult:
    """Run (or resume) the training described by ``cfg``.

    Args:
        cfg: the resolved configuration.
        on_step: called on every rank after each optimiser step with the current :class:`TrainState`.
        log: where rank 0 writes its one-line messages (None: silent).

    Returns:
        A :class:`TrainResult`.

    Raises:
        ValueError, FileNotFoundError, CheckpointError: bad input, found before any training step.
    """
    check_config_inputs(cfg)
    if cfg.threads is not None:
        # On a shared CPU, several threads per process slow down many times over when another process competes
        # (OpenMP threads spin-waiting on each other); one thread does not.
        torch.set_num_threads(cfg.threads)
    info, device = dist_utils.init_distributed(cfg.device)
    main = info.is_main
    say = (log if (log is not None and main) else (lambda _msg: None))
    stop = StopFlag()
    try:
        with stop.installed():  # from here on, SIGTERM/SIGINT stop the run after the next step, with a save
            return _train(cfg, info, device, on_step, say, stop)
    finally:
        dist_utils.cleanup()


def _train(cfg: TrainConfig, info: dist_utils.WorldInfo, device: torch.device,
           on_step: Callable[[TrainState], None] | None, say: Callable[[str], None], stop: StopFlag) -> TrainResult:
    run_dir = run_dir_of(cfg)
    resume_path, saved = _prepare_run_dir(cfg, run_dir, info.is_main, say)
    if saved is not None and int(saved["epoch"]) >= cfg.epochs:
        say(f"{run_dir} is already complete ({cfg.epochs} epochs, checkpoint {resume_path}); nothing to do")
        return TrainResult(run_dir=run_dir, epochs_done=cfg.epochs, global_step=int(saved["global_step"]),
                           steps_run=0, interrupted=False, best=saved_best(saved), last_eval=None)
    task = TASKS[cfg.task](cfg, device, say)
    world = info.world_size
    run = build_run(cfg, task, device=device, run_dir=run_dir, world=world, rank=info.rank, say=say, stop=stop,
                    on_step=on_step)
    if saved is not None:
        run.restore(resume_path, saved)
    if info.is_main:
        save_resolved(cfg, run_dir)
    say(
        f"{task.describe(run.raw_model)}; {world} process(es) on {device}, global batch {cfg.global_batch(world)}, "
        f"lr {run.schedule.base_lr:.4g}, {run.steps_per_epoch} steps x {cfg.epochs} epochs -> {run_dir}"
    )
    return run.fit()


def run_dir_of(cfg: TrainConfig) -> Path:
    """``output/run_name``; the default name joins model, mode (paradigm when dynamic) and dataset (after the
    detector, for detection: ``fasterrcnn-laud_resnet50-spatial-coco``)."""
    from laudnet.data import canonical_name
    from laudnet.train.config import detector_kind

    parts = [cfg.model, model_paradigm(cfg), canonical_name(cfg.dataset, cfg.task)]
    if cfg.task != "classification":
        parts.insert(0, detector_kind(cfg))
    return Path(cfg.output) / (cfg.run_name or "-".join(parts))


# What makes a folder hold a run: rerunning its name without --resume would replace these.
_RUN_FILES = ("last.pt", "best.pt", "metrics.csv", "replicas.json")


def _prepare_run_dir(
    cfg: TrainConfig, run_dir: Path, main: bool, say: Callable[[str], None]
) -> tuple[Path | None, dict[str, Any] | None]:
    """Check the run folder before anything is built; returns the checkpoint to resume and its state (or Nones).

    - Temporary files left by a write that was killed half-way (``.last.pt.<random>.tmp``) are removed.
    - Without ``resume``, a folder that already holds a run is refused unless ``overwrite`` (which removes its files).
    - ``resume='auto'`` without ``last.pt`` starts fresh (and says so).
    - A checkpoint of a run of another length is refused: the cosine lr and temperature schedules span the whole run,
      so a resumed run could not take the steps of any uninterrupted one; a finished run cannot be extended.

    Raises:
        ValueError, FileNotFoundError, CheckpointError: with a one-line message naming the folder or file.
    """
    if main and run_dir.is_dir():
        for tmp in sorted(run_dir.glob(".*.tmp")):
            tmp.unlink(missing_ok=True)
            say(f"removed {tmp}: the temporary file of a write that was killed half-way")
    if cfg.resume is None:
        held = [name for name in _RUN_FILES if (run_dir / name).exists()]
        if held and not cfg.overwrite:
            raise ValueError(
                f"run folder {run_dir} already holds a run ({', '.join(held)}): continue it with --resume auto, "
                "give a fresh --run-name, or start it over with --overwrite"
            )
        if held:
            for name in held:
                (run_dir / name).unlink(missing_ok=True)
            say(f"--overwrite: removed {', '.join(held)} of the previous run in {run_dir}")
        return None, None
    if cfg.resume == "auto":
        path = run_dir / "last.pt"
        if not path.is_file():
            say(f"--resume auto: no checkpoint {path} yet; starting fresh")
            return None, None
    else:
        path = Path(cfg.resume)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint to resume {path} does not exist")
    state = load_checkpoint(path, expected_model=cfg.model)
    saved_epochs = (state.get("config") or {}).get("epochs")
    if saved_epochs is not None and saved_epochs != cfg.epochs:
        if int(state["epoch"]) >= saved_epochs:
            raise ValueError(
                f"checkpoint {path} ends a finished {saved_epochs}-epoch run whose learning-rate schedule has ended; "
                f"a resume cannot extend it to {cfg.epochs} epochs: start a new run from its weights "
                f"(--init {path} --run-name NEW)"
            )
        raise ValueError(
            f"checkpoint {path} is of a {saved_epochs}-epoch run, not {cfg.epochs}: resume it with --epochs "
            f"{saved_epochs} (the learning-rate and temperature schedules span the whole run)"
        )
    return path, state
