"""Adaptivity, measured: how much a trained dynamic network's decisions depend on its input.

A dynamic network can meet its FLOPs target blindly, computing the same patches, blocks or channel groups for every
image. Two measures tell how far it does not:

- **Localisation lift** (spatial paradigm, on data with item boxes such as ``fashion-canvas``, or object boxes of
  detection sets, several per image, where a cell counts as on an object when it overlaps any of them): per stage,
  ``P(patch computed | patch overlaps the item box) / P(patch computed | patch entirely outside it)``, pooled over the
  stage's blocks and the images. The patches are the cells of each block's coarse mask ``masks["patch"]``; a cell
  ``(i, j)`` of patch size S on an Ho×Wo output map covers output rows ``[i·S, min((i+1)·S, Ho))`` (columns alike),
  i.e. input rows ``[i·S·H/Ho, min((i+1)·S, Ho)·H/Ho)``. 1.0 means the masks are blind to where the item is.
- **Execution shares** (spatial, layer and channel): per *unit*, the share of images that execute it. A unit is a
  block for layer skipping (its 1×1 patch mask) and for spatial models (executed = at least one patch computed), and
  a block's channel group for channel skipping (``masks["channel"]``). A unit executed by between
  :data:`ADAPTIVE_LOW` and :data:`ADAPTIVE_HIGH` of the images (both included) is *adaptive*. Per-class execution
  rates give, per block, the mean decision (fraction of its cells or groups computed, or 0/1 for a layer) per true
  class.

:class:`AdaptivityMeter` accumulates counts batch by batch from ``collect_info(model)``, the labels and optional boxes.
Its sums are tensors on the masks' device (no host synchronisation per batch); under DDP every rank reduces them with
one all-reduce (:meth:`AdaptivityMeter.all_reduce`) before :meth:`AdaptivityMeter.result`. ViT blocks (token, head and
layer masks) are not measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from laudnet.info import DynamicInfo
from laudnet.info import dynamic_blocks as _dynamic_blocks

# A unit executed by at least ADAPTIVE_LOW and at most ADAPTIVE_HIGH of the images is adaptive.
ADAPTIVE_LOW = 0.10
ADAPTIVE_HIGH = 0.90
# Masks are exact 0/1 in eval mode (argmax gates); a decision counts as "computed" above this value.
_ON = 0.5


def stage_of(block_name: str) -> str:
    """The stage of a block: the first component of its short name (``layer2.0`` → ``s2``)."""
    from laudnet.train.viz import short_block_name

    return short_block_name(block_name).split(".")[0]


def patch_sizes(model: nn.Module) -> list[int | None]:
    """Spatial patch size S of every dynamic block of ``model`` in forward order (None where it has none)."""
    out = []
    for _, block in _dynamic_blocks(model):
        g = getattr(block, "granularity", None)
        out.append(g if getattr(block, "paradigm", None) == "spatial" else None)
    return out


def _decisions(info: DynamicInfo) -> tuple[str, Tensor, Tensor] | None:
    """``(unit, executed (B, U) bool, per-sample executed fraction (B,))`` of a block, or None (nothing to measure)."""
    if "channel" in info.masks:
        groups = info.masks["channel"].float()
        return "group", groups.gt(_ON), groups.mean(1)
    if "patch" in info.masks:
        cells = info.masks["patch"].float().amax(1).flatten(1)  # (B, gh·gw); several mask groups: any computes
        return "block", cells.gt(_ON).any(1, keepdim=True), cells.mean(1)
    return None


def cells_overlapping_boxes(
    boxes: Tensor, grid: tuple[int, int], out_hw: tuple[int, int], patch: int, image_hw: tuple[int, int]
) -> Tensor:
    """Which mask cells overlap each box.

    Args:
        boxes: ``(B, 4)`` boxes ``(x0, y0, x1, y1)``, end exclusive, in input-image pixels.
        grid: the mask grid ``(gh, gw)``.
        out_hw: the block's output map ``(Ho, Wo)``.
        patch: the patch size S on the output map.
        image_hw: the input image ``(H, W)``.

    Returns:
        ``(B, gh, gw)`` bool: the cell's input-image region and the box share a region of positive area.
    """
    boxes = boxes.to(torch.float64)

    def spans(n_cells: int, out: int, size: int, device) -> tuple[Tensor, Tensor]:
        i = torch.arange(n_cells, device=device, dtype=torch.float64)
        scale = size / out
        return i * patch * scale, torch.clamp((i + 1) * patch, max=out) * scale

    r0, r1 = spans(grid[0], out_hw[0], image_hw[0], boxes.device)
    c0, c1 = spans(grid[1], out_hw[1], image_hw[1], boxes.device)
    x0, y0, x1, y1 = (boxes[:, k : k + 1] for k in range(4))
    rows = (r0[None] < y1) & (y0 < r1[None])  # (B, gh)
    cols = (c0[None] < x1) & (x0 < c1[None])  # (B, gw)
    return rows[:, :, None] & cols[:, None, :]


@dataclass
class StageLift:
    """Localisation of one stage's spatial masks, pooled over its blocks and the images.

    Attributes:
        stage: ``s1``, ``s2``, ...
        blocks: spatial blocks pooled.
        cells_in, cells_out: mask cells overlapping the item box / entirely outside it (over blocks and images).
        computed_in, computed_out: of those, the cells computed.
        p_in, p_out: ``computed / cells`` on each side; None without cells on that side.
        lift: ``p_in / p_out``; ``math.inf`` when ``p_out = 0 < p_in`` (only the item is computed); None when it is
            undefined (no cell on one side, or nothing computed on either). ``to_dict`` writes inf as ``"inf"`` (JSON
            has no infinity; ``float("inf")`` reads it back).
    """

    stage: str
    blocks: int
    cells_in: int
    cells_out: int
    computed_in: int
    computed_out: int
    p_in: float | None
    p_out: float | None
    lift: float | None


@dataclass
class BlockExecution:
    """Execution of one block's units over the images.

    Attributes:
        name: the block's qualified name.
        unit: ``block`` (spatial, layer: one unit) or ``group`` (channel: one unit per channel group).
        shares: per unit, the share of images that execute it (spatial: at least one patch computed).
        class_rates: per class, the mean decision of the block over the images of that class (fraction of its cells
            or groups computed; 0/1 per image for a layer); None for a class without images.
    """

    name: str
    unit: str
    shares: list[float]
    class_rates: list[float | None]

    @property
    def share(self) -> float:
        """Mean share over the block's units."""
        return sum(self.shares) / len(self.shares)

    @property
    def adaptive(self) -> int:
        """Units executed by between ADAPTIVE_LOW and ADAPTIVE_HIGH of the images."""
        return sum(ADAPTIVE_LOW <= s <= ADAPTIVE_HIGH for s in self.shares)


@dataclass
class AdaptivityResult:
    """How much the decisions of a dynamic network depend on the input; see the module docstring.

    Attributes:
        paradigm: the blocks' paradigm (``spatial``, ``layer``, ``channel``; ``mixed`` if they differ).
        num_images: images measured.
        unit: ``block`` or ``group`` (what ``adaptive_*`` count).
        thresholds: ``(ADAPTIVE_LOW, ADAPTIVE_HIGH)``.
        adaptive_units, total_units: units executed by between the thresholds of the images, and all units.
        adaptive_fraction: ``adaptive_units / total_units``.
        blocks: per measured block, its units' shares and per-class rates.
        stages: per stage, the localisation lift (spatial models on data with boxes; empty otherwise).
    """

    paradigm: str
    num_images: int
    unit: str
    thresholds: tuple[float, float]
    adaptive_units: int
    total_units: int
    adaptive_fraction: float
    blocks: list[BlockExecution] = field(default_factory=list)
    stages: list[StageLift] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: an infinite lift becomes the string ``"inf"``."""
        out = asdict(self)
        out["thresholds"] = list(self.thresholds)
        for stage in out["stages"]:
            if stage["lift"] is not None and math.isinf(stage["lift"]):
                stage["lift"] = "inf"
        return out


class AdaptivityMeter:
    """Accumulates execution and localisation counts batch by batch; see the module docstring.

    Args:
        num_classes: classes of the labels (for the per-class rates).
        patch_sizes: per dynamic block, in ``collect_info`` order, its spatial patch size S (:func:`patch_sizes` of
            the model). Needed for the lift where S is ambiguous from the grid (e.g. Ho = 7 with 2 cells: S = 4, 5
            or 6); without it S = ceil(Ho / gh), exact when S divides Ho.

    Example::

        meter = AdaptivityMeter(10, patch_sizes(model))
        for images, labels, boxes in loader:
            model(images)
            meter.update(model.collect_info(), labels, boxes, image_hw=images.shape[-2:])
        meter.all_reduce(dist_utils.all_reduce_sum)  # under DDP
        result = meter.result()
    """

    def __init__(self, num_classes: int, patch_sizes: Sequence[int | None] | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.patch_sizes = None if patch_sizes is None else list(patch_sizes)
        self.names: list[str] = []  # measured blocks
        self.units: list[str] = []
        self.paradigms: list[str] = []
        self._index: list[int] = []  # position of each measured block in collect_info order
        self._widths: list[int] = []  # units of each measured block
        self._state: dict[str, Tensor] | None = None

    @property
    def measured(self) -> bool:
        """Whether any block with decisions has been seen (False for static models and before any update)."""
        return bool(self.names)

    def _start(self, infos: Sequence[DynamicInfo], decisions: list, device: torch.device) -> None:
        for k, (info, d) in enumerate(zip(infos, decisions, strict=True)):
            if d is not None:
                self._index.append(k)
                self.names.append(info.name)
                self.units.append(d[0])
                self.paradigms.append(info.paradigm)
                self._widths.append(d[1].shape[1])
        n_units = sum(self._widths)
        z = {"dtype": torch.float64, "device": device}
        self._state = {
            "images": torch.zeros(1, **z),
            "executed": torch.zeros(n_units, **z),  # images executing each unit, blocks concatenated
            "class_images": torch.zeros(self.num_classes, **z),
            "class_sums": torch.zeros(len(self.names), self.num_classes, **z),
            # per block: cells in, computed in, cells out, computed out (spatial blocks with boxes only)
            "cells": torch.zeros(len(self.names), 4, **z),
        }

    def update(
        self,
        infos: Sequence[DynamicInfo],
        labels: Tensor,
        boxes: Tensor | Sequence[Tensor] | None = None,
        image_hw: Sequence[int] | None = None,
        image_sizes: Sequence[Sequence[int]] | None = None,
    ) -> None:
        """Add one batch.

        Args:
            infos: ``collect_info(model)`` after the batch's forward.
            labels: ``(B,)`` true classes.
            boxes: ``(B, 4)`` item boxes ``(x0, y0, x1, y1)`` (end exclusive, input pixels), or per image an
                ``(N_i, 4)`` tensor of object boxes (a cell is on an object when it overlaps any), or None.
            image_hw: the input's ``(H, W)``; needed with boxes.
            image_sizes: per image, its ``(h, w)`` inside the input when images were padded to one batch (detection:
                bottom and right); cells entirely in the padding are not counted in the lift. None: no padding.
        """
        decisions = [_decisions(i) for i in infos]
        if self._state is None:
            masks = [m for i in infos for m in i.masks.values()]
            self._start(infos, decisions, masks[0].device if masks else labels.device)
        names = [infos[k].name for k in self._index] if len(infos) > max(self._index, default=-1) else None
        if names != self.names:
            raise ValueError(f"the model's blocks changed between batches: {names} vs {self.names}")
        if boxes is not None and image_hw is None:
            raise ValueError("boxes need image_hw, the input's (height, width)")
        state = self._state
        device = state["images"].device
        if boxes is not None:
            boxes = boxes.to(device) if isinstance(boxes, Tensor) else [
                torch.as_tensor(b, dtype=torch.float64, device=device).reshape(-1, 4) for b in boxes]
            if len(boxes) != len(labels):
                raise ValueError(f"{len(boxes)} box sets for a batch of {len(labels)} images")
        labels = labels.to(device).long()
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must be in [0, {self.num_classes}), got {labels.min()}..{labels.max()}")
        onehot = F.one_hot(labels, self.num_classes).to(torch.float64)  # (B, C)
        state["images"] += len(labels)
        state["class_images"] += onehot.sum(0)
        executed, cells = [], []
        for b, k in enumerate(self._index):
            _, run, frac = decisions[k]
            if run.shape[1] != self._widths[b]:
                raise ValueError(f"block {self.names[b]!r} changed from {self._widths[b]} to {run.shape[1]} units")
            executed.append(run.to(torch.float64).sum(0))
            state["class_sums"][b] += frac.to(torch.float64) @ onehot
            info = infos[k]
            if boxes is not None and info.paradigm == "spatial" and "patch" in info.masks:
                cells.append((b, self._cell_counts(info, k, boxes, tuple(image_hw), image_sizes)))
        state["executed"] += torch.cat(executed) if executed else 0
        for b, counts in cells:
            state["cells"][b] += counts

    def _cell_counts(self, info: DynamicInfo, k: int, boxes: Tensor | list[Tensor], image_hw: tuple[int, int],
                     image_sizes: Sequence[Sequence[int]] | None) -> Tensor:
        patch = info.masks["patch"]
        grid = tuple(patch.shape[-2:])
        out_hw = tuple(info.masks["pixel"].shape[-2:]) if "pixel" in info.masks else grid
        s = self.patch_sizes[k] if self.patch_sizes is not None and k < len(self.patch_sizes) else None
        if s is None:
            s = math.ceil(out_hw[0] / grid[0])
        if (math.ceil(out_hw[0] / s), math.ceil(out_hw[1] / s)) != grid:
            raise ValueError(f"block {info.name!r}: patch size {s} on a {out_hw} map gives no {grid} mask grid")
        if isinstance(boxes, Tensor):
            inside = cells_overlapping_boxes(boxes, grid, out_hw, s, image_hw)
        else:  # several boxes per image: on an object = overlapping any
            inside = torch.stack([cells_overlapping_boxes(b, grid, out_hw, s, image_hw).any(0) for b in boxes])
        computed = patch.float().amax(1).gt(_ON)
        outside = ~inside
        if image_sizes is not None:  # only the cells that overlap the image itself, not its padding
            extents = torch.tensor([[0, 0, w, h] for h, w in image_sizes], dtype=torch.float64, device=inside.device)
            valid = cells_overlapping_boxes(extents, grid, out_hw, s, image_hw)
            inside, outside = inside & valid, outside & valid
        return torch.stack(
            [inside.sum(), (computed & inside).sum(), outside.sum(), (computed & outside).sum()]
        ).to(torch.float64)

    def all_reduce(self, reduce_sum: Callable[[Tensor], Tensor]) -> None:
        """Replace the counts by their sum over the processes (``reduce_sum``: e.g. ``dist_utils.all_reduce_sum``).

        A collective: every rank calls it (with the same model, so the same state shapes).
        """
        if self._state is None:
            return
        keys = list(self._state)
        flat = reduce_sum(torch.cat([self._state[k].flatten() for k in keys]))
        for k, part in zip(keys, flat.split([self._state[k].numel() for k in keys]), strict=True):
            self._state[k] = part.view_as(self._state[k]).clone()

    def result(self) -> AdaptivityResult | None:
        """The measures so far; None when no block made decisions (a static model) or before any update."""
        if self._state is None or not self.names:
            return None
        state = {k: v.detach().cpu() for k, v in self._state.items()}
        n = int(state["images"][0])
        if n == 0:
            return None
        executed = (state["executed"] / n).tolist()
        class_images = state["class_images"].tolist()
        blocks, start = [], 0
        for b, name in enumerate(self.names):
            width = self._widths[b]
            sums = state["class_sums"][b].tolist()
            rates = [s / c if c > 0 else None for s, c in zip(sums, class_images, strict=True)]
            blocks.append(BlockExecution(name, self.units[b], executed[start : start + width], rates))
            start += width
        adaptive = sum(blk.adaptive for blk in blocks)
        total = sum(len(blk.shares) for blk in blocks)
        units = set(self.units)
        paradigms = set(self.paradigms)
        return AdaptivityResult(
            paradigm=paradigms.pop() if len(paradigms) == 1 else "mixed",
            num_images=n,
            unit=units.pop() if len(units) == 1 else "mixed",
            thresholds=(ADAPTIVE_LOW, ADAPTIVE_HIGH),
            adaptive_units=adaptive,
            total_units=total,
            adaptive_fraction=adaptive / total,
            blocks=blocks,
            stages=self._stage_lifts(state["cells"]),
        )

    def _stage_lifts(self, cells: Tensor) -> list[StageLift]:
        stages: dict[str, list[int]] = {}
        for b, name in enumerate(self.names):
            if float(cells[b].sum()) > 0:
                stages.setdefault(stage_of(name), []).append(b)
        out = []
        for stage, members in stages.items():
            c_in, k_in, c_out, k_out = (int(v) for v in cells[members].sum(0).tolist())
            p_in = k_in / c_in if c_in else None
            p_out = k_out / c_out if c_out else None
            out.append(StageLift(stage, len(members), c_in, c_out, k_in, k_out, p_in, p_out, lift_ratio(p_in, p_out)))
        return out


def lift_ratio(p_in: float | None, p_out: float | None) -> float | None:
    """``p_in / p_out``: inf when only the inside is computed, None when undefined (a side without cells, or 0 / 0)."""
    if p_in is None or p_out is None:
        return None
    if p_out == 0:
        return math.inf if p_in > 0 else None
    return p_in / p_out
