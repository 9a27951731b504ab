"""A LAUDNet training run (Han et al., TPAMI 2024): the epoch loop, validation and checkpoints of one task.

:func:`build_run` sets a run up from a :class:`~laudnet.train.task.Task` (datasets, model and teacher from the task;
device placement and DistributedDataParallel, optimiser and lr schedule here); :class:`TrainingRun` trains it.
Each optimiser step sets the Gumbel temperature and noise of that iteration, accumulates ``grad_accum``
micro-batches (gradients synchronised on the last), clips, steps the optimiser and the per-iteration lr schedule.

``save`` writes the whole position atomically: model, optimiser, lr scheduler, epoch, optimiser steps done in that
epoch, every rank's RNG states and the epoch's running sums; ``restore`` continues from it with the same data order
(the sampler skips the batches already seen), so an interrupted and resumed run takes exactly the steps of an
uninterrupted one.

Two options change the model that is validated and saved (the *evaluated* model), both off by default:

- ``ema_decay``: an exponential moving average of the weights (:class:`~laudnet.train.ema.ModelEma`), updated after
  every optimiser step, is validated and saved as the checkpoint's ``model`` (what ``laudnet eval``, ``--init`` and
  deployment read); the trained weights go to ``train_model``, which a resume continues from. Under DDP every rank
  keeps its own average: the parameters are identical on all ranks (the same update of identical weights), and rank
  0's BN statistics are copied to all ranks before each validation, as for the trained model.
- ``recalibrate_bn``: after the last epoch the evaluated model's BN statistics are re-estimated over that many
  training batches with the decisions of eval (:func:`~laudnet.train.recalibration.recalibrate_bn`), then it is
  validated and saved.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from laudnet.train import distributed as dist_utils
from laudnet.train.build import build_optimizer
from laudnet.train.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from laudnet.train.config import TrainConfig
from laudnet.train.ema import ModelEma
from laudnet.train.evaluation import progress_bar
from laudnet.train.metrics import MetricsLogger
from laudnet.train.recalibration import recalibrate_bn
from laudnet.train.schedules import LRSchedule, gate_noise, gumbel_temperature
from laudnet.train.stop import StopFlag, stop_requested
from laudnet.train.task import Task


@dataclass
class TrainState:
    """Where a run stands; passed to the ``on_step`` callback after every optimiser step.

    Attributes:
        epoch: the epoch in progress (0-based); the number of epochs done between epochs.
        step_in_epoch: optimiser steps done in this epoch.
        global_step: optimiser steps done in the whole run.
        steps_per_epoch: optimiser steps of a full epoch.
        temperature: the Gumbel temperature of the last step.
        lr: the backbone learning rate of the last step.
        metrics: the last step's logs (the task's ``log_keys``, floats).
    """

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    steps_per_epoch: int = 0
    temperature: float = 1.0
    lr: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainResult:
    """The outcome of :func:`laudnet.train.loop.train`.

    Attributes:
        run_dir: the run folder (``args.yaml``, ``metrics.csv``, ``last.pt``, ``best.pt``).
        epochs_done: completed epochs.
        global_step: optimiser steps of the whole run so far (resumed parts included).
        steps_run: optimiser steps taken by this call.
        interrupted: stopped by SIGTERM or SIGINT (``last.pt`` holds the position; resume with ``resume='auto'``).
        best: best value of the task's ``best_metric`` (None before any validation).
        last_eval: the last validation (an :class:`~laudnet.train.evaluation.EvalResult` for classification).
        history: the metric rows logged by this call.
        replica_digests: with several processes, the SHA-256 of each rank's final weights (identical when the
            data-parallel replicas stayed in sync; also written to ``replicas.json``); None for one process.
        stop_signal: the signal that stopped the run (``signal.SIGTERM`` when another rank received it); None when
            not interrupted.
        best_metric: the name of ``best`` (a validation column of ``metrics.csv``).
    """

    run_dir: Path
    epochs_done: int
    global_step: int
    steps_run: int
    interrupted: bool
    best: float | None
    last_eval: Any
    history: list[dict[str, Any]] = field(default_factory=list)
    replica_digests: list[str] | None = None
    stop_signal: int | None = None
    best_metric: str = "val_top1"

    @property
    def best_top1(self) -> float | None:
        """Best validation top-1 of a classification run (None before any validation, or for another task)."""
        return self.best if self.best_metric == "val_top1" else None


def saved_best(saved: dict[str, Any]) -> float | None:
    """The best validation metric a checkpoint holds (``best_top1`` in checkpoints written before ``best``)."""
    return saved.get("best", saved.get("best_top1"))


def _silent(_message: str) -> None:
    pass


@dataclass(eq=False)
class TrainingRun:
    """One training run of a task: its model, optimiser and loaders, and the position they share.

    Build it with :func:`build_run`; ``restore`` a checkpoint to continue one; ``fit`` trains to the end (or to a
    stop request). Under DDP every process holds one and calls the same methods (they hold collectives).

    Attributes:
        model: what a step calls (the DDP wrapper under several processes); ``raw_model`` is the model itself.
        schedule: the lr schedule (``scheduler`` applies it to ``optimizer`` every step).
        state: the position (epoch, step, temperature, lr, the last step's logs).
        sums: the epoch's running sums of the task's logs weighted by images, then the image count.
        best: best value of the task's ``best_metric`` so far; ``last_eval`` the last validation result.
        ema: the moving average of the weights (``ema_decay``), or None.
    """

    cfg: TrainConfig
    task: Task
    model: nn.Module
    raw_model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    train_loader: DataLoader
    val_loader: DataLoader
    device: torch.device
    run_dir: Path
    steps_per_epoch: int
    world: int = 1
    rank: int = 0
    say: Callable[[str], None] = _silent
    stop: StopFlag = field(default_factory=StopFlag)
    on_step: Callable[[TrainState], None] | None = None
    ema: ModelEma | None = None
    best: float | None = None
    last_eval: Any = None
    steps_run: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.scheduler = self.schedule.scheduler(self.optimizer)
        self.state = TrainState(steps_per_epoch=self.steps_per_epoch)
        self.sums = torch.zeros(len(self.task.log_keys) + 1, dtype=torch.float64)
        self._bad_seen = 0
        self._epoch_start = time.time()
        self._epoch_images = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def eval_model(self) -> nn.Module:
        """The model validated and saved as the checkpoint's ``model``: the EMA of the weights, or the model."""
        return self.raw_model if self.ema is None else self.ema.module

    # ------------------------------------------------------------------------------------------------- training

    def fit(self) -> TrainResult:
        """Train from the current position to the end of the run, or until a stop request (then ``last.pt`` holds
        the position): per epoch, its metrics row in ``metrics.csv`` and the log, ``last.pt`` every
        ``checkpoint_every`` epochs and at the end, ``best.pt`` when the best metric improves."""
        cfg, last = self.cfg, self.run_dir / "last.pt"
        logger = MetricsLogger(self.run_dir, tensorboard=cfg.tensorboard, enabled=self.main)
        if self.ema is not None:
            warm = ", warmed up" if self.ema.warmup else ""
            self.say(f"validating and saving the EMA of the weights (decay {self.ema.decay:g}{warm})")
        interrupted = False
        try:
            while self.state.epoch < cfg.epochs:
                if not self.train_epoch():
                    interrupted = True
                    break
                row = self.finish_epoch()
                done = self.state.epoch
                logger.log(done - 1, row)
                self.history.append({"epoch": done - 1, **row})
                self.say(self._epoch_line(done, row))
                improved = self._track_best(row)
                stopping = stop_requested(self.stop, self.device)
                if done % cfg.checkpoint_every == 0 or done == cfg.epochs or stopping:
                    self.save(last)
                if improved:
                    self.save(self.run_dir / "best.pt")
                if stopping and done < cfg.epochs:
                    interrupted = True
                    self.say(f"{self.stop.name}: saved {last} after epoch {done}; resume with --resume auto")
                    break
        finally:
            logger.close()
        digests = None
        if self.world > 1 and not interrupted:
            digests = _check_replicas(self.raw_model, self.run_dir if self.main else None, self.say)
        return TrainResult(
            run_dir=self.run_dir, epochs_done=self.state.epoch, global_step=self.state.global_step,
            steps_run=self.steps_run, interrupted=interrupted, best=self.best, last_eval=self.last_eval,
            history=self.history, replica_digests=digests,
            stop_signal=(self.stop.signum or signal.SIGTERM) if interrupted else None,
            best_metric=self.task.best_metric,
        )

    def train_epoch(self) -> bool:
        """Train epoch ``state.epoch`` from step ``state.step_in_epoch`` to its end; False when a stop request ended
        it early (``last.pt`` then holds the position)."""
        cfg, state = self.cfg, self.state
        epoch, first = state.epoch, state.step_in_epoch
        if first == 0:
            self.sums.zero_()
        self.train_loader.sampler.set_epoch(epoch, start_batch=first * cfg.grad_accum)
        self.model.train()
        self._epoch_start, self._epoch_images = time.time(), 0
        batches = iter(self.train_loader)
        steps = range(first, self.steps_per_epoch)
        bar = progress_bar(steps, len(steps), f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress and self.main)
        try:
            for step in bar:
                self._step(batches, step)
                if hasattr(bar, "set_postfix") and (step + 1) % cfg.log_interval == 0:
                    bar.set_postfix(loss=f"{state.metrics['loss']:.3f}", flops=f"{state.metrics['flops_ratio']:.3f}",
                                    T=f"{state.temperature:.2f}")
                if self.on_step is not None:
                    self.on_step(state)
                if stop_requested(self.stop, self.device):
                    self.save(self.run_dir / "last.pt")
                    self.say(f"{self.stop.name}: saved {self.run_dir / 'last.pt'} at epoch {epoch}, step {step + 1}/"
                             f"{self.steps_per_epoch}; resume with --resume auto")
                    return False
        finally:
            if hasattr(bar, "close"):
                bar.close()
        return True

    def _step(self, batches: Iterator[Any], step: int) -> None:
        """Optimiser step ``step`` of the epoch: ``grad_accum`` micro-batches from ``batches``."""
        cfg, state, task = self.cfg, self.state, self.task
        total = self.schedule.total_steps
        temperature = gumbel_temperature(state.global_step, total, cfg.t0, cfg.t_last, cfg.temp_schedule)
        task.set_gates(self.raw_model, temperature, gate_noise(state.global_step, total, cfg.noise_schedule,
                                                               cfg.noise_end))
        self.optimizer.zero_grad(set_to_none=True)
        logs = torch.zeros(len(task.log_keys), dtype=torch.float64)
        for micro in range(cfg.grad_accum):
            sync = micro == cfg.grad_accum - 1 or self.world == 1
            with contextlib.nullcontext() if sync else self.model.no_sync():
                loss, batch_logs, n = task.step(self.model, self.raw_model, next(batches),
                                                epoch=state.epoch + step / self.steps_per_epoch)
                (loss / cfg.grad_accum).backward()
            logs += batch_logs
            self.sums[:-1] += batch_logs * n
            self.sums[-1] += n
            self._epoch_images += n
        if cfg.clip_grad is not None:
            nn.utils.clip_grad_norm_(self.raw_model.parameters(), cfg.clip_grad)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.raw_model, state.global_step)
        state.lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        state.global_step += 1
        state.step_in_epoch = step + 1
        state.temperature = temperature
        state.metrics = {k: float(v) / cfg.grad_accum for k, v in zip(task.log_keys, logs, strict=True)}
        self.steps_run += 1
        if not math.isfinite(state.metrics["loss"]):
            raise FloatingPointError(
                f"loss is {state.metrics['loss']} at epoch {state.epoch}, step {step}: lower the learning rate"
            )

    def finish_epoch(self) -> dict[str, Any]:
        """Close the epoch just trained (collective): its metrics row (the training means over all processes,
        temperature, lr, the validation when due, timing) and the position moves on to the next epoch."""
        cfg, state = self.cfg, self.state
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        # Training throughput of this process (validation excluded); the first epoch includes warm-up.
        train_seconds = time.time() - self._epoch_start
        dist_utils.broadcast_buffers(self.raw_model)
        if self.ema is not None:
            dist_utils.broadcast_buffers(self.ema.module)
        totals = dist_utils.all_reduce_sum(self.sums.to(self.device)).cpu()
        seen = max(float(totals[-1]), 1.0)
        row = self.task.train_row({k: float(totals[i]) / seen for i, k in enumerate(self.task.log_keys)})
        row.update(temperature=state.temperature, lr=state.lr)
        last = state.epoch + 1 == cfg.epochs
        if last and cfg.recalibrate_bn:
            self.recalibrate_bn(cfg.recalibrate_bn)
        if (state.epoch + 1) % cfg.eval_every == 0 or last:
            row.update(self.validate())
        row["epoch_time_s"] = time.time() - self._epoch_start
        row["train_images_per_s"] = self._epoch_images / max(train_seconds, 1e-9)
        row["train_images_per_s_all"] = row["train_images_per_s"] * self.world
        train_set = self.train_loader.dataset
        if hasattr(train_set, "bad_images"):  # image folders: unreadable images skipped since the last epoch line
            bad = train_set.bad_images + getattr(self.val_loader.dataset, "bad_images", 0)
            row["skipped_images"], self._bad_seen = bad - self._bad_seen, bad
        state.epoch, state.step_in_epoch = state.epoch + 1, 0
        return row

    def validate(self) -> dict[str, float]:
        """Validate the evaluated model now (collective): the row's validation columns; the task's full result goes
        to ``last_eval``."""
        row, self.last_eval = self.task.validate(self.eval_model, self.val_loader)
        return row

    def recalibrate_bn(self, batches: int) -> None:
        """Re-estimate the evaluated model's BN statistics over ``batches`` training batches per process (collective),
        with the decisions of eval; the batches are those of the epochs after the last, in their seeded order."""
        def take() -> Iterator[Any]:
            epoch, left = self.cfg.epochs, batches
            while True:
                self.train_loader.sampler.set_epoch(epoch)
                for batch in self.train_loader:
                    yield batch
                    left -= 1
                    if left == 0:
                        return
                epoch += 1

        def forward(model: nn.Module, batch: Any) -> None:
            self.task.step(model, model, batch, epoch=float(self.cfg.epochs))

        done = recalibrate_bn(self.eval_model, take(), forward)
        what = "the EMA's" if self.ema is not None else "the model's"
        self.say(f"recalibrated {what} BN statistics over {done} training batches per process" if done else
                 "recalibrate_bn: the model has no BN layer to recalibrate")

    def _track_best(self, row: dict[str, Any]) -> bool:
        value = row.get(self.task.best_metric)
        if value is None or (self.best is not None and value <= self.best):
            return False
        self.best = value
        return True

    def _epoch_line(self, done: int, row: dict[str, Any]) -> str:
        text = f"epoch {done}/{self.cfg.epochs}: {self.task.epoch_text(row)}"
        if row.get("skipped_images"):
            text += f" | skipped {row['skipped_images']} unreadable images"
        return text + f" [{row['epoch_time_s']:.0f}s]"

    # ---------------------------------------------------------------------------------------------- checkpoints

    def save(self, path: str | Path) -> None:
        """Write the run's position to ``path`` atomically (collective: every process takes part, rank 0 writes)."""
        state = self.state
        rng = _gather_rng_states()
        # The epoch's sums are saved as totals over the ranks.
        sums = self.sums
        sums = dist_utils.all_reduce_sum(sums.to(self.device)).cpu() if state.step_in_epoch else torch.zeros_like(sums)
        if not self.main:
            return
        save_checkpoint(
            path,
            {
                "model": self.eval_model.state_dict(),
                **({} if self.ema is None else {"train_model": self.raw_model.state_dict()}),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "epoch": state.epoch,
                "step_in_epoch": state.step_in_epoch,
                "global_step": state.global_step,
                "steps_per_epoch": self.steps_per_epoch,
                "world_size": self.world,
                "temperature": state.temperature,
                "best": self.best,
                "best_metric": self.task.best_metric,
                "epoch_sums": sums,
                "rng": rng,
                **self.task.checkpoint_fields(self.raw_model),
                "config": self.cfg.to_dict(),
            },
            model_name=self.cfg.model,
        )

    def restore(self, path: str | Path, saved: dict[str, Any] | None = None) -> None:
        """Continue from the checkpoint ``path`` (``saved``: its contents, when already loaded): weights (and their
        EMA), optimiser, lr scheduler, position, best metric, the epoch's running sums and this rank's RNG states.

        Raises:
            CheckpointError: a checkpoint of another model set-up, or of a run of other steps per epoch or processes.
        """
        saved = load_checkpoint(path, expected_model=self.cfg.model) if saved is None else saved
        for key, value in self.task.checkpoint_fields(self.raw_model).items():
            if key in saved and saved[key] != value:
                raise CheckpointError(f"checkpoint {path} has {key} {saved[key]!r}, but this run has {value!r}")
        steps, world = saved.get("steps_per_epoch"), saved.get("world_size")
        if steps != self.steps_per_epoch or world != self.world:
            raise CheckpointError(
                f"checkpoint {path} was written by a run of {world} process(es) with {steps} steps per epoch; this "
                f"run has {self.world} and {self.steps_per_epoch}: resume with the same batch size, processes, "
                "grad_accum and data"
            )
        # With an EMA the checkpoint's `model` is the average and `train_model` the trained weights.
        self.raw_model.load_state_dict(saved.get("train_model", saved["model"]))
        if self.ema is not None:
            self.ema.load_state_dict(saved["model"])
            if "train_model" not in saved:
                self.say(f"note: {path} holds no EMA of the weights; the average starts from its weights")
        elif "train_model" in saved:
            self.say(f"note: {path} holds an EMA of the weights, which this run (no ema_decay) leaves")
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        state = self.state
        state.epoch, state.step_in_epoch = int(saved["epoch"]), int(saved["step_in_epoch"])
        state.global_step = int(saved["global_step"])
        state.temperature = float(saved.get("temperature", state.temperature))
        state.lr = self.schedule.lr(state.global_step - 1) if state.global_step else 0.0
        self.best = saved_best(saved)
        self.sums.zero_()
        if state.step_in_epoch and self.main:  # the saved sums are totals over all ranks: rank 0 carries them on
            self.sums.copy_(saved["epoch_sums"])
        rng = saved["rng"]
        restore_rng_state(rng[self.rank] if self.rank < len(rng) else rng[0])
        self.say(f"resumed from {path}: epoch {state.epoch}, step {state.step_in_epoch}/{self.steps_per_epoch}")


def build_run(
    cfg: TrainConfig,
    task: Task,
    *,
    device: torch.device,
    run_dir: Path,
    world: int = 1,
    rank: int = 0,
    say: Callable[[str], None] = _silent,
    stop: StopFlag | None = None,
    on_step: Callable[[TrainState], None] | None = None,
) -> TrainingRun:
    """Set up a run of ``task`` at its start: the task's datasets and model (seeded: the same initial weights on every
    rank), the model on ``device`` (channels_last on CUDA, DDP under several processes), the loaders, the optimiser
    and the lr schedule.

    Raises:
        ValueError: a training set smaller than one optimiser step.
    """
    train_set, val_set = task.build_datasets()
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts them)
    raw_model = task.build_model()
    torch.manual_seed(cfg.seed + rank)  # own Gumbel noise per rank (a resume restores the saved states)
    raw_model.to(device)
    if cfg.channels_last and device.type == "cuda":
        raw_model.to(memory_format=torch.channels_last)
    model = raw_model
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    train_loader = task.build_loader(train_set, cfg.batch_size, train=True)
    val_loader = task.build_loader(val_set, cfg.val_batch_size or max(1, int(cfg.batch_size * 1.5)), train=False)
    steps_per_epoch = len(train_loader.sampler) // cfg.batch_size // cfg.grad_accum
    if cfg.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    if steps_per_epoch < 1:
        raise ValueError(
            f"the training set ({len(train_set)} images) is smaller than one optimiser step "
            f"({cfg.global_batch(world)} images = batch_size x processes x grad_accum)"
        )
    lr = cfg.effective_lr(world)
    schedule = LRSchedule(lr, steps_per_epoch * cfg.epochs, round(cfg.warmup_epochs * steps_per_epoch), cfg.min_lr,
                          cfg.masker_lr_mult)
    ema = None if cfg.ema_decay is None else ModelEma(raw_model, cfg.ema_decay, warmup=cfg.ema_warmup)
    return TrainingRun(
        cfg, task, model, raw_model, build_optimizer(cfg, raw_model, lr), schedule, train_loader, val_loader,
        device, run_dir, steps_per_epoch, world=world, rank=rank, say=say, stop=stop or StopFlag(), on_step=on_step,
        ema=ema,
    )


def _gather_rng_states() -> list[dict[str, Any]]:
    state = capture_rng_state()
    if not dist_utils.is_dist():
        return [state]
    out: list[Any] = [None] * dist_utils.get_world_size()
    torch.distributed.all_gather_object(out, state)
    return out


def _check_replicas(model: nn.Module, run_dir: Path | None, say: Callable[[str], None]) -> list[str]:
    """Compare the final weights of every rank (collective); rank 0 writes ``replicas.json`` and says the verdict."""
    digests = dist_utils.gather_digests(model)
    identical = len(set(digests)) == 1
    if run_dir is not None:
        (run_dir / "replicas.json").write_text(json.dumps({"identical": identical, "sha256": digests}, indent=2) + "\n")
    if identical:
        say(f"replicas: the weights of all {len(digests)} processes are bit-identical (sha256 {digests[0][:12]})")
    else:
        warnings.warn(f"data-parallel replicas diverged: weight digests {digests}", stacklevel=2)
    return digests
