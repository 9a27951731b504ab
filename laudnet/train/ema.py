"""An exponential moving average of a model's weights, for validation and deployment (Polyak averaging; the update of
timm's ``ModelEmaV3``).

After every optimiser step each floating-point tensor of the model's state — parameters and buffers alike, so BN
running statistics, the maskers' parameters and their input normalisation's statistics are averaged too — moves
towards the trained model: ``ema = decay · ema + (1 − decay) · model``. Integer buffers (BN's
``num_batches_tracked``) are copied. With ``warmup`` the decay of update ``k`` (0-based) is
``min(decay, (1 + k) / (10 + k))``, so the average forgets its starting weights quickly early in a run.

The average is ``1 / (1 − decay)`` steps long (0.999: the last ~1000 steps); a run shorter than a few of those
without warm-up keeps much of its initial weights in it (0.999 over 750 steps: 0.999⁷⁵⁰ = 47 % of them).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma:
    """A frozen copy of a model that :meth:`update` moves towards the trained model after each optimiser step.

    Args:
        model: the model trained (not a DDP wrapper); the average starts as a copy of it, on its device.
        decay: weight of the average in each update, in (0, 1).
        warmup: warm the decay up as ``min(decay, (1 + k) / (10 + k))`` at update ``k``.

    Attributes:
        module: the averaged model, in eval mode and without gradients (validate, save or deploy it).
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = warmup
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """The decay of update ``step`` (the number of updates before it)."""
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Move the average towards ``model`` (the same architecture) with the decay of update ``step``."""
        averaged, current = [], []
        for (name, ema_value), (other, value) in zip(self.module.state_dict().items(), model.state_dict().items(),
                                                      strict=True):
            if name != other:
                raise ValueError(f"EMA and model differ: {name!r} against {other!r}")
            if ema_value.is_floating_point():
                averaged.append(ema_value)
                current.append(value)
            else:
                ema_value.copy_(value)
        torch._foreach_lerp_(averaged, current, 1.0 - self.decay_at(step))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state_dict)
