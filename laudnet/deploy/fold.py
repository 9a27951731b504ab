"""Folding BatchNorm into the preceding conv: y = γ·(W∗x − μ)/√(σ²+ε) + β = (s·W)∗x + (β − s·μ), s = γ/√(σ²+ε)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv with bias that computes bn(conv(x)) with BN's running statistics (eval semantics)."""
    if bn.num_features != conv.out_channels:
        raise ValueError(f"BN has {bn.num_features} features but the conv has {conv.out_channels} outputs")
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    folded = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
    ).to(conv.weight.device)
    folded.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    folded.bias.copy_(bn.bias + (bias - bn.running_mean) * scale)
    return folded
