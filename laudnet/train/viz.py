"""Plots of what a trained dynamic network does: per-block activation rates and spatial masks over input images.

- :func:`plot_activation_rates`: one bar per block, one colour per run (paradigms side by side), the target as a line.
- :func:`spatial_mask_maps` + :func:`plot_mask_overlays`: for a spatial model, each stage's execution map (mean of
  its blocks' pixel masks, upsampled to the input) drawn over the input image; on ``fashion-canvas`` the item's box too,
  which shows whether the masks found the item.
- :func:`plot_execution_shares`: histogram of the per-block (per-group) execution shares, one panel per run, with the
  adaptive band (10-90 % of the images) marked; :func:`plot_stage_lifts`: the localisation lift per stage of spatial
  runs (see :mod:`laudnet.train.adaptivity`).

Matplotlib runs with the Agg backend (files only, no display needed).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from laudnet.train.adaptivity import AdaptivityResult


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def short_block_name(name: str) -> str:
    """``trunk_output.block2.block2-1`` → ``s2.1``; ``layer3.4`` → ``s3.4`` (stage.block, both 1-based stage)."""
    parts = name.split(".")
    if parts[0] == "trunk_output" and len(parts) == 3:
        stage = parts[1].removeprefix("block")
        return f"s{stage}.{parts[2].rsplit('-', 1)[-1]}"
    if parts[0].startswith("layer") and len(parts) == 2:
        return f"s{parts[0].removeprefix('layer')}.{parts[1]}"
    return name


@dataclass
class RateSeries:
    """The activation rates of one run, for :func:`plot_activation_rates`.

    Attributes:
        label: legend entry (e.g. ``spatial (t=0.5)``).
        block_names: blocks in forward order.
        rates: mean activation rate of each block.
        flops_ratio: whole-network dynamic / dense FLOPs (shown in the legend).
    """

    label: str
    block_names: list[str]
    rates: list[float]
    flops_ratio: float | None = None


def plot_activation_rates(
    series: Sequence[RateSeries], path: str | os.PathLike, target: float | None = None, title: str | None = None
) -> Path:
    """Bar chart of per-block activation rates, runs side by side.

    Args:
        series: one entry per run; runs with other block lists are drawn on the union of blocks in order.
        path: the PNG to write.
        target: draw the target ratio as a dashed line.
        title: figure title.

    Returns:
        The path written.
    """
    if not series:
        raise ValueError("plot_activation_rates needs at least one run")
    plt = _pyplot()
    names: list[str] = []
    for s in series:
        names += [n for n in s.block_names if n not in names]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(names) * max(1, len(series)) ** 0.5 + 2), 3.6))
    for k, s in enumerate(series):
        xs = [names.index(n) + (k - (len(series) - 1) / 2) * width for n in s.block_names]
        label = s.label + (f" (network {s.flops_ratio:.2f})" if s.flops_ratio is not None else "")
        ax.bar(xs, s.rates, width=width * 0.95, label=label)
    if target is not None:
        ax.axhline(target, color="k", linestyle="--", linewidth=1, label=f"target {target:g}")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([short_block_name(n) for n in names], rotation=60, fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("activation rate (dynamic / dense FLOPs)")
    ax.set_xlabel("block (stage.index)")
    ax.set_title(title or "Per-block activation rate")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


@torch.no_grad()
def spatial_mask_maps(model: nn.Module, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-stage execution maps of a spatial model on ``images``.

    Args:
        model: a LAUD model with paradigm ``spatial`` (eval mode is used).
        images: ``(B, 3, H, W)``.

    Returns:
        ``(maps, rates, logits)``: maps ``(B, n_stages, H, W)`` in [0, 1] (mean over each stage's blocks of the pixel
        masks, nearest-upsampled to the input), per-sample per-stage FLOPs rates ``(B, n_stages)`` and the logits.
    """
    if getattr(model, "paradigm", None) != "spatial":
        raise ValueError(f"spatial masks need a spatial model, got paradigm {getattr(model, 'paradigm', None)!r}")
    was_training = model.training
    model.eval()
    logits = model(images)
    infos = model.collect_info()
    maps, rates, start = [], [], 0
    for stage in model.stages():
        stage_infos = infos[start : start + len(stage)]
        start += len(stage)
        pix = [F.interpolate(i.masks["pixel"].float(), size=images.shape[-2:], mode="nearest") for i in stage_infos]
        maps.append(torch.stack(pix).mean(0)[:, 0])
        dyn = torch.stack([i.flops for i in stage_infos]).sum(0)
        rates.append(dyn / sum(i.dense_flops for i in stage_infos))
    model.train(was_training)
    return torch.stack(maps, 1), torch.stack(rates, 1), logits


def plot_mask_overlays(
    images: Tensor,
    maps: Tensor,
    path: str | os.PathLike,
    *,
    boxes: Sequence[Sequence[int] | None] | None = None,
    titles: Sequence[str] | None = None,
    stage_rates: Tensor | None = None,
    suptitle: str | None = None,
) -> Path:
    """Grid of inputs (rows) with each stage's execution map overlaid (columns).

    Args:
        images: ``(B, H, W)`` grey or ``(B, 3, H, W)`` RGB images in [0, 1].
        maps: ``(B, n_stages, H, W)`` execution maps in [0, 1].
        path: the PNG to write.
        boxes: per image an ``(x0, y0, x1, y1)`` box (end exclusive) drawn on every panel, or None.
        titles: per image a label for the first column.
        stage_rates: ``(B, n_stages)`` FLOPs rates shown in the panel titles.
        suptitle: figure title.

    Returns:
        The path written.
    """
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    b, n_stages = maps.shape[:2]
    fig, axes = plt.subplots(b, n_stages + 1, figsize=(1.9 * (n_stages + 1), 1.95 * b + 0.4), squeeze=False)
    for r in range(b):
        img = images[r]
        shown = img.permute(1, 2, 0).clamp(0, 1).numpy() if img.dim() == 3 else img.clamp(0, 1).numpy()
        cmap = None if img.dim() == 3 else "gray"
        for c in range(n_stages + 1):
            ax = axes[r][c]
            ax.imshow(shown, cmap=cmap, vmin=0, vmax=1)
            if c == 0:
                ax.set_title(titles[r] if titles else "input", fontsize=7)
            else:
                # Red where the stage computes; what stays grey was skipped (output = shortcut).
                overlay = torch.zeros(*maps.shape[-2:], 4)
                overlay[..., 0], overlay[..., 1], overlay[..., 2] = 1.0, 0.15, 0.1
                overlay[..., 3] = 0.65 * maps[r, c - 1]
                ax.imshow(overlay.numpy())
                rate = f" {float(stage_rates[r, c - 1]):.2f}" if stage_rates is not None else ""
                ax.set_title(f"stage {c}{rate}", fontsize=7)
            if boxes is not None and boxes[r] is not None:
                x0, y0, x1, y1 = boxes[r]
                ax.add_patch(
                    Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="lime", linewidth=1.2)
                )
            ax.set_xticks([])
            ax.set_yticks([])
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    return _save(fig, path, dpi=110)


def _save(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    plt = _pyplot()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_execution_shares(
    runs: Sequence[tuple[str, AdaptivityResult]], path: str | os.PathLike, title: str | None = None, bins: int = 20
) -> Path:
    """Histogram of the execution shares of every unit (block or channel group), one panel per run.

    A unit's share is the fraction of images that execute it; the adaptive band (the result's thresholds, 10-90 %) is
    shaded, and each panel's title gives the adaptive fraction. A blind network piles up at 0 and 1.

    Args:
        runs: ``(label, adaptivity)`` per run.
        path: the PNG to write.
        title: figure title.
        bins: histogram bins over [0, 1].

    Returns:
        The path written.
    """
    if not runs:
        raise ValueError("plot_execution_shares needs at least one run")
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(runs), figsize=(3.6 * len(runs) + 0.6, 3.2), squeeze=False, sharey=False)
    for ax, (label, a) in zip(axes[0], runs, strict=True):
        shares = [s for b in a.blocks for s in b.shares]
        low, high = a.thresholds
        ax.axvspan(low, high, color="tab:green", alpha=0.12)
        ax.hist(shares, bins=bins, range=(0.0, 1.0), color="tab:blue", edgecolor="white")
        for t in (low, high):
            ax.axvline(t, color="tab:green", linestyle="--", linewidth=1)
        units = "blocks" if a.unit == "block" else "channel groups" if a.unit == "group" else "units"
        ax.set_title(f"{label}\n{a.adaptive_units}/{a.total_units} {units} adaptive ({a.adaptive_fraction:.0%}) = "
                     f"in the green band {low:.0%}-{high:.0%}", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of images executing the unit")
        ax.set_ylabel(units)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def plot_stage_lifts(
    runs: Sequence[tuple[str, AdaptivityResult]], path: str | os.PathLike, title: str | None = None
) -> Path:
    """Bar chart of the localisation lift per stage, runs side by side, with a line at 1.0 (blind masks).

    An infinite lift (nothing computed outside the boxes) is drawn at the top of the axis and marked ``inf``; an
    undefined one (``None``) is marked ``n/a``.

    Args:
        runs: ``(label, adaptivity)`` per spatial run whose ``stages`` are filled (data with boxes).
        path: the PNG to write.
        title: figure title.

    Returns:
        The path written.
    """
    runs = [(label, a) for label, a in runs if a.stages]
    if not runs:
        raise ValueError("plot_stage_lifts needs a run with localisation lifts (a spatial model on data with boxes)")
    plt = _pyplot()
    stages: list[str] = []
    for _, a in runs:
        stages += [s.stage for s in a.stages if s.stage not in stages]
    finite = [float(s.lift) for _, a in runs for s in a.stages if s.lift is not None and s.lift != float("inf")]
    top = max([1.5, *finite]) * 1.2
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(stages) * len(runs) ** 0.5 + 2), 3.4))
    for k, (label, a) in enumerate(runs):
        xs = [stages.index(s.stage) + (k - (len(runs) - 1) / 2) * width for s in a.stages]
        heights = [0.0 if s.lift is None else min(float(s.lift), top) for s in a.stages]
        bars = ax.bar(xs, heights, width=width * 0.95, label=label)
        for bar, s in zip(bars, a.stages, strict=True):
            if s.lift == float("inf"):
                bar.set_hatch("//")
            text = "n/a" if s.lift is None else "inf" if s.lift == float("inf") else f"{s.lift:.2f}"
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), text, ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color="k", linestyle="--", linewidth=1, label="1 = blind")
    ax.set_xticks(range(len(stages)))
    ax.set_xticklabels(stages)
    ax.set_ylim(0, top * 1.3)  # room for the labels and the legend
    ax.set_xlabel("stage")
    ax.set_ylabel("lift = P(computed | on item) / P(computed | off item)", fontsize=7)
    ax.set_title(title or "Localisation lift of the spatial masks", fontsize=9)
    ax.legend(fontsize=8, loc="upper left", ncols=len(runs) + 1)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
