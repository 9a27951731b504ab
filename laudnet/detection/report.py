"""What ``laudnet eval`` and ``laudnet viz`` show of a detection checkpoint (of ``laudnet train --task detection`` or
``instance``).

- `format_detection_eval`: the COCO table (AP, AP50, AP75, AP_S/M/L for boxes and, with a mask head, masks), the
  backbone's FLOPs per image and ratio, its per-block activation rates and the adaptivity of its decisions.
- `detection_payload`: the same as JSON.
- `stage_maps` + `plot_detections`: validation images with the predicted boxes (and masks) and, per backbone stage,
  where it computed (mean over the stage's blocks of each block's executed pixels, red), as a PNG.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from laudnet.detection.evaluate import AP_NAMES
from laudnet.detection.models import backbone_masks
from laudnet.train.checkpoint import checkpoint_target

_IOU_NAMES = (("bbox", "box"), ("segm", "mask"))


def _cell(value: float | None) -> str:
    return f"{100 * value:6.2f}" if value is not None else f"{'-':>6}"


def format_detection_eval(result: dict[str, Any], title: str) -> str:
    """A text table of an `evaluate_detector` result (AP in percent; ``-`` where undefined)."""
    from laudnet.train.cli import format_adaptivity
    from laudnet.train.viz import short_block_name

    lines = [title, "         " + " ".join(f"{name:>6}" for name in AP_NAMES) + f"   ({result['images']} images)"]
    for iou_type, name in _IOU_NAMES:
        if iou_type in result:
            lines.append(f"  {name:<6} " + " ".join(_cell(result[iou_type][k]) for k in AP_NAMES))
    backbone = result.get("backbone")
    if backbone is not None:
        lines.append(f"  backbone FLOPs per image: dense {backbone['gmacs_dense']:.3f} G, dynamic "
                     f"{backbone['gmacs_dynamic']:.3f} G, ratio {backbone['flops_ratio']:.3f}")
    if result.get("block_names"):
        lines.append("  block    activation rate")
        for name, rate in zip(result["block_names"], result["block_rates"], strict=True):
            lines.append(f"  {short_block_name(name):<8} {rate:6.3f} {'#' * round(20 * min(rate, 1.0))}")
    if result.get("adaptivity") is not None:
        lines += format_adaptivity(result["adaptivity"])
    return "\n".join(lines)


def detection_payload(result: dict[str, Any], state: dict[str, Any], cfg, checkpoint: str | os.PathLike
                      ) -> dict[str, Any]:
    """The JSON of ``laudnet eval`` for a detection checkpoint (AP as fractions in [0, 1], as pycocotools gives)."""
    args = state["model_args"]
    adaptivity = result.get("adaptivity")
    return {
        "checkpoint": str(checkpoint),
        "task": state["task"],
        "detector": args["kind"],
        "model": state["model_name"],
        "paradigm": args["paradigm"],
        "granularity": args["granularity"],
        "target": checkpoint_target(state),
        "dataset": cfg.dataset,
        "min_size": args.get("min_size"),
        "max_size": args.get("max_size"),
        **{k: v for k, v in result.items() if k != "adaptivity"},
        "adaptivity": None if adaptivity is None else adaptivity.to_dict(),
    }


@torch.no_grad()
def stage_maps(detector: nn.Module, images: Sequence[Tensor]) -> tuple[list[dict[str, Tensor]], Tensor]:
    """Run ``detector`` (eval) on ``images``: its outputs and, per image and backbone stage, the share of the stage's
    blocks that computed each pixel, upsampled to the image.

    A spatial or layer-skipping block contributes its executed pixels (layer: all or none); a channel-skipping block
    the share of its channel groups computed, everywhere; a static block 1.

    Returns:
        ``(outputs, maps)``: torchvision's outputs (boxes in image pixels) and ``(B, 4, H, W)`` maps in [0, 1] at the
        size of the largest image (smaller images at their top left, as in the detector's batch).
    """
    from laudnet.train.adaptivity import stage_of

    detector.eval()
    outputs = detector(list(images))
    per_image = backbone_masks(detector)
    height, width = max(im.shape[-2] for im in images), max(im.shape[-1] for im in images)
    maps = torch.zeros(len(images), 4, height, width)
    for i, (image, blocks) in enumerate(zip(images, per_image, strict=True)):
        h, w = image.shape[-2:]
        stages: dict[str, list[Tensor]] = {}
        for name, masks in blocks.items():
            if "pixel" in masks:
                block = F.interpolate(masks["pixel"][None].float(), size=(h, w), mode="nearest")[0, 0]
            elif "channel" in masks:
                block = masks["channel"].float().mean().expand(h, w)
            else:
                block = torch.ones(h, w)
            stages.setdefault(stage_of(name), []).append(block.cpu())
        for k, stage in enumerate(sorted(stages)):
            maps[i, k, :h, :w] = torch.stack(stages[stage]).mean(0)
    return outputs, maps


def plot_detections(
    images: Sequence[Tensor],
    outputs: Sequence[dict[str, Tensor]],
    maps: Tensor,
    path: str | os.PathLike,
    *,
    targets: Sequence[dict[str, Tensor]] | None = None,
    class_names: dict[int, str] | None = None,
    score_threshold: float = 0.5,
    suptitle: str | None = None,
) -> Path:
    """Rows of validation images: the predictions (boxes scoring at least ``score_threshold`` in red with their class
    and score, their masks tinted), then each stage's execution map (red: computed) with the predicted boxes (yellow);
    the ground-truth boxes in green on every panel.

    Args:
        images: ``(3, H, W)`` images in [0, 1].
        outputs: the detector's outputs for them.
        maps: ``(B, n_stages, H, W)`` from `stage_maps`.
        path: the PNG to write.
        targets: ground truth to draw (``boxes``).
        class_names: label → name.
        score_threshold: the lowest score drawn.
        suptitle: figure title.

    Returns:
        The path written.
    """
    from matplotlib.patches import Rectangle

    from laudnet.train.viz import _pyplot, _save

    plt = _pyplot()
    n_stages = maps.shape[1]
    fig, axes = plt.subplots(len(images), n_stages + 1, figsize=(2.6 * (n_stages + 1), 2.1 * len(images) + 0.5),
                             squeeze=False)
    for r, (image, out) in enumerate(zip(images, outputs, strict=True)):
        h, w = image.shape[-2:]
        shown = image.permute(1, 2, 0).clamp(0, 1).cpu().numpy()
        keep = out["scores"].float() >= score_threshold
        boxes = out["boxes"][keep].float().cpu().tolist()
        labels, scores = out["labels"][keep].tolist(), out["scores"][keep].float().tolist()
        for c in range(n_stages + 1):
            ax = axes[r][c]
            ax.imshow(shown)
            if c == 0:
                if "masks" in out and keep.any():
                    tint = torch.zeros(h, w, 4)
                    tint[..., 2], tint[..., 1] = 1.0, 0.4
                    tint[..., 3] = 0.45 * (out["masks"][keep, 0].float().cpu() > 0.5).any(0)
                    ax.imshow(tint.numpy())
                ax.set_title(f"{len(boxes)} predicted (score >= {score_threshold:g})", fontsize=7)
            else:
                overlay = torch.zeros(maps.shape[-2], maps.shape[-1], 4)
                overlay[..., 0], overlay[..., 1], overlay[..., 2] = 1.0, 0.15, 0.1
                overlay[..., 3] = 0.6 * maps[r, c - 1]
                ax.imshow(overlay[:h, :w].numpy())
                ax.set_title(f"stage {c}: {float(maps[r, c - 1, :h, :w].mean()):.2f} computed", fontsize=7)
            for box in (targets[r]["boxes"].tolist() if targets is not None else []):
                ax.add_patch(Rectangle((box[0] - 0.5, box[1] - 0.5), box[2] - box[0], box[3] - box[1], fill=False,
                                       edgecolor="lime", linewidth=1.0, linestyle="--"))
            for box, label, score in zip(boxes, labels, scores, strict=True):
                ax.add_patch(Rectangle((box[0] - 0.5, box[1] - 0.5), box[2] - box[0], box[3] - box[1], fill=False,
                                       edgecolor="red" if c == 0 else "yellow", linewidth=1.0))
                if c == 0:
                    name = (class_names or {}).get(label, str(label))
                    ax.text(box[0], box[1], f"{name} {score:.2f}", color="white", fontsize=5, va="bottom",
                            bbox={"facecolor": "red", "alpha": 0.6, "pad": 0.5, "linewidth": 0})
            ax.set_xticks([])
            ax.set_yticks([])
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    return _save(fig, path, dpi=110)


def detection_figure(detector: nn.Module, dataset, path: str | os.PathLike, num_images: int, title: str,
                     score_threshold: float = 0.5) -> Path:
    """`plot_detections` of ``detector`` on the first ``num_images`` readable images of ``dataset``."""
    if num_images < 1:
        raise ValueError(f"--num-images must be positive, got {num_images}")
    samples = []
    for k in range(len(dataset)):
        sample = dataset[k]
        if sample is not None:  # None: an unreadable image, skipped
            samples.append(sample)
        if len(samples) == num_images:
            break
    if not samples:
        raise ValueError("no readable validation image to draw")
    images = [image for image, _ in samples]
    device = next(detector.parameters()).device
    outputs, maps = stage_maps(detector, [im.to(device) for im in images])
    names = {int(c["id"]): str(c["name"]) for c in getattr(dataset, "categories", [])}
    return plot_detections(images, outputs, maps, path, targets=[t for _, t in samples], class_names=names,
                           score_threshold=score_threshold, suptitle=title)
