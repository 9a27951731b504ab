"""Schedules of LAUDNet training: the Gumbel temperature and the per-block FLOPs bounds."""

from __future__ import annotations

import math

TEMPERATURE_KINDS = ("exp", "linear", "cosine")


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


def flops_bounds(epoch: int, total_epochs: int, target: float, fraction: float = 0.33) -> tuple[float, float]:
    """(lower, upper) bounds on each block's FLOPs ratio at an epoch.

    At epoch 0 both equal the target (every block is pinned to t); they relax as cos²(π/2 · epoch / (fraction · E))
    and reach [0, 1] at epoch fraction·E, after which the bounds term vanishes.
    """
    if total_epochs <= 0:
        raise ValueError(f"total_epochs must be positive, got {total_epochs}")
    p = min(max(epoch / (fraction * total_epochs), 0.0), 1.0)
    progress = math.cos(math.pi / 2 * p) ** 2
    return progress * target, 1 - progress * (1 - target)
