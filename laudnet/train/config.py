"""The training configuration: one dataclass, filled from defaults, then a YAML file (``-c``), then command-line flags.

Defaults follow the official ImageNet recipe (SGD with Nesterov momentum 0.9, weight decay 5e-5 on all parameters,
lr 0.02 per 256 images with cosine decay per iteration and no warm-up, target ratio 0.5, λ = 10, KD α = 0.5 and T = 4,
Gumbel temperature 5.0 → 0.1 exponentially); the quick-run fields (subsets, steps per epoch) are off by default. ViTs
trained from scratch use ``optimizer: adamw`` with ``decay_all: false`` instead (see ``configs/vit-canvas.yaml``).

Every flag defaults to "not given" (``argparse.SUPPRESS``), so :func:`resolve_config` applies exactly the flags the
user typed on top of the YAML file, which itself only overrides the keys it names (timm's two-stage scheme, in one
parser). The resolved config is written next to the run as ``args.yaml``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from laudnet.paradigms import DEFAULT_GRANULARITY, format_granularity, parse_granularity
from laudnet.paradigms import DYNAMIC_PARADIGMS as PARADIGMS
from laudnet.train.schedules import FLOPS_REDUCTIONS, NOISE_KINDS, TEMPERATURE_KINDS

MODES = ("dynamic", "static")
# `laudnet train --task`: image classification, or detection (boxes) and instance segmentation (boxes and masks) with
# torchvision's detectors on the LAUD backbone (`laudnet.detection.task`).
TASK_NAMES = ("classification", "detection", "instance")
DETECTOR_NAMES = ("fasterrcnn", "retinanet", "maskrcnn")
OPTIMIZERS = ("sgd", "adamw")


def _f(default: Any, help: str, group: str, choices: tuple[str, ...] | None = None, short: str | None = None):
    return field(default=default, metadata={"help": help, "group": group, "choices": choices, "short": short})


@dataclass
class TrainConfig:
    """Everything a training run needs; see each field's help (``laudnet train --help``)."""

    # task
    task: str = _f(
        "classification", "classification; detection (boxes) or instance (boxes and masks): a torchvision detector "
        "with --model as its backbone (and an FPN)", "task", TASK_NAMES,
    )
    detector: str | None = _f(
        None, f"detection: {', '.join(DETECTOR_NAMES)}; unset: fasterrcnn, or for --task instance maskrcnn (the only "
        "one with masks)", "task",
    )
    min_size: int = _f(800, "detection: the detector resizes each image so that its shorter side is this", "task")
    max_size: int = _f(1333, "detection: ... and its longer side at most this", "task")
    trainable_layers: int = _f(
        3, "detection: backbone stages trained, counted from the last (3: stem and stage 1 frozen; 5: all)", "task"
    )
    roi_batch_size: int = _f(
        512, "detection: proposals sampled per image for the box head's losses (Faster/Mask R-CNN)", "task"
    )
    detections_per_image: int = _f(100, "detection: most detections kept per image", "task")
    # model
    model: str = _f(
        "laud_resnet50", "registered model name (the backbone with --task detection|instance)", "model", short="-m"
    )
    mode: str = _f("dynamic", "static training, or dynamic fine-tuning with maskers", "model", MODES)
    paradigm: str = _f("spatial", "what the maskers skip", "model", PARADIGMS)
    granularity: list[int] | None = _f(
        None,
        "per-stage granularity, e.g. 4-4-2-1 or 4,4,2,1 (spatial patch S or channel group G; one value for every "
        f"stage); default spatial {format_granularity(DEFAULT_GRANULARITY['spatial'])}, channel "
        f"{format_granularity(DEFAULT_GRANULARITY['channel'])}",
        "model",
    )
    init: str | None = _f(
        None, "initial weights: a static laudnet checkpoint or a torchvision weights file (.pth); detection: a "
        "classification checkpoint or torchvision weights of the backbone, or a detection checkpoint", "model"
    )
    zero_init_residual: bool = _f(
        True, "without init: start every residual branch at zero (last BN scale 0), which steadies training", "model"
    )
    # data
    dataset: str = _f(
        "fashion-canvas", "imagefolder (alias imagenet), fashion-mnist or fashion-canvas; detection: "
        "fashion-canvas-det or coco (data root: train/, val/, annotations/instances_{train,val}.json)", "data",
    )
    data_root: str | None = _f(None, "data folder (default for fashion-*: /usr/share/datasets/fashion-mnist)", "data")
    image_size: int = _f(224, "input side (canvas side for fashion-canvas, default canvas height for -det)", "data")
    train_subset: int | None = _f(None, "use only this many training samples", "data")
    val_subset: int | None = _f(None, "use only this many validation samples", "data")
    canvas_clutter: int = _f(6, "fashion-canvas: clutter fragments per image", "data")
    canvas_scale_min: float = _f(0.25, "fashion-canvas: smallest item side, as a fraction of the canvas", "data")
    canvas_scale_max: float = _f(0.5, "fashion-canvas: largest item side, as a fraction of the canvas", "data")
    canvas_height: int | None = _f(None, "fashion-canvas-det: canvas height (default: image_size)", "data")
    canvas_width: int | None = _f(None, "fashion-canvas-det: canvas width (default: the canvas height)", "data")
    canvas_items_min: int = _f(2, "fashion-canvas-det: fewest items per canvas", "data")
    canvas_items_max: int = _f(4, "fashion-canvas-det: most items per canvas (fewer where they do not fit)", "data")
    workers: int = _f(
        min(4, os.cpu_count() or 1), "data loader processes per training process (4, or the machine's CPU cores if "
        "fewer)", "data", short="-j"
    )
    on_bad_image: str = _f(
        "skip", "imagefolder and coco: an unreadable image (truncated, corrupt) is skipped with a warning naming it "
        "and counted in the epoch line, or stops the run with an error naming it", "data", ("skip", "error"),
    )
    # optimisation
    epochs: int = _f(100, "training epochs", "optimisation")
    batch_size: int = _f(
        128, "batch size per process (global = batch_size x processes x grad_accum)", "optimisation", short="-b"
    )
    val_batch_size: int | None = _f(None, "validation batch per process (default 1.5 x batch_size)", "optimisation")
    lr: float | None = _f(None, "learning rate; default lr_base x global batch / lr_base_size", "optimisation")
    lr_base: float = _f(0.02, "learning rate per lr_base_size images of global batch", "optimisation")
    lr_base_size: int = _f(256, "batch size that lr_base refers to", "optimisation")
    min_lr: float = _f(0.0, "end of the per-iteration cosine decay", "optimisation")
    masker_lr_mult: float = _f(1.0, "learning-rate multiplier of the masker parameters", "optimisation")
    optimizer: str = _f("sgd", "sgd (official recipe) or adamw (betas 0.9, 0.999: the usual choice for ViTs)",
                        "optimisation", OPTIMIZERS)
    weight_decay: float = _f(5e-5, "weight decay (decoupled for adamw)", "optimisation")
    decay_all: bool = _f(
        True, "weight decay on every parameter (official recipe); --no-decay-all exempts biases, norm scales, "
        "position embeddings and class tokens, as ViT recipes do", "optimisation"
    )
    momentum: float = _f(0.9, "SGD momentum", "optimisation")
    nesterov: bool = _f(True, "Nesterov momentum (SGD)", "optimisation")
    warmup_epochs: float = _f(0.0, "linear learning-rate warm-up, in epochs", "optimisation")
    label_smoothing: float = _f(0.0, "label smoothing of the classification loss", "optimisation")
    grad_accum: int = _f(1, "gradient accumulation steps per optimiser step", "optimisation")
    clip_grad: float | None = _f(None, "clip the gradient norm to this value", "optimisation")
    # dynamic
    target: float = _f(0.5, "target FLOPs ratio t in (0, 1]", "dynamic", short="-t")
    masker_norm: bool = _f(
        True, "standardise each CNN masker's pooled input (--no-masker-norm: the paper's masker)", "dynamic"
    )
    lambda_flops: float | None = _f(
        None, "weight of the FLOPs loss; unset: 10 for classification (the official ImageNet recipe), 1 for detection "
        "and instance (the official detection configs)", "dynamic",
    )
    target_warmup: float = _f(
        0.0, "fraction of the epochs over which the FLOPs target falls linearly from 1 to target (0: none, the paper)",
        "dynamic",
    )
    bounds_fraction: float = _f(0.33, "fraction of the epochs over which the per-block bounds relax", "dynamic")
    bounds_lower: float = _f(0.0, "per-block FLOPs-ratio lower bound after the relaxation (paper: 0)", "dynamic")
    bounds_upper: float = _f(1.0, "per-block FLOPs-ratio upper bound after the relaxation (paper: 1)", "dynamic")
    flops_loss: str = _f(
        "batch", "batch: the batch-mean FLOPs ratio meets the target (paper); sample: every image's does", "dynamic",
        FLOPS_REDUCTIONS,
    )
    kd_alpha: float = _f(0.5, "weight of the self-distillation loss (0: no teacher)", "dynamic")
    kd_temperature: float = _f(4.0, "distillation temperature T", "dynamic")
    t0: float = _f(5.0, "initial Gumbel temperature", "dynamic")
    t_last: float = _f(0.1, "final Gumbel temperature", "dynamic")
    temp_schedule: str = _f("exp", "Gumbel temperature schedule over all iterations", "dynamic", TEMPERATURE_KINDS)
    noise_schedule: str = _f(
        "linear", "scale of the Gumbel noise of training decisions: decaying from 1 to noise_end, or constant 1 "
        "(the paper)", "dynamic", NOISE_KINDS,
    )
    noise_end: float = _f(0.0, "final Gumbel-noise scale of a decaying noise_schedule", "dynamic")
    # evaluated weights (all off by default)
    ema_decay: float | None = _f(
        None, "keep an exponential moving average of the weights and buffers (BN statistics included), updated "
        "after every optimiser step with this decay, e.g. 0.999 (~1000 steps); validation and the model of best.pt "
        "and last.pt are then the average (the trained weights are kept for resume)", "evaluated weights",
    )
    ema_warmup: bool = _f(False, "warm the EMA decay up: min(ema_decay, (1 + k) / (10 + k)) at step k",
                          "evaluated weights")
    recalibrate_bn: int = _f(
        0, "after the last epoch, re-estimate the BN running statistics of the validated model over this many "
        "training batches, the maskers deciding as in eval (0: off)", "evaluated weights",
    )
    # run
    output: str = _f("runs", "folder of the runs", "run", short="-o")
    run_name: str | None = _f(None, "run folder name under output (default: from model, mode, dataset)", "run")
    resume: str | None = _f(None, "checkpoint to resume from, or 'auto' for the run folder's last.pt", "run")
    overwrite: bool = _f(
        False, "start afresh in a run folder that already holds a run, replacing its checkpoints and metrics", "run"
    )
    seed: int = _f(0, "seed of the model init, the data order and the dataset", "run")
    device: str = _f("auto", "cpu, cuda, cuda:N, or auto (cuda when available)", "run")
    threads: int | None = _f(None, "intra-op CPU threads per process (default: torch's choice)", "run")
    amp: bool = _f(True, "bf16 autocast (on CUDA only)", "run")
    channels_last: bool = _f(True, "channels_last memory format (on CUDA only)", "run")
    checkpoint_every: int = _f(1, "epochs between checkpoints (last.pt is also written on SIGTERM)", "run")
    eval_every: int = _f(1, "epochs between validations (the last epoch is always validated)", "run")
    max_steps_per_epoch: int | None = _f(None, "stop each epoch after this many optimiser steps (quick runs)", "run")
    log_interval: int = _f(50, "steps between progress-bar metric updates", "run")
    tensorboard: bool = _f(False, "also write TensorBoard logs (needs the tensorboard package)", "run")
    progress: bool = _f(True, "show tqdm progress bars", "run")

    def __post_init__(self) -> None:
        validate_config(self)

    def global_batch(self, world_size: int = 1) -> int:
        """Images per optimiser step over all processes."""
        return self.batch_size * world_size * self.grad_accum

    def effective_lr(self, world_size: int = 1) -> float:
        """``lr`` if set, else ``lr_base`` scaled linearly by the global batch (official recipe: 0.02 × 1024/256
        = 0.08)."""
        if self.lr is not None:
            return self.lr
        return self.lr_base * self.global_batch(world_size) / self.lr_base_size

    def dataset_kwargs(self, split: str) -> dict[str, Any]:
        """Options for :func:`laudnet.data.build_dataset` from this config (subset size, canvas clutter and seed)."""
        from laudnet.data import canonical_name

        kwargs: dict[str, Any] = {}
        subset = self.train_subset if split == "train" else self.val_subset
        if subset is not None:
            kwargs["num_samples"] = subset
        if canonical_name(self.dataset) == "imagefolder":
            kwargs["on_bad_image"] = self.on_bad_image
        if canonical_name(self.dataset) == "fashion-canvas":
            kwargs.update(
                num_clutter=self.canvas_clutter,
                scale_range=(self.canvas_scale_min, self.canvas_scale_max),
                seed=self.seed,
            )
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _granularity_list(value: Any) -> list[int] | None:
    """The granularity grammar of `laudnet.paradigms`, as the list that args.yaml and checkpoints hold."""
    out = parse_granularity(value)
    return None if out is None else list(out)


def validate_config(cfg: TrainConfig) -> None:
    """Check ranges and choices; raises ValueError naming the field."""
    cfg.granularity = _granularity_list(cfg.granularity)
    if not 0 < cfg.target <= 1:
        raise ValueError(f"target must be in (0, 1], got {cfg.target}")
    for f in dataclasses.fields(cfg):
        choices = f.metadata.get("choices")
        if choices and getattr(cfg, f.name) not in choices:
            raise ValueError(f"{f.name} must be one of {', '.join(choices)}, got {getattr(cfg, f.name)!r}")
    from laudnet.data import canonical_name  # local: keeps `import config` light

    canonical_name(cfg.dataset, cfg.task)
    _validate_task(cfg)
    if cfg.lambda_flops is None:  # resolved here, so args.yaml and checkpoints hold the number
        cfg.lambda_flops = default_lambda_flops(cfg.task)
    positive = (
        "image_size",
        "epochs",
        "batch_size",
        "grad_accum",
        "lr_base_size",
        "log_interval",
        "checkpoint_every",
        "eval_every",
    )
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    for name in ("train_subset", "val_subset", "val_batch_size", "max_steps_per_epoch", "threads"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1 when set, got {getattr(cfg, name)}")
    for name in ("lr_base", "t0", "t_last", "kd_temperature", "masker_lr_mult"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"{name} must be > 0, got {getattr(cfg, name)}")
    if cfg.lr is not None and cfg.lr <= 0:
        raise ValueError(f"lr must be > 0 when set, got {cfg.lr}")
    for name in (
        "min_lr",
        "weight_decay",
        "momentum",
        "warmup_epochs",
        "lambda_flops",
        "kd_alpha",
        "workers",
        "canvas_clutter",
    ):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    if not 0 <= cfg.label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if not 0 <= cfg.target_warmup <= 1:
        raise ValueError(f"target_warmup must be in [0, 1], got {cfg.target_warmup}")
    if not 0 < cfg.bounds_fraction <= 1:
        raise ValueError(f"bounds_fraction must be in (0, 1], got {cfg.bounds_fraction}")
    if not 0 <= cfg.bounds_lower <= cfg.target <= cfg.bounds_upper <= 1:
        raise ValueError(
            f"block bounds must satisfy 0 <= bounds_lower <= target <= bounds_upper <= 1, got {cfg.bounds_lower}, "
            f"{cfg.target} and {cfg.bounds_upper}"
        )
    if not 0 <= cfg.noise_end <= 1:
        raise ValueError(f"noise_end must be in [0, 1], got {cfg.noise_end}")
    if not 0 < cfg.canvas_scale_min <= cfg.canvas_scale_max <= 1:
        raise ValueError(
            f"canvas scales must satisfy 0 < canvas_scale_min <= canvas_scale_max <= 1, got "
            f"{cfg.canvas_scale_min} and {cfg.canvas_scale_max}"
        )
    if cfg.overwrite and cfg.resume is not None:
        raise ValueError("--overwrite starts the run afresh and --resume continues it: give one of them")
    if cfg.warmup_epochs >= cfg.epochs:
        raise ValueError(f"warmup_epochs ({cfg.warmup_epochs}) must be shorter than epochs ({cfg.epochs})")
    if cfg.ema_decay is not None and not 0 < cfg.ema_decay < 1:
        raise ValueError(f"ema_decay must be in (0, 1) when set, got {cfg.ema_decay}")
    if cfg.recalibrate_bn < 0:
        raise ValueError(f"recalibrate_bn must be >= 0, got {cfg.recalibrate_bn}")


def _validate_task(cfg: TrainConfig) -> None:
    """The detection options: a known detector, maskrcnn for instance segmentation, positive sizes."""
    if cfg.detector is not None and cfg.detector not in DETECTOR_NAMES:
        raise ValueError(f"unknown detector {cfg.detector!r}; choose from: {', '.join(DETECTOR_NAMES)}")
    if cfg.task == "instance" and cfg.detector not in (None, "maskrcnn"):
        raise ValueError(f"--task instance needs masks, which only maskrcnn predicts, not {cfg.detector}")
    for name in ("min_size", "max_size", "roi_batch_size", "detections_per_image", "canvas_items_min"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.min_size > cfg.max_size:
        raise ValueError(f"min_size ({cfg.min_size}) must not exceed max_size ({cfg.max_size})")
    if cfg.canvas_items_max < cfg.canvas_items_min:
        raise ValueError(f"canvas_items_max ({cfg.canvas_items_max}) must be >= canvas_items_min "
                         f"({cfg.canvas_items_min})")
    for name in ("canvas_height", "canvas_width"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 16:
            raise ValueError(f"{name} must be >= 16 when set, got {getattr(cfg, name)}")
    if not 0 <= cfg.trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in 0..5, got {cfg.trainable_layers}")


def default_lambda_flops(task: str) -> float:
    """λ when the user sets none: 10 for classification (the official ImageNet recipe), 1 for detection and instance
    segmentation (the official detection configs, whose detector losses are of order 1)."""
    return 10.0 if task == "classification" else 1.0


def detector_kind(cfg: TrainConfig) -> str:
    """The detector of a detection run: ``detector``, else maskrcnn for ``instance``, fasterrcnn for ``detection``."""
    return cfg.detector or ("maskrcnn" if cfg.task == "instance" else "fasterrcnn")


# ----------------------------------------------------------------------------------------------------------- typing


def _base_type(name: str) -> tuple[type, bool]:
    """(scalar type, optional) of a field; list fields report list."""
    hint = typing.get_type_hints(TrainConfig)[name]
    args = typing.get_args(hint)
    optional = isinstance(hint, types.UnionType) and type(None) in args
    if optional:
        hint = next(a for a in args if a is not type(None))
    return (list if typing.get_origin(hint) is list else hint), optional


def _coerce(name: str, value: Any, source: str) -> Any:
    """Check a YAML value against the field's type (ints are accepted for floats)."""
    kind, optional = _base_type(name)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{source}: {name} cannot be null")
    if kind is list:
        try:
            return _granularity_list(value)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None
    ok = (
        isinstance(value, bool)
        if kind is bool
        else isinstance(value, int | float) and not isinstance(value, bool)
        if kind is float
        else isinstance(value, int) and not isinstance(value, bool)
        if kind is int
        else isinstance(value, str)
    )
    if not ok:
        raise ValueError(f"{source}: {name} must be {kind.__name__}, got {value!r}")
    return float(value) if kind is float else value


def read_yaml(path: Path, what: str) -> Any:
    """The parsed YAML of ``path``; ``what`` names the file in the errors (``config file``, ``demo config``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not valid YAML (with the parser's first line).
    """
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{what} {path} is not valid YAML: {str(err).splitlines()[0]}") from err


def load_yaml_overrides(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config: a mapping of TrainConfig fields (dashes or underscores), checked key by key.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a mapping, an unknown key (naming it and the file), or a value of the wrong type.
    """
    path = Path(path)
    data = read_yaml(path, "config file")
    if data is None:
        return {}
    return check_overrides(data, f"config file {path}", where=f" in {path}")


def check_overrides(data: Any, source: str, where: str = "") -> dict[str, Any]:
    """Check a mapping of TrainConfig fields (dashes or underscores) key by key; returns it with canonical names.

    Args:
        data: the mapping (e.g. parsed YAML).
        source: what it is, for messages (``config file x.yaml``).
        where: appended to the unknown-key message (`` in x.yaml``).

    Raises:
        ValueError: not a mapping, an unknown key (naming it, with the closest field), or a value of the wrong type.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{source} must hold a mapping of option: value, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown config key {key!r}{where}{hint}")
        out[name] = _coerce(name, value, source)
    return out


# ------------------------------------------------------------------------------------------------------------- CLI


def _granularity_flag(text: str) -> list[int] | None:
    try:
        return _granularity_list(text)
    except ValueError as err:  # argparse prints ArgumentTypeError messages as they are
        raise argparse.ArgumentTypeError(str(err)) from None


def _flag_type(kind: type):
    return _granularity_flag if kind is list else kind


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``-c/--config`` and one flag per TrainConfig field, in argument groups.

    Flags default to "not given", so :func:`resolve_config` knows which ones the user typed.
    """
    parser.add_argument("-c", "--config", default=None, metavar="FILE", help="YAML file of options (flags win)")
    groups: dict[str, argparse._ArgumentGroup] = {}
    defaults = TrainConfig.__dataclass_fields__
    for f in dataclasses.fields(TrainConfig):
        group = f.metadata["group"]
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        kind, optional = _base_type(f.name)
        flags = [f"--{f.name.replace('_', '-')}"] + ([f.metadata["short"]] if f.metadata["short"] else [])
        default = defaults[f.name].default
        shown = "-".join(map(str, default)) if isinstance(default, list) else default
        kwargs: dict[str, Any] = {
            "default": argparse.SUPPRESS,
            "dest": f.name,
            "help": f"{f.metadata['help']} (default: {shown})",
        }
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _flag_type(kind)
            if f.metadata["choices"]:
                kwargs["choices"] = f.metadata["choices"]
            kwargs["metavar"] = "N" if kind in (int, float) else "G-G-G-G" if kind is list else "STR"
        groups[group].add_argument(*flags, **kwargs)
    return parser


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """Defaults, then the YAML file named by ``args.config``, then the flags given; validated."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(load_yaml_overrides(args.config))
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    return TrainConfig(**values)


def save_resolved(config: TrainConfig, run_dir: str | os.PathLike) -> Path:
    """Write the resolved config as ``run_dir/args.yaml`` (loadable again with ``-c``)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "args.yaml"
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return path


def config_argv(cfg: TrainConfig) -> list[str]:
    """The ``laudnet train`` flags that rebuild ``cfg`` from the defaults: one per field that differs from its default.

    ``resolve_config`` of these flags (no ``-c`` file) gives back ``cfg``, so a run can be recorded as one exact,
    self-contained command line.

    Raises:
        ValueError: a field set to None whose default is not None (no flag can express it).
    """
    argv: list[str] = []
    defaults = TrainConfig.__dataclass_fields__
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value == defaults[f.name].default or (f.name == "lambda_flops" and value == default_lambda_flops(cfg.task)):
            continue  # (an unset lambda_flops resolves to the task's default)
        flag = f"--{f.name.replace('_', '-')}"
        if value is None:
            raise ValueError(f"{f.name} is None but defaults to {defaults[f.name].default!r}: no flag sets it to None")
        if isinstance(value, bool):
            argv.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, list):
            argv += [flag, "-".join(map(str, value))]
        else:
            argv += [flag, repr(value) if isinstance(value, float) else str(value)]
    return argv
