"""Training and validation loops of LAUDNet (Han et al., TPAMI 2024): static training and dynamic fine-tuning.

One function, :func:`train`, runs a whole :class:`~laudnet.train.config.TrainConfig` on one CPU, one GPU or one
process per GPU under ``torchrun`` (DistributedDataParallel; NCCL on GPU, gloo on CPU):

- ``mode: static`` trains the network without maskers (for data that has no torchvision weights);
- ``mode: dynamic`` trains with maskers, usually from ``init`` (a static laudnet checkpoint or a torchvision weights
  file), with the frozen static network loaded from the same weights as the distillation teacher (as in the paper).

The recipe is the official one: SGD with Nesterov momentum (or AdamW, for ViTs) and two parameter groups (maskers get
``masker_lr_mult`` × the backbone lr), a per-iteration cosine schedule with optional linear warm-up, the Gumbel
temperature updated every iteration, label smoothing, gradient accumulation, bf16 autocast and channels_last on CUDA.

Nothing is lost on interruption: ``last.pt`` is written atomically after every epoch and when SIGTERM or SIGINT
arrives (after the optimiser step in flight; the signal may reach the whole process group, DataLoader workers
included), holding the model, optimiser, lr scheduler, epoch, optimiser steps done in that epoch,
the temperature, every rank's RNG states and the epoch's running metric sums. ``resume`` continues from it with the
same data order (the sampler skips the batches already seen), so an interrupted and resumed run takes exactly the
steps of an uninterrupted one. ``best.pt`` keeps the checkpoint of the best validation top-1.

No argparse here: the command line is :mod:`laudnet.train.cli`.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from laudnet.paradigms import GRANULAR_PARADIGMS
from laudnet.train import distributed as dist_utils
from laudnet.train.adaptivity import AdaptivityMeter, AdaptivityResult, patch_sizes
from laudnet.train.checkpoint import (
    FORMAT,
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from laudnet.train.config import TrainConfig, save_resolved
from laudnet.train.losses import LaudLoss
from laudnet.train.metrics import MetricsLogger
from laudnet.train.schedules import gate_noise, gumbel_temperature

# Running sums kept per epoch (weighted by samples) and logged as epoch means.
_LOSS_TERMS = ("loss", "loss_cls", "loss_flops", "loss_bounds", "loss_distill", "flops_ratio")


# ------------------------------------------------------------------------------------------------- set-up checks


def check_config_inputs(cfg: TrainConfig) -> None:
    """Cheap checks of what a run needs, before any data is read: the model name and the data root.

    Raises:
        ValueError: an unknown model (naming the choices) or an empty data root.
        FileNotFoundError: a data root or an ``init`` file that does not exist.
    """
    from laudnet.models import list_models

    if cfg.model not in list_models():
        raise ValueError(f"unknown model {cfg.model!r}; choose from: {', '.join(list_models())}")
    if cfg.data_root is not None:
        root = Path(cfg.data_root)
        if not root.exists():
            raise FileNotFoundError(f"data root {root} does not exist")
        if not root.is_dir():
            raise ValueError(f"data root {root} is not a folder")
        if not any(root.iterdir()):
            raise ValueError(f"data root {root} is empty")
    if cfg.init is not None and not Path(cfg.init).is_file():
        raise FileNotFoundError(f"init weights file {cfg.init} does not exist")


def build_datasets(
    cfg: TrainConfig, splits: tuple[str, ...] = ("train", "val"), *, boxes: bool = False
) -> tuple[list[Dataset], int]:
    """The datasets of ``splits`` and the number of classes; bad paths fail here with a message naming them.

    With ``boxes``, the non-training splits of ``fashion-canvas`` yield ``(image, label, box)`` (for the localisation
    lift of :func:`evaluate`); the training split never does.
    """
    from laudnet.data import build_dataset, canonical_name, num_classes

    def kwargs(split: str) -> dict[str, Any]:
        kw = cfg.dataset_kwargs(split)
        if boxes and split != "train" and canonical_name(cfg.dataset) == "fashion-canvas":
            kw["return_box"] = True
        return kw

    datasets = [build_dataset(cfg.dataset, cfg.data_root, split, cfg.image_size, **kwargs(split)) for split in splits]
    return datasets, num_classes(cfg.dataset, cfg.data_root)


def model_paradigm(cfg: TrainConfig) -> str:
    """The paradigm the model is built with: ``static`` for static training, else the configured one."""
    return "static" if cfg.mode == "static" else cfg.paradigm


def model_args(cfg: TrainConfig, num_classes: int, paradigm: str | None = None) -> dict[str, Any]:
    """The `create_model` arguments of ``cfg``'s model: granularity only where the paradigm takes one (a static
    teacher of a spatial run ignores it), ``img_size`` and ``masker_norm`` where the model table says the constructor
    takes them."""
    from laudnet.models import model_info

    paradigm = paradigm or model_paradigm(cfg)
    granularity = cfg.granularity if paradigm in GRANULAR_PARADIGMS else None
    args = {"name": cfg.model, "paradigm": paradigm, "granularity": granularity, "num_classes": num_classes,
            **size_kwargs(cfg.model, cfg.image_size)}
    if model_info(cfg.model).takes("masker_norm"):  # the CNNs' masker form (a ViT's maskers have no normalisation)
        args["masker_norm"] = cfg.masker_norm
    return args


def build_model(cfg: TrainConfig, num_classes: int, paradigm: str | None = None) -> nn.Module:
    """The registered model of ``cfg``: ``create_model(**model_args(cfg, num_classes, paradigm))``; the model keeps
    its arguments in ``model.model_args`` (with the resolved granularity), which checkpoints store."""
    from laudnet.models import create_model

    return create_model(**model_args(cfg, num_classes, paradigm))


def size_kwargs(model_name: str, image_size: int) -> dict[str, int]:
    """Builder arguments that depend on the image size: a ViT's position embedding is built for one size (the model
    table says which constructors take ``img_size``)."""
    from laudnet.models import model_info

    return {"img_size": image_size} if model_info(model_name).takes_img_size else {}


def read_init_state(path: str | Path, model_name: str) -> tuple[dict[str, Tensor], str]:
    """The state dict of an ``init`` file and its kind (``laudnet`` checkpoint or ``torchvision`` weights).

    A laudnet checkpoint must be of ``model_name``; its maskers are dropped by :func:`load_init` where the model has
    none.

    Raises:
        FileNotFoundError, ValueError, CheckpointError: unreadable file or a checkpoint of another model.
    """
    from laudnet.models.weights import _read_state_dict

    path = Path(path)
    try:
        peek = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"init weights file {path} does not exist") from None
    except Exception:
        peek = None  # let the readers below produce their precise message
    if isinstance(peek, dict) and peek.get("format") == FORMAT:
        state = load_checkpoint(path, expected_model=model_name)
        return dict(state["model"]), "laudnet"
    return dict(_read_state_dict(path)), "torchvision"


def classifier_prefix(model: nn.Module) -> str:
    """State-dict prefix of the model's classifier: ``fc.`` (torchvision CNNs) or ``head.`` (timm ViTs)."""
    own = model.state_dict()
    for prefix in ("fc.", "head."):
        if f"{prefix}weight" in own:
            return prefix
    raise ValueError(f"{type(model).__name__} has neither an fc nor a head classifier")


def load_init(model: nn.Module, state_dict: dict[str, Tensor]) -> bool:
    """Load static weights into ``model`` (maskers stay fresh); returns whether the classifier was loaded.

    The classifier (``fc`` of the CNNs, ``head`` of the ViTs) is skipped when its number of classes differs from the
    model's (fine-tuning on other classes).
    """
    from laudnet.models.weights import load_backbone_weights

    own = model.state_dict()
    prefix = classifier_prefix(model)
    key = f"{prefix}weight"
    sd = {k: v for k, v in state_dict.items() if "masker" not in k or k in own}
    head_fits = key in sd and sd[key].shape == own[key].shape
    load_backbone_weights(model, sd, exclude_head=not head_fits, head_prefix=prefix)
    return head_fits


def zero_init_residual(model: nn.Module) -> None:
    """Set the scale of every block's last BN to 0, so each residual block starts as its shortcut.

    From scratch, torchvision's init makes the residual sums grow with depth; on fashion-canvas at 64 px, SGD at lr 0.05
    then diverged in the first steps (loss 12 after 8 steps, chance is 2.3). Starting the branches at zero (Goyal et
    al., 2017) keeps the early network shallow in effect.
    """
    for block in model.dynamic_blocks():
        if hasattr(block, "conv_bn_pairs"):  # CNN bottlenecks; ViT blocks (pre-norm) need no such start
            nn.init.zeros_(block.conv_bn_pairs()["conv3"][1].weight)


# ------------------------------------------------------------------------------------------------------ schedules


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Multiplier of the base lr at optimiser step ``step``: linear warm-up, then cosine down to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    p = min(max((step - warmup_steps) / span, 0.0), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))


def _exempt_from_decay(name: str, param: Tensor) -> bool:
    # The ViT convention (DeiT, timm): biases, norm scales (1-D) and the position embedding and class token are not
    # decayed: shrinking them toward zero is no regulariser of the mapping, only a bias on the token geometry.
    return param.ndim <= 1 or name.rsplit(".", 1)[-1] in ("pos_embed", "cls_token")


def build_optimizer(cfg: TrainConfig, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """SGD (Nesterov as configured) or AdamW, with a backbone group and a masker group at ``masker_lr_mult`` × lr.

    Weight decay applies to every parameter, as in the official recipe, unless ``decay_all`` is off: then
    biases, norm scales, the position embedding and the class token get none (each in its own ``*_no_decay`` group).
    """
    groups = []
    for group, mult in (("backbone", 1.0), ("masker", cfg.masker_lr_mult)):
        params = [(n, p) for n, p in model.named_parameters()
                  if p.requires_grad and ("masker" in n) == (group == "masker")]
        exempt = [] if cfg.decay_all else [p for n, p in params if _exempt_from_decay(n, p)]
        decayed = [p for n, p in params if cfg.decay_all or not _exempt_from_decay(n, p)]
        if decayed or group == "backbone":
            groups.append({"params": decayed, "lr": lr * mult, "name": group, "weight_decay": cfg.weight_decay})
        if exempt:
            groups.append({"params": exempt, "lr": lr * mult, "name": f"{group}_no_decay", "weight_decay": 0.0})
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        groups,
        lr=lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
    )


# ------------------------------------------------------------------------------------------------------ evaluation


@dataclass
class EvalResult:
    """What a model did on an evaluation set.

    Attributes:
        top1, top5: accuracy in percent.
        loss: mean cross-entropy.
        num_samples: images evaluated.
        dense_flops: mean MACs per image of the static network at the evaluated size.
        dynamic_flops: mean MACs per image of the dynamic network (maskers included); = dense for static models.
        flops_ratio: dynamic / dense.
        block_names: the dynamic blocks, in forward order.
        block_rates: per block, the mean activation rate f_l = dynamic / dense FLOPs of the block.
        adaptivity: how much the decisions depend on the input (execution shares per block or channel group,
            per-class rates and, with item boxes, the localisation lift per stage); None for static models.
    """

    top1: float
    top5: float
    loss: float
    num_samples: int
    dense_flops: float
    dynamic_flops: float
    flops_ratio: float
    block_names: list[str] = field(default_factory=list)
    block_rates: list[float] = field(default_factory=list)
    adaptivity: AdaptivityResult | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["adaptivity"] = None if self.adaptivity is None else self.adaptivity.to_dict()
        return out


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device | str = "cpu",
    *,
    amp: bool = True,
    channels_last: bool = True,
    progress: bool = False,
    desc: str = "eval",
    max_batches: int | None = None,
    adaptivity: bool = True,
) -> EvalResult:
    """Top-1/top-5, loss, mean dense and dynamic FLOPs, per-block activation rates and adaptivity over ``loader``.

    Under DDP every rank evaluates its shard and the sums are reduced (the sampler pads the last shard by repeating a
    few samples, as DistributedSampler does).

    Args:
        model: a LAUD model (not the DDP wrapper).
        loader: batches of ``(image, label)`` or ``(image, label, box)``; with boxes (``fashion-canvas`` built with
            ``return_box=True``) the adaptivity includes the localisation lift of spatial masks.
        device: where to run.
        amp: bf16 autocast on CUDA.
        channels_last: channels_last inputs on CUDA.
        progress: tqdm bar (rank 0 only).
        desc: its label.
        max_batches: stop after this many batches.
        adaptivity: measure it (see :mod:`laudnet.train.adaptivity`).
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    blocks = model.collect_info if hasattr(model, "collect_info") else None
    n = correct1 = correct5 = 0
    loss_sum = dyn_sum = dense_sum = 0.0
    rate_sums: Tensor | None = None
    names: list[str] = []
    meter: AdaptivityMeter | None = None
    total = len(loader) if max_batches is None else min(len(loader), max_batches)
    show = progress and dist_utils.is_main_process()
    for k, batch in enumerate(_progress(loader, total, desc, show)):
        if max_batches is not None and k >= max_batches:
            break
        images, labels = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        if channels_last and device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp):
            logits = model(images)
        logits = logits.float()
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top.eq(labels[:, None])
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.any(1).sum())
        n += len(labels)
        per_sample, dense = model.dynamic_flops()
        dyn_sum += float(per_sample.float().sum())
        dense_sum += dense * len(labels)
        if blocks is not None:
            infos = blocks()
            names = [i.name for i in infos]
            rates = torch.stack([i.flops.float().sum() / i.dense_flops for i in infos]).double().cpu()
            rate_sums = rates if rate_sums is None else rate_sums + rates
            if adaptivity:
                meter = meter or AdaptivityMeter(logits.shape[1], patch_sizes(model))
                boxes = batch[2] if len(batch) > 2 else None
                meter.update(infos, labels, boxes, image_hw=images.shape[-2:])
    model.train(was_training)
    sums = torch.tensor([n, correct1, correct5, loss_sum, dyn_sum, dense_sum], dtype=torch.float64)
    sums = dist_utils.all_reduce_sum(sums.to(device)).cpu()
    if rate_sums is not None:
        rate_sums = dist_utils.all_reduce_sum(rate_sums.to(device)).cpu()
    if meter is not None and meter.measured:  # same model on every rank: all or none take part
        meter.all_reduce(dist_utils.all_reduce_sum)
    n_all = int(sums[0])
    if n_all == 0:
        raise ValueError("the evaluation set is empty")
    return EvalResult(
        top1=100.0 * float(sums[1]) / n_all,
        top5=100.0 * float(sums[2]) / n_all,
        loss=float(sums[3]) / n_all,
        num_samples=n_all,
        dense_flops=float(sums[5]) / n_all,
        dynamic_flops=float(sums[4]) / n_all,
        flops_ratio=float(sums[4]) / float(sums[5]),
        block_names=names,
        block_rates=[] if rate_sums is None else [float(r) / n_all for r in rate_sums],
        adaptivity=None if meter is None else meter.result(),
    )


# ------------------------------------------------------------------------------------------------------- training


@dataclass
class TrainState:
    """Where a run stands; passed to the ``on_step`` callback after every optimiser step.

    Attributes:
        epoch: the epoch in progress (0-based).
        step_in_epoch: optimiser steps done in this epoch.
        global_step: optimiser steps done in the whole run.
        steps_per_epoch: optimiser steps of a full epoch.
        temperature: the Gumbel temperature of the last step.
        lr: the backbone learning rate of the last step.
        metrics: the last step's loss terms (floats).
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
    """The outcome of :func:`train`.

    Attributes:
        run_dir: the run folder (``args.yaml``, ``metrics.csv``, ``last.pt``, ``best.pt``).
        epochs_done: completed epochs.
        global_step: optimiser steps of the whole run so far (resumed parts included).
        steps_run: optimiser steps taken by this call.
        interrupted: stopped by SIGTERM or SIGINT (``last.pt`` holds the position; resume with ``resume='auto'``).
        stop_signal: the signal that stopped the run (``signal.SIGTERM`` when another rank received it); None when
            not interrupted.
        best_top1: best validation top-1 (None before any validation).
        last_eval: the last validation.
        history: the metric rows logged by this call.
        replica_digests: with several processes, the SHA-256 of each rank's final weights (identical when the
            data-parallel replicas stayed in sync; also written to ``replicas.json``); None for one process.
    """

    run_dir: Path
    epochs_done: int
    global_step: int
    steps_run: int
    interrupted: bool
    best_top1: float | None
    last_eval: EvalResult | None
    history: list[dict[str, Any]] = field(default_factory=list)
    replica_digests: list[str] | None = None
    stop_signal: int | None = None


class _TerminationFlag:
    """Set by SIGTERM or SIGINT; the loop checks it after each optimiser step and saves before stopping.

    ``timeout``, Slurm and Kubernetes signal the whole process group and Ctrl-C does the same: the DataLoader workers
    ignore both signals (see :func:`laudnet.data.build_loader`), so they keep serving batches until the main process
    has saved ``last.pt`` and shuts them down. A second SIGINT aborts at once (``KeyboardInterrupt``), without saving.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.set = False
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        if self.set and signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: the user does not want to wait for the save
        self.set = True
        self.signum = self.signum or signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "stop signal (to another process)"

    @contextlib.contextmanager
    def installed(self) -> Iterator[_TerminationFlag]:
        # Signal handlers can only be installed from the main thread; elsewhere (a notebook worker thread) the run
        # simply keeps the default behaviour.
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self._previous = {s: signal.signal(s, self._handler) for s in self.SIGNALS}
        try:
            yield self
        finally:
            for s, previous in self._previous.items():
                signal.signal(s, previous)


def run_dir_of(cfg: TrainConfig) -> Path:
    """``output/run_name``; the default name joins model, mode (paradigm when dynamic) and dataset."""
    from laudnet.data import canonical_name

    name = cfg.run_name or "-".join([cfg.model, model_paradigm(cfg), canonical_name(cfg.dataset)])
    return Path(cfg.output) / name


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


def _check_resume_state(state: dict[str, Any], path: Path, cfg: TrainConfig, model: nn.Module, classes: int) -> None:
    granularity = list(model.granularity) if model.granularity[0] is not None else None
    want = {"mode": cfg.mode, "paradigm": model_paradigm(cfg), "num_classes": classes, "granularity": granularity}
    for key, value in want.items():
        if state.get(key) != value:
            raise CheckpointError(f"checkpoint {path} has {key} {state.get(key)!r}, but this run has {value!r}")


def _gather_rng_states() -> list[dict[str, Any]]:
    state = capture_rng_state()
    if not dist_utils.is_dist():
        return [state]
    out: list[Any] = [None] * dist_utils.get_world_size()
    torch.distributed.all_gather_object(out, state)
    return out


def _stop_requested(flag: _TerminationFlag, device: torch.device) -> bool:
    # Every rank must stop at the same step (a signal may reach them at different times): agree by a max-reduce.
    if not dist_utils.is_dist():
        return flag.set
    t = torch.tensor([1.0 if flag.set else 0.0], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


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
    flag = _TerminationFlag()
    try:
        with flag.installed():  # from here on, SIGTERM/SIGINT stop the run after the next step, with a save
            return _train(cfg, info, device, on_step, say, flag)
    finally:
        dist_utils.cleanup()


def _train(cfg, info, device, on_step, say, flag: _TerminationFlag) -> TrainResult:
    from laudnet.data import build_loader

    main = info.is_main
    world = info.world_size
    run_dir = run_dir_of(cfg)
    resume_path, resume_state = _prepare_run_dir(cfg, run_dir, main, say)
    if resume_state is not None and int(resume_state["epoch"]) >= cfg.epochs:
        say(f"{run_dir} is already complete ({cfg.epochs} epochs, checkpoint {resume_path}); nothing to do")
        return TrainResult(run_dir=run_dir, epochs_done=cfg.epochs, global_step=int(resume_state["global_step"]),
                           steps_run=0, interrupted=False, best_top1=resume_state.get("best_top1"), last_eval=None)
    (train_set, val_set), num_classes = build_datasets(cfg)

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts them)
    model = build_model(cfg, num_classes)
    teacher = None
    init_note = "random init"
    if cfg.init is None and cfg.zero_init_residual:
        zero_init_residual(model)
        init_note += ", residual branches zero-initialised"
    if cfg.init is not None:
        state_dict, kind = read_init_state(cfg.init, cfg.model)
        head_loaded = load_init(model, state_dict)
        init_note = f"init from {kind} weights {cfg.init}" + ("" if head_loaded else " (classifier re-initialised)")
        if cfg.mode == "dynamic" and cfg.kd_alpha > 0:
            if head_loaded:
                teacher = build_model(cfg, num_classes, paradigm="static")
                load_init(teacher, state_dict)
                teacher.eval().requires_grad_(False)
            else:
                warnings.warn(
                    f"no distillation: the classifier of {cfg.init} does not fit {num_classes} classes, so the static "
                    "teacher would be untrained there",
                    stacklevel=2,
                )
    if cfg.mode == "dynamic" and cfg.kd_alpha > 0 and teacher is None and cfg.init is None:
        say("note: dynamic training without init has no static teacher; the distillation term is off")
    torch.manual_seed(cfg.seed + info.rank)  # own Gumbel noise per rank (a resume restores the saved states)
    if resume_state is not None:
        _check_resume_state(resume_state, resume_path, cfg, model, num_classes)
        model.load_state_dict(resume_state["model"])

    model.to(device)
    if teacher is not None:
        teacher.to(device)
    use_cl = cfg.channels_last and device.type == "cuda"
    if use_cl:
        model.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher.to(memory_format=torch.channels_last)
    raw_model = model
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    pin = device.type == "cuda"
    train_loader = build_loader(
        train_set, cfg.batch_size, train=True, seed=cfg.seed, num_workers=cfg.workers, pin_memory=pin
    )
    val_batch = cfg.val_batch_size or max(1, int(cfg.batch_size * 1.5))
    val_loader = build_loader(val_set, val_batch, train=False, seed=cfg.seed, num_workers=cfg.workers, pin_memory=pin)
    micro_per_epoch = len(train_loader.sampler) // cfg.batch_size
    steps_per_epoch = micro_per_epoch // cfg.grad_accum
    if cfg.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    if steps_per_epoch < 1:
        raise ValueError(
            f"the training set ({len(train_set)} images) is smaller than one optimiser step "
            f"({cfg.global_batch(world)} images = batch_size x processes x grad_accum)"
        )
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)

    lr = cfg.effective_lr(world)
    optimizer = build_optimizer(cfg, raw_model, lr)
    min_ratio = cfg.min_lr / lr
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup_steps, min_ratio)
    )
    criterion = LaudLoss(
        cfg.target,
        cfg.epochs,
        lambda_flops=cfg.lambda_flops,
        alpha_kd=cfg.kd_alpha if teacher is not None else 0.0,
        kd_temperature=cfg.kd_temperature,
        bounds_fraction=cfg.bounds_fraction,
        final_bounds=(cfg.bounds_lower, cfg.bounds_upper),
        flops_reduction=cfg.flops_loss,
        label_smoothing=cfg.label_smoothing,
    )

    start_epoch, start_step, global_step = 0, 0, 0
    best_top1: float | None = None
    sums = torch.zeros(len(_LOSS_TERMS) + 2, dtype=torch.float64)  # terms, correct, samples
    if resume_state is not None:
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        start_epoch, start_step = int(resume_state["epoch"]), int(resume_state["step_in_epoch"])
        global_step = int(resume_state["global_step"])
        best_top1 = resume_state.get("best_top1")
        if resume_state.get("steps_per_epoch") != steps_per_epoch or resume_state.get("world_size") != world:
            raise CheckpointError(
                f"checkpoint {resume_path} was written by a run of {resume_state.get('world_size')} process(es) with "
                f"{resume_state.get('steps_per_epoch')} steps per epoch; this run has {world} and {steps_per_epoch}: "
                "resume with the same batch size, processes, grad_accum and data"
            )
        if start_step and main:  # the saved sums are totals over all ranks: rank 0 carries them on
            sums = resume_state["epoch_sums"].clone()
        rng = resume_state["rng"]
        restore_rng_state(rng[info.rank] if info.rank < len(rng) else rng[0])
        say(f"resumed from {resume_path}: epoch {start_epoch}, step {start_step}/{steps_per_epoch}")

    if main:
        save_resolved(cfg, run_dir)
    logger = MetricsLogger(run_dir, tensorboard=cfg.tensorboard, enabled=main)
    n_params = sum(p.numel() for p in raw_model.parameters())
    say(
        f"{cfg.model} {model_paradigm(cfg)} on {cfg.dataset} ({len(train_set)} train / {len(val_set)} val, "
        f"{num_classes} classes, {cfg.image_size}px): {n_params / 1e6:.2f} M parameters, {init_note}; "
        f"{world} process(es) on {device}, global batch {cfg.global_batch(world)}, lr {lr:.4g}, "
        f"{steps_per_epoch} steps x {cfg.epochs} epochs -> {run_dir}"
    )

    state = TrainState(epoch=start_epoch, step_in_epoch=start_step, global_step=global_step,
                       steps_per_epoch=steps_per_epoch)
    history: list[dict[str, Any]] = []
    bad_seen = 0
    last_eval: EvalResult | None = None
    steps_run = 0
    interrupted = False
    epochs_done = start_epoch

    def checkpoint(path: Path, epoch: int, step_in_epoch: int) -> None:
        # Collectives: every rank takes part. The epoch's sums are saved as totals over the ranks.
        rng = _gather_rng_states()
        epoch_sums = dist_utils.all_reduce_sum(sums.to(device)).cpu() if step_in_epoch else torch.zeros_like(sums)
        if not main:
            return
        save_checkpoint(
            path,
            {
                "model": raw_model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "global_step": state.global_step,
                "steps_per_epoch": steps_per_epoch,
                "world_size": world,
                "temperature": state.temperature,
                "best_top1": best_top1,
                "epoch_sums": epoch_sums,
                "rng": rng,
                "mode": cfg.mode,
                "paradigm": model_paradigm(cfg),
                "granularity": list(raw_model.granularity) if raw_model.granularity[0] is not None else None,
                "num_classes": num_classes,
                "model_args": raw_model.model_args,
                "config": cfg.to_dict(),
            },
            model_name=cfg.model,
        )

    for epoch in range(start_epoch, cfg.epochs):
        state.epoch = epoch
        first_step = start_step if epoch == start_epoch else 0
        if first_step == 0:
            sums.zero_()
        train_loader.sampler.set_epoch(epoch, start_batch=first_step * cfg.grad_accum)
        model.train()
        t_epoch = time.time()
        images_in_epoch = 0
        batches = iter(train_loader)
        bar = _progress(range(first_step, steps_per_epoch), steps_per_epoch - first_step,
                        f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress and main)
        for step in bar:
            temperature = gumbel_temperature(state.global_step, total_steps, cfg.t0, cfg.t_last, cfg.temp_schedule)
            raw_model.set_temperature(temperature)
            raw_model.set_gate_noise(gate_noise(state.global_step, total_steps, cfg.noise_schedule, cfg.noise_end))
            optimizer.zero_grad(set_to_none=True)
            step_terms = torch.zeros(len(_LOSS_TERMS), dtype=torch.float64)
            step_images = 0
            for micro in range(cfg.grad_accum):
                images, labels = next(batches)[:2]
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                if use_cl:
                    images = images.contiguous(memory_format=torch.channels_last)
                sync = micro == cfg.grad_accum - 1 or world == 1
                with (contextlib.nullcontext() if sync else model.no_sync()):
                    with _autocast(device, cfg.amp):
                        logits = model(images)
                        teacher_logits = None
                        if teacher is not None:
                            with torch.no_grad():
                                teacher_logits = teacher(images).float()
                    out = criterion(logits.float(), labels, raw_model, epoch=epoch + step / steps_per_epoch,
                                    teacher_logits=teacher_logits)
                    (out["loss"] / cfg.grad_accum).backward()
                b = len(labels)
                # One device-to-host copy per micro-batch (not one synchronisation per term).
                values = torch.stack([out[k].detach().float() for k in _LOSS_TERMS]
                                     + [(logits.argmax(1) == labels).sum().float()]).double().cpu()
                terms = values[: len(_LOSS_TERMS)]
                step_terms += terms
                sums[: len(_LOSS_TERMS)] += terms * b
                sums[-2] += float(values[-1])
                sums[-1] += b
                step_images += b
            if cfg.clip_grad is not None:
                nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.clip_grad)
            optimizer.step()
            state.lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            state.global_step += 1
            images_in_epoch += step_images
            state.step_in_epoch = step + 1
            state.temperature = temperature
            state.metrics = {k: float(v) / cfg.grad_accum for k, v in zip(_LOSS_TERMS, step_terms, strict=True)}
            steps_run += 1
            if not math.isfinite(state.metrics["loss"]):
                raise FloatingPointError(
                    f"loss is {state.metrics['loss']} at epoch {epoch}, step {step}: lower the learning rate"
                )
            if hasattr(bar, "set_postfix") and (step + 1) % cfg.log_interval == 0:
                bar.set_postfix(loss=f"{state.metrics['loss']:.3f}", flops=f"{state.metrics['flops_ratio']:.3f}",
                                T=f"{temperature:.2f}")
            if on_step is not None:
                on_step(state)
            if _stop_requested(flag, device):
                checkpoint(run_dir / "last.pt", epoch, step + 1)
                interrupted = True
                say(f"{flag.name}: saved {run_dir / 'last.pt'} at epoch {epoch}, step {step + 1}/{steps_per_epoch}; "
                    "resume with --resume auto")
                break
        if hasattr(bar, "close"):
            bar.close()
        if interrupted:
            break
        state.step_in_epoch = 0
        # ---- end of epoch: metrics, validation, checkpoints
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        # Training throughput of this process (validation excluded); the first epoch includes warm-up.
        train_seconds = time.time() - t_epoch
        dist_utils.broadcast_buffers(raw_model)
        totals = dist_utils.all_reduce_sum(sums.to(device)).cpu()
        seen = max(float(totals[-1]), 1.0)
        row: dict[str, Any] = {f"train_{k}" if k == "loss" else k: float(totals[i]) / seen
                               for i, k in enumerate(_LOSS_TERMS)}
        row["train_top1"] = 100.0 * float(totals[-2]) / seen
        row["temperature"] = state.temperature
        row["lr"] = state.lr
        validate = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
        improved = False
        if validate:
            last_eval = evaluate(raw_model, val_loader, device, amp=cfg.amp, channels_last=use_cl,
                                 progress=cfg.progress, desc="validate")
            row.update(val_top1=last_eval.top1, val_top5=last_eval.top5, val_loss=last_eval.loss,
                       val_flops_ratio=last_eval.flops_ratio, val_dense_mflops=last_eval.dense_flops / 1e6,
                       val_dynamic_mflops=last_eval.dynamic_flops / 1e6)
            if best_top1 is None or last_eval.top1 > best_top1:
                best_top1, improved = last_eval.top1, True
        row["epoch_time_s"] = time.time() - t_epoch
        row["train_images_per_s"] = images_in_epoch / max(train_seconds, 1e-9)
        row["train_images_per_s_all"] = row["train_images_per_s"] * world
        if hasattr(train_set, "bad_images"):  # image folders: unreadable images skipped since the last epoch line
            bad = train_set.bad_images + getattr(val_set, "bad_images", 0)
            row["skipped_images"], bad_seen = bad - bad_seen, bad
        logger.log(epoch, row)
        history.append({"epoch": epoch, **row})
        say(_epoch_line(epoch, cfg.epochs, row))
        epochs_done = epoch + 1
        stop = _stop_requested(flag, device)
        if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs or stop:
            checkpoint(run_dir / "last.pt", epoch + 1, 0)
        if improved:
            checkpoint(run_dir / "best.pt", epoch + 1, 0)
        if stop and epoch + 1 < cfg.epochs:
            interrupted = True
            say(f"{flag.name}: saved {run_dir / 'last.pt'} after epoch {epoch + 1}; resume with --resume auto")
            break
    logger.close()
    digests = None
    if world > 1 and not interrupted:
        digests = _check_replicas(raw_model, run_dir if main else None, say)
    return TrainResult(
        run_dir=run_dir,
        epochs_done=epochs_done,
        global_step=state.global_step,
        steps_run=steps_run,
        interrupted=interrupted,
        stop_signal=(flag.signum or signal.SIGTERM) if interrupted else None,
        best_top1=best_top1,
        last_eval=last_eval,
        history=history,
        replica_digests=digests,
    )


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


def _epoch_line(epoch: int, epochs: int, row: dict[str, Any]) -> str:
    text = (
        f"epoch {epoch + 1}/{epochs}: loss {row['train_loss']:.3f} (cls {row['loss_cls']:.3f}, "
        f"flops {row['loss_flops']:.4f}, bounds {row['loss_bounds']:.4f}, kd {row['loss_distill']:.3f}) "
        f"train top-1 {row['train_top1']:.1f}% flops {row['flops_ratio']:.3f} T {row['temperature']:.2f} "
        f"lr {row['lr']:.3g}"
    )
    if "val_top1" in row:
        text += f" | val top-1 {row['val_top1']:.2f}% top-5 {row['val_top5']:.2f}% flops {row['val_flops_ratio']:.3f}"
    if row.get("skipped_images"):
        text += f" | skipped {row['skipped_images']} unreadable images"
    return text + f" [{row['epoch_time_s']:.0f}s]"
