"""``laudnet train --task detection|instance``: detection and instance segmentation as a task of a LAUDNet training
run (Han et al., TPAMI 2024, dense-prediction experiments), with the classification runs' config, resume, DDP,
progress bars and checkpoints (`laudnet.train.run.TrainingRun`).

- The model is `create_detector`'s: torchvision's Faster R-CNN, RetinaNet or Mask R-CNN (``instance``) on the LAUD
  backbone ``--model`` with an FPN, initialised from ``--init``: a laudnet classification checkpoint or torchvision
  weights of the backbone (`laud_fpn_backbone`), or a detection checkpoint (static detection training, then dynamic
  fine-tuning from it, as for classification).
- One step is `detection_step`: the detector's losses plus λ·(F_dyn / F_dense − t)² of the backbone; the Gumbel
  temperature and noise of the run's schedules go to the backbone's maskers (`DetectionTask.set_gates`).
- Validation is `evaluate_detector` on a sharded loader: COCO box AP (and mask AP for ``instance``, which picks
  ``best.pt``), the backbone's FLOPs ratio, per-block rates and adaptivity (with the lift of spatial masks on the
  ground-truth boxes).

Data: ``fashion-canvas-det`` (several Fashion-MNIST items per canvas; ``--data-root`` the Fashion-MNIST folder) or
``coco``: ``--data-root`` holding ``train/`` and ``val/`` image folders and ``annotations/instances_train.json`` and
``annotations/instances_val.json`` (COCO 2017's own names ``train2017/``, ``val2017/`` and
``instances_{train,val}2017.json`` are found too).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from laudnet.detection.data import CocoDetection, collate_detection, fashion_canvas_det
from laudnet.detection.evaluate import AP_NAMES, evaluate_detector
from laudnet.detection.losses import detection_step
from laudnet.detection.models import create_detector
from laudnet.paradigms import GRANULAR_PARADIGMS
from laudnet.train.build import model_paradigm
from laudnet.train.checkpoint import FORMAT, CheckpointError, load_checkpoint
from laudnet.train.config import TrainConfig, detector_kind
from laudnet.train.evaluation import autocast
from laudnet.train.schedules import flops_target

DETECTION_TASKS = ("detection", "instance")
# The detectors' loss terms, as torchvision names them; metrics.csv prefixes RetinaNet's with "loss_".
DETECTOR_LOSSES = {
    "fasterrcnn": ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"),
    "maskrcnn": ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"),
    "retinanet": ("classification", "bbox_regression"),
}
# COCO's folder and file names per split: ours first, then COCO 2017's.
_COCO_NAMES = {"train": ("train", "train2017"), "val": ("val", "val2017")}


def _log_name(term: str) -> str:
    return term if term.startswith("loss") else f"loss_{term}"


# ------------------------------------------------------------------------------------------------------------ data


def coco_split(root: str | Path, split: str) -> tuple[Path, Path]:
    """The image folder and instances JSON of ``split`` under a COCO data root.

    ``root/<split>/`` and ``root/annotations/instances_<split>.json``, or COCO 2017's ``root/<split>2017/`` and
    ``root/annotations/instances_<split>2017.json``.

    Raises:
        FileNotFoundError: neither layout is there (naming what was looked for).
    """
    root = Path(root)
    for name in _COCO_NAMES[split]:
        folder, annotations = root / name, root / "annotations" / f"instances_{name}.json"
        if folder.is_dir() and annotations.is_file():
            return folder, annotations
    ours = _COCO_NAMES[split][0]
    raise FileNotFoundError(
        f"coco data root {root} has no {split} split: expected {root / ours}/ with {root}/annotations/instances_"
        f"{ours}.json (or COCO 2017's {ours}2017/ and instances_{ours}2017.json)"
    )


def _coco_dataset(cfg: TrainConfig, split: str, instance: bool) -> CocoDetection:
    folder, annotations = coco_split(cfg.data_root, split)
    dataset = CocoDetection(folder, annotations, masks=False, on_bad_image=cfg.on_bad_image)
    if instance:
        box_only = next((a for a in dataset.coco.dataset["annotations"] if "segmentation" not in a), None)
        if box_only is not None:
            raise ValueError(
                f"--task instance needs instance masks, but annotation {box_only.get('id')} of image "
                f"{box_only['image_id']} in {annotations} has no segmentation: train boxes only with --task detection"
            )
        dataset.masks = True
    subset = cfg.train_subset if split == "train" else cfg.val_subset
    if subset is not None:
        if subset > len(dataset.ids):
            raise ValueError(f"{split}_subset {subset} exceeds the {len(dataset.ids)} images of {annotations}")
        dataset.ids = dataset.ids[:subset]
    return dataset


def build_detection_datasets(cfg: TrainConfig, splits: tuple[str, ...] = ("train", "val")) -> tuple[list[Dataset], int]:
    """The detection sets of ``splits`` and the detector's number of classes (background included: the largest
    category id + 1), from the first split; bad paths and files fail here with a one-line message naming them."""
    instance = cfg.task == "instance"
    if cfg.dataset == "coco":
        if cfg.data_root is None:
            raise ValueError("dataset coco needs --data-root (root/train/, root/val/, root/annotations/instances_"
                             "{train,val}.json)")
        datasets = [_coco_dataset(cfg, split, instance) for split in splits]
    else:
        height = cfg.canvas_height or cfg.image_size
        datasets = [
            fashion_canvas_det(
                cfg.data_root, split, height=height, width=cfg.canvas_width or height,
                num_samples=cfg.train_subset if split == "train" else cfg.val_subset,
                items_range=(cfg.canvas_items_min, cfg.canvas_items_max),
                scale_range=(cfg.canvas_scale_min, cfg.canvas_scale_max), seed=cfg.seed,
            )
            for split in splits
        ]
    return datasets, datasets[0].num_classes


def _dataset_text(cfg: TrainConfig, datasets: list[Dataset]) -> str:
    sizes = " / ".join(f"{len(d)} {s}" for d, s in zip(datasets, ("train", "val"), strict=False))
    if cfg.dataset == "coco":
        return f"{sizes} images"
    return f"{sizes}, {datasets[0].height}x{datasets[0].width} canvases"


# ----------------------------------------------------------------------------------------------------------- model


def detector_args(cfg: TrainConfig, num_classes: int) -> dict[str, Any]:
    """The `create_detector` arguments of ``cfg`` (no weights): detector, backbone, paradigm, granularity, target,
    classes and the detector options of the config."""
    kind = detector_kind(cfg)
    paradigm = model_paradigm(cfg)
    args: dict[str, Any] = dict(
        kind=kind, backbone=cfg.model, paradigm=paradigm,
        granularity=cfg.granularity if paradigm in GRANULAR_PARADIGMS else None,
        target=cfg.target if paradigm != "static" else None, num_classes=num_classes,
        trainable_layers=cfg.trainable_layers, masker_norm=cfg.masker_norm, min_size=cfg.min_size,
        max_size=cfg.max_size,
    )
    if kind == "retinanet":
        args["detections_per_img"] = cfg.detections_per_image
    else:
        args.update(box_detections_per_img=cfg.detections_per_image, box_batch_size_per_image=cfg.roi_batch_size)
    return args


def _peek(path: str | Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None  # not a torch file of plain data: the weight readers give the precise message


def is_detection_checkpoint(state: Any) -> bool:
    """Whether ``state`` (a loaded file) is a laudnet checkpoint of a detection or instance run."""
    return isinstance(state, dict) and state.get("format") == FORMAT and state.get("task") in DETECTION_TASKS


def load_detection_init(model: nn.Module, state: dict[str, Any], path: str | Path) -> str:
    """Load a detection checkpoint's weights into ``model`` (another detector kind, paradigm or class count is fine):
    every tensor whose name and shape fit is loaded; the backbone body's must all be there (maskers apart).

    Returns:
        What was left at its initialisation (``", fresh: maskers, roi_heads.box_predictor"``), or ``""``.

    Raises:
        CheckpointError: the backbone body of the checkpoint does not fit (one line naming a tensor).
    """
    saved = state["model"]
    own = model.state_dict()
    fits = {k: v for k, v in saved.items() if k in own and own[k].shape == v.shape}
    body_missing = [k for k in own if k.startswith("backbone.body.") and "masker" not in k and k not in fits]
    if body_missing:
        key = body_missing[0]
        what = "is missing" if key not in saved else f"has shape {tuple(saved[key].shape)}, not {tuple(own[key].shape)}"
        raise CheckpointError(f"detection checkpoint {path} does not fit this backbone: {key} {what}")
    model.load_state_dict(fits, strict=False)
    fresh = sorted({("maskers" if "masker" in k else ".".join(k.split(".")[:2])) for k in own if k not in fits})
    return f", fresh: {', '.join(fresh)}" if fresh else ""


def build_detector(cfg: TrainConfig, num_classes: int) -> tuple[nn.Module, str]:
    """The detector of ``cfg`` initialised from ``init``, and a note saying from what.

    Raises:
        ValueError, FileNotFoundError, CheckpointError: bad weights (one line naming the file and the mismatch).
    """
    args = detector_args(cfg, num_classes)
    if cfg.init is None:
        return create_detector(**args), "random init"
    peek = _peek(cfg.init)
    if is_detection_checkpoint(peek):
        state = load_checkpoint(cfg.init, expected_model=cfg.model)  # another backbone: refused, naming both
        model = create_detector(**args)
        fresh = load_detection_init(model, state, cfg.init)
        return model, f"init from detection checkpoint {cfg.init}{fresh}"
    kind = "laudnet" if isinstance(peek, dict) and peek.get("format") == FORMAT else "torchvision"
    return create_detector(**args, weights_backbone=cfg.init), f"backbone init from {kind} weights {cfg.init}"


def trained_detector(state: dict[str, Any], path: str | Path) -> nn.Module:
    """The detector of a detection checkpoint (eval mode, on CPU), rebuilt from its ``model_args``.

    Raises:
        CheckpointError: the checkpoint has no detector arguments or its weights do not fit them.
    """
    if "model_args" not in state:
        raise CheckpointError(f"checkpoint {path} has no detector arguments (model_args): not written by laudnet train")
    model = create_detector(**state["model_args"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {path}: its weights do not fit its detector ({first})") from None
    return model.eval()


# ------------------------------------------------------------------------------------------------------------ task


class DetectionTask:
    """Detection (``detection``) or instance segmentation (``instance``) with a torchvision detector on a LAUD
    backbone; the methods of `laudnet.train.task.Task` (see `laudnet.train.task.ClassificationTask` for each).

    There is no distillation term (the official detection configs have none; ``kd_alpha`` is not used) and no
    per-block bounds; λ is ``lambda_flops`` (unset: 1, as the official detection configs and
    ``configs/detection-canvas.yaml``).

    Args:
        cfg: the run's configuration (``task`` detection or instance).
        device: where the model runs.
        say: where one-line notes go.
    """

    def __init__(self, cfg: TrainConfig, device: torch.device, say: Callable[[str], None] = print) -> None:
        if cfg.task not in DETECTION_TASKS:
            raise ValueError(f"DetectionTask runs --task detection or instance, not {cfg.task!r}")
        self.cfg, self.device, self.say = cfg, device, say
        self.kind = detector_kind(cfg)
        self.instance = cfg.task == "instance"
        self.terms = DETECTOR_LOSSES[self.kind]
        self.log_keys = ("loss", "loss_detection", "loss_flops", "flops_ratio", *map(_log_name, self.terms))
        self.best_metric = "val_mask_ap" if self.instance else "val_box_ap"
        self.num_classes: int | None = None
        self.data_text = ""
        self.init_note = "random init"

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        """The training and validation sets; bad paths, files and annotations fail here naming them."""
        (train_set, val_set), self.num_classes = build_detection_datasets(self.cfg)
        self.data_text = _dataset_text(self.cfg, [train_set, val_set])
        return train_set, val_set

    def build_loader(self, dataset: Dataset, batch_size: int, *, train: bool) -> DataLoader:
        """laudnet's resumable, sharded loader with the detection collate (lists: images differ in size)."""
        from laudnet.data import build_loader

        return build_loader(dataset, batch_size, train=train, seed=self.cfg.seed, num_workers=self.cfg.workers,
                            pin_memory=self.device.type == "cuda", collate_fn=collate_detection)

    def build_model(self) -> nn.Module:
        """The detector (after `build_datasets`: its classes), initialised from ``init``."""
        if self.num_classes is None:
            raise RuntimeError("build_datasets must run before build_model (the detector's classes)")
        model, self.init_note = build_detector(self.cfg, self.num_classes)
        return model

    def set_gates(self, model: nn.Module, temperature: float, noise: float) -> None:
        """The run's Gumbel temperature and noise for the backbone's maskers (those of frozen stages decide as in
        eval)."""
        body = model.backbone.body
        body.set_temperature(temperature)
        body.set_gate_noise(noise)

    def checkpoint_fields(self, model: nn.Module) -> dict[str, Any]:
        """The task, mode, paradigm, classes, granularity, detector and `create_detector` arguments (a resume must
        match each; ``laudnet eval`` rebuilds the detector from ``model_args``)."""
        args = model.model_args
        return {"task": self.cfg.task, "mode": self.cfg.mode, "paradigm": args["paradigm"],
                "num_classes": self.num_classes, "granularity": args["granularity"], "detector": self.kind,
                "model_args": args}

    def describe(self, model: nn.Module) -> str:
        cfg, args = self.cfg, model.model_args
        n_params = sum(p.numel() for p in model.parameters())
        n_trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        gran = f" {'-'.join(map(str, args['granularity']))}" if args["granularity"] else ""
        target = f" t={cfg.target}" if args["paradigm"] != "static" else ""
        return (f"{self.kind} on {cfg.model} {args['paradigm']}{gran}{target} on {cfg.dataset} ({self.data_text}, "
                f"{self.num_classes - 1} classes + background, resized to {cfg.min_size}-{cfg.max_size} px): "
                f"{n_params / 1e6:.2f} M parameters ({n_trained / 1e6:.2f} M trained), {self.init_note}")

    def step(self, model: nn.Module, raw_model: nn.Module, batch: Any, *, epoch: float) -> tuple[Tensor, Tensor, int]:
        """One micro-batch: `detection_step` (the detector's losses + λ·(F_dyn / F_dense − t)² of the backbone).

        Args:
            model: the detector to call (the DDP wrapper under several processes).
            raw_model: the detector itself (its backbone holds the masks of the forward).
            batch: ``(images, targets)`` lists from `collate_detection`.
            epoch: epochs done (fractional), for the target's warm-up (no per-block bounds in detection).
        """
        images, targets = batch
        keys = ("boxes", "labels", "masks") if self.instance else ("boxes", "labels")
        images = [im.to(self.device, non_blocking=True) for im in images]
        targets = [{k: t[k].to(self.device, non_blocking=True) for k in keys} for t in targets]
        cfg = self.cfg
        target = flops_target(epoch, cfg.epochs, cfg.target, cfg.target_warmup)
        with autocast(self.device, cfg.amp):
            loss, logs = detection_step(model, images, targets, target, cfg.lambda_flops, cfg.flops_loss,
                                        module=raw_model)
        values = [logs["loss"], logs["loss_detection"], logs["loss_flops"], logs["flops_ratio"],
                  *(logs[t] for t in self.terms)]
        return loss.float(), torch.tensor(values, dtype=torch.float64), len(images)

    def train_row(self, means: dict[str, float]) -> dict[str, float]:
        return {("train_loss" if k == "loss" else k): v for k, v in means.items()}

    def validate(self, model: nn.Module, loader: DataLoader) -> tuple[dict[str, float], dict[str, Any]]:
        """COCO evaluation of ``model`` (the detector, not its DDP wrapper) on the sharded ``loader``: the row's
        ``val_*`` columns (AP in percent) and `evaluate_detector`'s full result."""
        was_training = model.training
        # In fp32, as torchvision's references evaluate: under bf16 autocast the predicted boxes would be rounded to
        # 8 significant bits (2 px steps from 256 px on).
        result = evaluate_detector(model, loader, device=self.device, progress=self.cfg.progress)
        model.train(was_training)
        return validation_row(result), result

    def epoch_text(self, row: dict[str, Any]) -> str:
        terms = ", ".join(f"{_log_name(t).removeprefix('loss_')} {row[_log_name(t)]:.3f}" for t in self.terms)
        text = (f"loss {row['train_loss']:.3f} ({terms}, flops {row['loss_flops']:.4f}) flops {row['flops_ratio']:.3f} "
                f"T {row['temperature']:.2f} lr {row['lr']:.3g}")
        if "val_box_ap" in row:
            text += f" | val box AP {_pct(row['val_box_ap'])} AP50 {_pct(row['val_box_ap50'])}"
            if "val_mask_ap" in row:
                text += f" mask AP {_pct(row['val_mask_ap'])}"
            text += f" flops {row['val_flops_ratio']:.3f}"
        return text


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def validation_row(result: dict[str, Any]) -> dict[str, float | None]:
    """The metrics-file columns of an `evaluate_detector` result: box (and mask) AP, AP50, AP75, AP_S/M/L in percent
    (empty where undefined), the backbone's FLOPs ratio and its dense and dynamic GMACs per image."""
    row: dict[str, float | None] = {}
    for iou_type, prefix in (("bbox", "val_box"), ("segm", "val_mask")):
        for name in AP_NAMES if iou_type in result else ():
            value = result[iou_type][name]
            row[f"{prefix}_{name.lower()}"] = None if value is None else 100.0 * value
    backbone = result.get("backbone")
    if backbone is not None:
        row.update(val_flops_ratio=backbone["flops_ratio"], val_dense_gmacs=backbone["gmacs_dense"],
                   val_dynamic_gmacs=backbone["gmacs_dynamic"])
    return row

