"""The per-task parts of a LAUDNet training run: what :class:`laudnet.train.run.TrainingRun` asks of its task.

A task builds the datasets, their loaders and the model (with its initialisation and any teacher), computes one
batch's loss and logs, and validates. The run owns the rest: device and processes, optimiser and schedules, the epoch
loop, checkpoints, metrics files and stop signals. :class:`ClassificationTask` is image classification, the paper's
recipe; :class:`laudnet.detection.task.DetectionTask` (``detection`` and ``instance``) is detection and instance
segmentation with torchvision's detectors on a LAUD backbone. Both have the attributes and methods of :class:`Task`
and are named in :data:`TASKS`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from laudnet.train.build import (
    build_datasets,
    build_model,
    load_init,
    model_paradigm,
    read_init_state,
    zero_init_residual,
)
from laudnet.train.config import TrainConfig
from laudnet.train.evaluation import EvalResult, autocast, evaluate
from laudnet.train.losses import LaudLoss


class Task(Protocol):
    """What a run asks of its task; :class:`ClassificationTask` documents each method.

    The run calls, in this order: `build_datasets`, `build_model` (seeded), `build_loader` for each set (the training
    loader's sampler must resume: ``len(sampler)`` and ``set_epoch(epoch, start_batch=k)``, as
    `laudnet.data.build_loader` makes it); then per optimiser step `set_gates` and `step` per micro-batch; per epoch
    `train_row`, `validate` when due, `epoch_text`; `checkpoint_fields` when it saves or restores, `describe` once.

    Attributes:
        log_keys: the batch means that `step` returns, in order, with ``loss`` and ``flops_ratio`` among them (the
            progress bar's); the run logs their epoch means, weighted by images.
        best_metric: the key of `validate`'s row that picks ``best.pt`` (higher is better).
    """

    log_keys: tuple[str, ...]
    best_metric: str

    def build_datasets(self) -> tuple[Dataset, Dataset]: ...

    def build_loader(self, dataset: Dataset, batch_size: int, *, train: bool) -> DataLoader: ...

    def build_model(self) -> nn.Module: ...

    def set_gates(self, model: nn.Module, temperature: float, noise: float) -> None: ...

    def checkpoint_fields(self, model: nn.Module) -> dict[str, Any]: ...

    def describe(self, model: nn.Module) -> str: ...

    def step(self, model: nn.Module, raw_model: nn.Module, batch: Any, *, epoch: float) -> tuple[Tensor, Tensor, int]:
        ...

    def train_row(self, means: dict[str, float]) -> dict[str, float]: ...

    def validate(self, model: nn.Module, loader: DataLoader) -> tuple[dict[str, float], Any]: ...

    def epoch_text(self, row: dict[str, Any]) -> str: ...


class ClassificationTask:
    """Image classification with the LAUDNet objective (:class:`~laudnet.train.losses.LaudLoss`): cross-entropy, the
    FLOPs-target and per-block bounds terms, and distillation from the frozen static network of ``init``.

    Args:
        cfg: the run's configuration.
        device: where the model runs (the run moves the model; the task moves its batches and the teacher).
        say: where one-line notes go (rank 0's log).
    """

    log_keys = ("loss", "loss_cls", "loss_flops", "loss_bounds", "loss_distill", "flops_ratio", "accuracy")
    best_metric = "val_top1"

    def __init__(self, cfg: TrainConfig, device: torch.device, say: Callable[[str], None] = print) -> None:
        self.cfg = cfg
        self.device = device
        self.say = say
        self.channels_last = cfg.channels_last and device.type == "cuda"
        self.num_classes: int | None = None
        self.sizes = ""
        self.init_note = "random init"
        self.teacher: nn.Module | None = None
        self.criterion: LaudLoss | None = None

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        """The training and validation sets; bad paths fail here with a message naming them."""
        (train_set, val_set), self.num_classes = build_datasets(self.cfg)
        self.sizes = f"{len(train_set)} train / {len(val_set)} val"
        return train_set, val_set

    def build_loader(self, dataset: Dataset, batch_size: int, *, train: bool) -> DataLoader:
        """A loader with laudnet's resumable sampler (sharded under DDP; ``set_epoch(epoch, start_batch=k)``)."""
        from laudnet.data import build_loader

        return build_loader(dataset, batch_size, train=train, seed=self.cfg.seed, num_workers=self.cfg.workers,
                            pin_memory=self.device.type == "cuda")

    def build_model(self) -> nn.Module:
        """The model (after `build_datasets`): from ``init`` or, from scratch, with zero-initialised residual
        branches; also the frozen static teacher of a dynamic run from ``init`` (on the device) and the objective."""
        cfg = self.cfg
        if self.num_classes is None:
            raise RuntimeError("build_datasets must run before build_model (the classifier's classes)")
        model = build_model(cfg, self.num_classes)
        if cfg.init is not None:
            self._load_init(model)
        elif cfg.zero_init_residual:
            zero_init_residual(model)
            self.init_note += ", residual branches zero-initialised"
        if cfg.mode == "dynamic" and cfg.kd_alpha > 0 and self.teacher is None and cfg.init is None:
            self.say("note: dynamic training without init has no static teacher; the distillation term is off")
        if self.teacher is not None:
            self.teacher.to(self.device)
            if self.channels_last:
                self.teacher.to(memory_format=torch.channels_last)
        self.criterion = LaudLoss(
            cfg.target,
            cfg.epochs,
            lambda_flops=cfg.lambda_flops,
            alpha_kd=cfg.kd_alpha if self.teacher is not None else 0.0,
            kd_temperature=cfg.kd_temperature,
            bounds_fraction=cfg.bounds_fraction,
            final_bounds=(cfg.bounds_lower, cfg.bounds_upper),
            flops_reduction=cfg.flops_loss,
            label_smoothing=cfg.label_smoothing,
            target_warmup=cfg.target_warmup,
        )
        return model

    def _load_init(self, model: nn.Module) -> None:
        # The teacher of a dynamic run is the static network of the same weights, where its classifier fits.
        cfg = self.cfg
        state_dict, kind = read_init_state(cfg.init, cfg.model)
        head_loaded = load_init(model, state_dict)
        refit = "" if head_loaded else " (classifier re-initialised)"
        self.init_note = f"init from {kind} weights {cfg.init}{refit}"
        if cfg.mode != "dynamic" or cfg.kd_alpha <= 0:
            return
        if not head_loaded:
            warnings.warn(
                f"no distillation: the classifier of {cfg.init} does not fit {self.num_classes} classes, so the "
                "static teacher would be untrained there",
                stacklevel=2,
            )
            return
        self.teacher = build_model(cfg, self.num_classes, paradigm="static")
        load_init(self.teacher, state_dict)
        self.teacher.eval().requires_grad_(False)

    def set_gates(self, model: nn.Module, temperature: float, noise: float) -> None:
        """Set the Gumbel temperature and noise scale of the model's training decisions."""
        model.set_temperature(temperature)
        model.set_gate_noise(noise)

    def checkpoint_fields(self, model: nn.Module) -> dict[str, Any]:
        """What a checkpoint records of the model besides its weights; a resume must match each field it holds."""
        granularity = list(model.granularity) if model.granularity[0] is not None else None
        return {"mode": self.cfg.mode, "paradigm": model_paradigm(self.cfg), "num_classes": self.num_classes,
                "granularity": granularity, "model_args": model.model_args}

    def describe(self, model: nn.Module) -> str:
        """The start line's account of model, data and initialisation."""
        cfg = self.cfg
        n_params = sum(p.numel() for p in model.parameters())
        return (f"{cfg.model} {model_paradigm(cfg)} on {cfg.dataset} ({self.sizes}, {self.num_classes} classes, "
                f"{cfg.image_size}px): {n_params / 1e6:.2f} M parameters, {self.init_note}")

    def step(self, model: nn.Module, raw_model: nn.Module, batch: Any, *, epoch: float) -> tuple[Tensor, Tensor, int]:
        """One micro-batch's forward and loss (the run calls ``backward``).

        Args:
            model: the model to call (the DDP wrapper under several processes).
            raw_model: the LAUD model itself, whose blocks hold the masks of that forward (for the FLOPs terms).
            batch: ``(images, labels[, boxes])`` from the loader.
            epoch: epochs done, fractional (for the bounds schedule).

        Returns:
            ``(loss, logs, images)``: the scalar to back-propagate, the batch means of `log_keys` (float64, CPU) and
            the number of images.
        """
        images, labels = batch[0].to(self.device, non_blocking=True), batch[1].to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.cfg.amp):
            logits = model(images)
            teacher_logits = None
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_logits = self.teacher(images).float()
        out = self.criterion(logits.float(), labels, raw_model, epoch=epoch, teacher_logits=teacher_logits)
        # One device-to-host copy per micro-batch (not one synchronisation per term).
        logs = torch.stack([out[k].detach().float() for k in self.log_keys[:-1]]
                           + [(logits.argmax(1) == labels).sum().float()]).double().cpu()
        logs[-1] /= len(labels)
        return out["loss"], logs, len(labels)

    def train_row(self, means: dict[str, float]) -> dict[str, float]:
        """The metrics-file columns of an epoch's training means."""
        row = {("train_loss" if k == "loss" else k): v for k, v in means.items() if k != "accuracy"}
        row["train_top1"] = 100.0 * means["accuracy"]
        return row

    def validate(self, model: nn.Module, loader: DataLoader) -> tuple[dict[str, float], EvalResult]:
        """Evaluate ``model`` (the LAUD model, not its DDP wrapper) on ``loader``: the row's ``val_*`` columns and the
        full :class:`~laudnet.train.evaluation.EvalResult`."""
        cfg = self.cfg
        result = evaluate(model, loader, self.device, amp=cfg.amp, channels_last=self.channels_last,
                          progress=cfg.progress, desc="validate")
        row = dict(val_top1=result.top1, val_top5=result.top5, val_loss=result.loss,
                   val_flops_ratio=result.flops_ratio, val_dense_mflops=result.dense_flops / 1e6,
                   val_dynamic_mflops=result.dynamic_flops / 1e6)
        return row, result

    def epoch_text(self, row: dict[str, Any]) -> str:
        """The epoch line's account of the row: training means, temperature and lr, and the validation if any."""
        text = (
            f"loss {row['train_loss']:.3f} (cls {row['loss_cls']:.3f}, flops {row['loss_flops']:.4f}, bounds "
            f"{row['loss_bounds']:.4f}, kd {row['loss_distill']:.3f}) train top-1 {row['train_top1']:.1f}% flops "
            f"{row['flops_ratio']:.3f} T {row['temperature']:.2f} lr {row['lr']:.3g}"
        )
        if "val_top1" in row:
            text += (f" | val top-1 {row['val_top1']:.2f}% top-5 {row['val_top5']:.2f}% "
                     f"flops {row['val_flops_ratio']:.3f}")
        return text


def _detection_task(cfg: TrainConfig, device: torch.device, say: Callable[[str], None] = print) -> Task:
    # Imported when chosen: torchvision's detectors and pycocotools stay out of classification runs.
    from laudnet.detection.task import DetectionTask

    return DetectionTask(cfg, device, say)


# The tasks `laudnet train --task` can run, by name (`laudnet.train.config.TASK_NAMES`).
TASKS: dict[str, Callable[..., Task]] = {
    "classification": ClassificationTask, "detection": _detection_task, "instance": _detection_task,
}
