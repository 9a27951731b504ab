"""BN recalibration: running statistics re-estimated for the decisions a trained dynamic network makes in eval.

A LAUDNet's BN running statistics are momentum averages over the last training batches, whose decisions were Gumbel
samples (and, with an EMA, averages over the statistics of other weights). :func:`recalibrate_bn` resets them and
re-estimates them as plain means over a number of batches (BN in train mode with ``momentum=None``, as in "precise
BN"), with the maskers deciding as in eval: deterministically, without noise, their input normalisation reading its
running statistics, which are left as trained (they define the thresholds the FLOPs term tuned).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from laudnet.train import distributed as dist_utils


def gate_modules(model: nn.Module) -> list[nn.Module]:
    """The modules that take a model's decisions (maskers, or ViT blocks with their gates): what
    ``set_gate_noise`` reaches."""
    return [m for m in model.modules() if hasattr(m, "override") and hasattr(m, "noise")]


def recalibrated_norms(model: nn.Module) -> list[_BatchNorm]:
    """The BN layers :func:`recalibrate_bn` re-estimates: those with running statistics, outside the maskers."""
    inside = {id(sub) for gate in gate_modules(model) for sub in gate.modules()}
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats and id(m) not in inside]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[Any], forward: Callable[[nn.Module, Any], Any]) -> int:
    """Reset the BN running statistics of ``model`` and re-estimate them over ``batches``.

    The model runs in train mode except its maskers (eval: deterministic decisions), without gradients; each BN
    layer's statistics become the mean over the batches of the batch means and of the (unbiased) batch variances.
    Under DDP every process passes its own batches and the statistics are averaged over the processes, so all of them
    end with the same ones. Training flags and momenta are restored.

    Args:
        model: the model (not a DDP wrapper).
        batches: the batches (every process the same number).
        forward: runs ``model`` on one batch.

    Returns:
        The number of batches (0 when the model has no such BN layer: nothing is run).
    """
    norms = recalibrated_norms(model)
    if not norms:
        return 0
    modes = [(m, m.training) for m in model.modules()]
    momenta = [m.momentum for m in norms]
    count = 0
    try:
        model.train()
        for gate in gate_modules(model):
            gate.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
        for batch in batches:
            forward(model, batch)
            count += 1
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        for m, training in modes:
            m.training = training
    for m in norms:
        m.running_mean.copy_(dist_utils.all_reduce_mean(m.running_mean))
        m.running_var.copy_(dist_utils.all_reduce_mean(m.running_var))
    return count
