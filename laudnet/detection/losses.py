"""The detection objective of LAUDNet (Han et al., TPAMI 2024): the detector's own losses plus
λ·(F_dyn / F_dense − t)² over the backbone.

F counts the backbone only (stem and dynamic blocks, maskers included in F_dyn; no FPN, no heads), per image, at the
size of the batch the backbone ran on (the detection transform's resized and padded images), from the blocks'
records of that forward (`LaudBackboneBody.dynamic_flops`, the classification models' own count). The official
detection configs use λ = 1 with no per-block bounds and no distillation; the squared-ratio term is the
classification objective's `laudnet.train.losses.flops_target_loss`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from laudnet.train.losses import flops_target_loss
from laudnet.train.schedules import FLOPS_REDUCTIONS


def backbone_flops_loss(
    model: nn.Module, target: float, flops_reduction: str = "batch"
) -> tuple[Tensor, dict[str, float]]:
    """(F_dyn / F_dense − t)² of the detector's backbone in its last forward, and what it measured.

    Args:
        model: a detector from `create_detector` (or anything whose ``backbone.body`` is a `LaudBackboneBody`).
        target: t in (0, 1].
        flops_reduction: ``batch`` (the batch-mean ratio meets t) or ``sample`` (every image's ratio is pulled to t).

    Returns:
        The loss (0 for a static backbone) and logs: ``flops_ratio`` (batch mean) and the per-image
        ``backbone_gmacs_dense`` and ``backbone_gmacs_dynamic``.
    """
    if flops_reduction not in FLOPS_REDUCTIONS:
        raise ValueError(f"unknown FLOPs reduction {flops_reduction!r}; choose from: {', '.join(FLOPS_REDUCTIONS)}")
    body = model.backbone.body
    per_image, dense = body.dynamic_flops()
    ratio = per_image.mean() / dense
    logs = {"flops_ratio": float(ratio.detach()), "backbone_gmacs_dense": dense / 1e9,
            "backbone_gmacs_dynamic": float(per_image.detach().mean()) / 1e9}
    if body.paradigm == "static":
        return per_image.new_zeros(()), logs
    return flops_target_loss(per_image / dense if flops_reduction == "sample" else ratio, target), logs


def detection_step(
    model: nn.Module,
    images: list[Tensor],
    targets: list[dict[str, Tensor]],
    target: float | None = None,
    lambda_flops: float = 1.0,
    flops_reduction: str = "batch",
    *,
    module: nn.Module | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """One training forward of a detector: its losses plus λ·(F_dyn / F_dense − t)² of the backbone.

    The caller runs ``loss.backward()`` and the optimiser step (the model must be in training mode).

    Args:
        model: a detector from `create_detector`.
        images: the batch, ``(3, H, W)`` tensors in [0, 1] (any sizes).
        targets: torchvision detection targets (``boxes`` xyxy, ``labels``, and ``masks`` for Mask R-CNN).
        target: the backbone's target FLOPs ratio; None takes ``model.flops_target``.
        lambda_flops: λ (1 in the official detection configs).
        flops_reduction: ``batch`` or ``sample`` (see `backbone_flops_loss`).
        module: the detector itself when ``model`` wraps it (DistributedDataParallel): its backbone holds the masks
            of the forward (default: ``model``).

    Returns:
        ``(loss, logs)``: the scalar to back-propagate, and floats: every detector loss term, ``loss_detection``
        (their sum), ``loss_flops``, ``flops_ratio``, ``backbone_gmacs_dense``, ``backbone_gmacs_dynamic``, ``loss``.
    """
    module = model if module is None else module
    if not module.training:
        raise ValueError("detection_step needs the model in training mode (model.train()): in eval it predicts")
    target = getattr(module, "flops_target", None) if target is None else target
    dynamic = module.backbone.body.paradigm != "static"
    if dynamic and (target is None or not 0 < target <= 1):
        raise ValueError(f"a dynamic backbone needs a target FLOPs ratio in (0, 1], got {target!r}")
    losses = model(images, targets)
    detection = torch.stack(list(losses.values())).sum()
    flops, logs = backbone_flops_loss(module, target if dynamic else 1.0, flops_reduction)
    loss = detection + lambda_flops * flops
    out: dict[str, Any] = {k: float(v.detach()) for k, v in losses.items()}
    out.update(loss_detection=float(detection.detach()), loss_flops=float(flops.detach()), **logs,
               loss=float(loss.detach()))
    return loss, out
