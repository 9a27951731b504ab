"""Schedules of LAUDNet training: the learning rate, the Gumbel temperature and noise, the FLOPs target and the
per-block FLOPs bounds."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

TEMPERATURE_KINDS = ("exp", "linear", "cosine")
NOISE_KINDS = ("constant", "linear", "cosine")
# How the FLOPs-target term reduces over the batch (see `laudnet.train.losses.LaudLoss`).
FLOPS_REDUCTIONS = ("batch", "sample")


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Multiplier of the base lr at optimiser step ``step``: linear warm-up, then cosine down to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    p = min(max((step - warmup_steps) / span, 0.0), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))


def group_lr(group: str, lr: float, masker_lr_mult: float) -> float:
    """Initial lr of a parameter group: ``lr`` for the backbone, ``masker_lr_mult`` × ``lr`` for the maskers (the
    groups ``masker`` and ``masker_no_decay`` of `laudnet.train.build.build_optimizer`)."""
    return lr * (masker_lr_mult if group.startswith("masker") else 1.0)


@dataclass(frozen=True)
class LRSchedule:
    """The per-iteration learning rate of a run (the official recipe): linear warm-up over ``warmup_steps``, then
    cosine from ``base_lr`` down to ``min_lr`` at ``total_steps``; the maskers at ``masker_lr_mult`` × that.

    Attributes:
        base_lr: the backbone lr after warm-up.
        total_steps: optimiser steps of the whole run.
        warmup_steps: steps of the linear warm-up (0: none).
        min_lr: the backbone lr at the end.
        masker_lr_mult: the maskers' lr over the backbone's.
    """

    base_lr: float
    total_steps: int
    warmup_steps: int = 0
    min_lr: float = 0.0
    masker_lr_mult: float = 1.0

    def factor(self, step: int) -> float:
        """Multiplier of every group's initial lr at optimiser step ``step``."""
        return lr_factor(step, self.total_steps, self.warmup_steps, self.min_lr / self.base_lr)

    def lr(self, step: int, group: str = "backbone") -> float:
        """The lr of parameter group ``group`` at optimiser step ``step``."""
        return group_lr(group, self.base_lr, self.masker_lr_mult) * self.factor(step)

    def scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        """A scheduler that sets every group of ``optimizer`` (built at the groups' initial lrs) to this schedule;
        call its ``step()`` after every optimiser step. Its state dict holds only the step count."""
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.factor(step))


def gumbel_temperature(
    step: int, total_steps: int, t0: float = 5.0, t_last: float = 0.1, kind: str = "exp"
) -> float:
    """Temperature at a global iteration, decaying from t0 to t_last over the whole run (updated every iteration).

    ``exp``: t0 · (t_last / t0)^(step / total); ``linear``; ``cosine``.
    """
    if kind not in TEMPERATURE_KINDS:
        raise ValueError(f"unknown temperature schedule {kind!r}; choose from: {', '.join(TEMPERATURE_KINDS)}")
    if t0 <= 0 or t_last <= 0:
        raise ValueError(f"temperatures must be positive, got t0={t0}, t_last={t_last}")
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    p = min(max(step / total_steps, 0.0), 1.0)
    if kind == "exp":
        return t0 * (t_last / t0) ** p
    if kind == "linear":
        return t0 + (t_last - t0) * p
    return t_last + (t0 - t_last) * 0.5 * (1 + math.cos(math.pi * p))


def gate_noise(step: int, total_steps: int, kind: str = "constant", end: float = 0.0) -> float:
    """Scale of the Gumbel noise of the training decisions at a global iteration.

    ``constant``: 1 throughout (the Gumbel-softmax of the paper); ``linear`` and ``cosine`` decay from 1 to ``end``
    over the run, so that the last iterations train on (nearly) the deterministic decisions of eval.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown gate-noise schedule {kind!r}; choose from: {', '.join(NOISE_KINDS)}")
    if not 0 <= end <= 1:
        raise ValueError(f"the final gate noise must be in [0, 1], got {end}")
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if kind == "constant":
        return 1.0
    p = min(max(step / total_steps, 0.0), 1.0)
    if kind == "linear":
        return 1.0 + (end - 1.0) * p
    return end + (1.0 - end) * 0.5 * (1 + math.cos(math.pi * p))


def flops_target(epoch: float, total_epochs: int, target: float, warmup: float = 0.0) -> float:
    """The FLOPs target at an epoch: 1 at the start, falling linearly to ``target`` over the first ``warmup`` fraction
    of the run, ``target`` after it (``warmup`` 0: the target from the first step, the paper). Starting from a static
    network, the maskers then take compute away gradually instead of halving it in the first steps."""
    if not 0 <= warmup <= 1:
        raise ValueError(f"target warm-up must be a fraction of the run in [0, 1], got {warmup}")
    if warmup == 0:
        return target
    p = min(max(epoch / (warmup * total_epochs), 0.0), 1.0)
    return 1.0 - p * (1.0 - target)


def flops_bounds(
    epoch: int, total_epochs: int, target: float, fraction: float = 0.33, final: tuple[float, float] = (0.0, 1.0)
) -> tuple[float, float]:
    """(lower, upper) bounds on each block's FLOPs ratio at an epoch.

    At epoch 0 both equal the target (every block is pinned to t); they relax as cos²(π/2 · epoch / (fraction · E))
    and reach ``final`` at epoch fraction·E. With the paper's final bounds [0, 1] the term then vanishes; narrower
    final bounds keep every block executing for some inputs and skipping for others.
    """
    if total_epochs <= 0:
        raise ValueError(f"total_epochs must be positive, got {total_epochs}")
    lo, hi = final
    if not 0 <= lo <= min(target, hi) or not max(target, lo) <= hi <= 1:
        raise ValueError(f"final block bounds must satisfy 0 <= lower <= target <= upper <= 1, got {final}")
    p = min(max(epoch / (fraction * total_epochs), 0.0), 1.0)
    progress = math.cos(math.pi / 2 * p) ** 2
    return lo + progress * (target - lo), hi - progress * (hi - target)
