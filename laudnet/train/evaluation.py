"""Evaluation of a LAUDNet classifier (Han et al., TPAMI 2024): accuracy, loss, dense and dynamic FLOPs, per-block
activation rates and how much the decisions depend on the input (:mod:`laudnet.train.adaptivity`).

Used by validation in training (:mod:`laudnet.train.task`), ``laudnet eval`` and the benchmarks.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from laudnet.train import distributed as dist_utils
from laudnet.train.adaptivity import AdaptivityMeter, AdaptivityResult, patch_sizes


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


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when ``enabled``; a no-op context elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def progress_bar(iterable, total: int, desc: str, enabled: bool):
    """``iterable`` behind a tqdm bar when ``enabled`` (bars go to stderr), else ``iterable`` itself."""
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
    for k, batch in enumerate(progress_bar(loader, total, desc, show)):
        if max_batches is not None and k >= max_batches:
            break
        images, labels = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        if channels_last and device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
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
    return _reduced(sums, rate_sums, names, meter, device)


def _reduced(
    sums: Tensor, rate_sums: Tensor | None, names: list[str], meter: AdaptivityMeter | None, device: torch.device
) -> EvalResult:
    """The result of `evaluate` from this rank's sums (images, top-1 and top-5 hits, loss, dynamic and dense FLOPs),
    per-block rate sums and adaptivity meter, reduced over the ranks (collective)."""
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
