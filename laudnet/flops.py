"""Analytic multiply-accumulate counts from shapes (no nn.Module, no forward pass).

Convention: a "FLOP" is one multiply-accumulate of a conv or linear layer, as in the published totals (ResNet-50
4.1 G at 224²); a pooling layer costs one operation per element it reads. BN, activations and additions are free (BN
folds into the convs at inference).
"""

from __future__ import annotations

import math


def conv_out_size(size: int, stride: int) -> int:
    """Output size of a conv or pool with 'same'-style padding (k // 2), as used throughout ResNet and RegNet."""
    return math.ceil(size / stride)


def conv_flops(in_channels: int, out_channels: int, kernel: int, out_hw: tuple[int, int], groups: int = 1) -> float:
    """MACs of a k×k conv producing out_hw pixels."""
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"groups={groups} does not divide channels {in_channels} -> {out_channels}")
    return (in_channels // groups) * out_channels * kernel * kernel * out_hw[0] * out_hw[1]


def linear_flops(in_features: int, out_features: int) -> float:
    """MACs of a fully connected layer on one sample."""
    return in_features * out_features


def pool_flops(channels: int, in_hw: tuple[int, int]) -> float:
    """A global average pool: one add per input element."""
    return channels * in_hw[0] * in_hw[1]


def window_pool_flops(channels: int, kernel: int, out_hw: tuple[int, int]) -> float:
    """A k×k window pool (e.g. ResNet's stem max-pool): k² reads per output element."""
    return channels * kernel * kernel * out_hw[0] * out_hw[1]
