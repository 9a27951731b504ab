"""Pure-PyTorch reference of the channel-skipping bottleneck ops: the specification the Triton kernels must meet.

LAUDNet (Han et al., TPAMI 2024) skips groups of ``G`` consecutive channels of a bottleneck's width ``w``, per
sample. In the deployed block (BN folded into each conv's weight and bias, tensors NHWC) a skipped channel is exactly
zero after BN and ReLU, so

* conv1 (1x1, ``Cin -> w``) computes only the active output channels,
* conv2 (3x3, stride 1 or 2, ``w -> w``) reads only active input channels and computes only active outputs,
* conv3 (1x1, ``w -> Cout``) reads only active input channels, then adds the residual and applies ReLU.

The active channels of sample ``n`` are stored *compacted*: slot ``k < counts[n]`` of a compacted activation holds
channel ``idx[n, k]``; slots ``counts[n] <= k < Kmax`` are padding and hold zeros. Every function here takes weights
in PyTorch's logical layouts (``w1 [w, Cin]``, ``w2 [w, w, 3, 3]``, ``w3 [Cout, w]``; 1x1 weights may also be 4-D)
and works for any strides. Computation is in float32; results are returned in the activation dtype, rounded at the
same places as the kernels (after each conv).

Two layers of reference: the compacted ops (``channel_conv1x1_out_ref`` ...) written per sample with gathered
weights, and ``dense_masked_bottleneck_ref``, the plain dense computation multiplied by the expanded mask, which the
tests use to prove the compacted reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .indexing import check_mask_groups, expand_channel_mask, resolve_kmax
from .weights import conv1x1_as_2d

__all__ = [
    "channel_index_ref",
    "channel_conv1x1_out_ref",
    "channel_conv3x3_ref",
    "channel_conv1x1_in_ref",
    "dense_masked_bottleneck_ref",
]


def channel_index_ref(
    mask_groups: torch.Tensor, group_size: int, kmax: int | None = None, align: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample compacted indices of the active channels.

    Args:
        mask_groups: bool ``[N, n_groups]``; True keeps group ``g`` = channels ``g*G .. g*G+G-1``.
        group_size: channels per group ``G``.
        kmax: width of ``idx``; default: the largest count rounded up to ``align`` (reads the counts on the host).
        align: rounding multiple for the default ``kmax``.

    Returns:
        ``idx`` int32 ``[N, kmax]`` (active channels in increasing order, padding slots hold 0) and ``counts`` int32
        ``[N]`` (number of active channels, a multiple of G).
    """
    check_mask_groups(mask_groups, group_size)
    n, n_groups = mask_groups.shape
    width = n_groups * group_size
    chan_mask = expand_channel_mask(mask_groups, group_size)  # [N, w]
    counts = chan_mask.sum(1, dtype=torch.int32)
    kmax = resolve_kmax(counts, width, kmax, align)
    idx = torch.zeros(n, kmax, dtype=torch.int32, device=mask_groups.device)
    for i in range(n):
        active = torch.nonzero(chan_mask[i]).flatten().to(torch.int32)
        idx[i, : active.numel()] = active
    return idx, counts


def channel_conv1x1_out_ref(
    x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, idx: torch.Tensor, counts: torch.Tensor
) -> torch.Tensor:
    """``relu(conv1x1(x) + b1)`` on the active output channels only, compacted: ``[N, H, W, Kmax]``.

    Args:
        x: ``[N, H, W, Cin]`` block input (NHWC).
        w1: ``[w, Cin]`` (or ``[w, Cin, 1, 1]``) folded conv1 weight; ``b1``: ``[w]`` folded bias.
        idx, counts: from ``channel_index``.
    """
    w1 = conv1x1_as_2d(w1, "w1").float()
    out = torch.zeros(*x.shape[:3], idx.shape[1], dtype=torch.float32, device=x.device)
    for i in range(x.shape[0]):
        act = idx[i, : int(counts[i])].long()
        out[i, :, :, : act.numel()] = torch.relu(x[i].float() @ w1[act].t() + b1.float()[act])
    return out.to(x.dtype)


def channel_conv3x3_ref(
    h: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    idx: torch.Tensor,
    counts: torch.Tensor,
    stride: int = 1,
) -> torch.Tensor:
    """``relu(conv3x3(h) + b2)`` (padding 1) from compacted active inputs to compacted active outputs.

    Input and output share the channel set ``idx`` (the same mask gates conv1's and conv2's outputs), so the weight
    of sample ``n`` is ``w2[act][:, act]`` with ``act = idx[n, :counts[n]]``.

    Args:
        h: ``[N, H, W, Kmax]`` compacted conv1 output.
        w2: ``[w, w, 3, 3]`` folded conv2 weight; ``b2``: ``[w]``.
        stride: 1 or 2.

    Returns:
        ``[N, Ho, Wo, Kmax]`` with ``Ho = (H - 1) // stride + 1`` (likewise ``Wo``).
    """
    n, height, width, kmax = h.shape
    ho, wo = (height - 1) // stride + 1, (width - 1) // stride + 1
    out = torch.zeros(n, ho, wo, kmax, dtype=torch.float32, device=h.device)
    for i in range(n):
        c = int(counts[i])
        if c == 0:
            continue  # nothing active: the output stays zero
        act = idx[i, :c].long()
        inp = h[i, :, :, :c].float().permute(2, 0, 1)[None]  # [1, c, H, W]
        weight = w2.float()[act][:, act]
        y = F.conv2d(inp, weight, b2.float()[act], stride=stride, padding=1)
        out[i, :, :, :c] = torch.relu(y[0].permute(1, 2, 0))
    return out.to(h.dtype)


def channel_conv1x1_in_ref(
    h: torch.Tensor,
    w3: torch.Tensor,
    b3: torch.Tensor,
    idx: torch.Tensor,
    counts: torch.Tensor,
    residual: torch.Tensor,
    out: torch.Tensor | None = None,
    pool_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``relu(residual + conv1x1(h) + b3)`` reading only the active input channels of ``h``.

    A sample with no active channel gets ``relu(residual + b3)``: its conv3 input is all zeros, so conv3 with BN
    folded contributes just the bias.

    Args:
        h: ``[N, H, W, Kmax]`` compacted conv2 output.
        w3: ``[Cout, w]`` (or ``[Cout, w, 1, 1]``) folded conv3 weight; ``b3``: ``[Cout]``.
        residual: ``[N, H, W, Cout]`` identity branch.
        out: optional output tensor (may be ``residual`` itself).
        pool_out: optional fp32 ``[N, Cout]``: each sample's sums of the output over its map (as stored, in the
            output dtype) are added to it — the next channel masker's pooling, without re-reading the map.
    """
    w3 = conv1x1_as_2d(w3, "w3").float()
    res = torch.empty(residual.shape, dtype=torch.float32, device=residual.device)
    for i in range(h.shape[0]):
        c = int(counts[i])
        act = idx[i, :c].long()
        res[i] = torch.relu(residual[i].float() + h[i, :, :, :c].float() @ w3[:, act].t() + b3.float())
    stored = res.to(residual.dtype)
    if pool_out is not None:
        pool_out += stored.float().sum(dim=(1, 2))
    if out is None:
        return stored
    out.copy_(stored)
    return out


def dense_masked_bottleneck_ref(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    w3: torch.Tensor,
    b3: torch.Tensor,
    mask_groups: torch.Tensor,
    group_size: int,
    stride: int = 1,
    residual: torch.Tensor | None = None,
    conv2_groups: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The channel-masked bottleneck computed densely: every conv on all channels, then multiplied by the mask.

    Args:
        x: ``[N, H, W, Cin]`` (NHWC).
        w1, b1, w2, b2, w3, b3: folded weights in PyTorch layouts (``w2`` is ``[w, w / conv2_groups, 3, 3]``).
        mask_groups, group_size: the channel mask as for ``channel_index``.
        stride: conv2 stride.
        residual: identity branch ``[N, Ho, Wo, Cout]``; default ``x`` (needs ``stride == 1`` and ``Cin == Cout``).
        conv2_groups: groups of conv2 (RegNet's grouped 3x3).

    Returns:
        Dense masked ``h1 [N, H, W, w]``, ``h2 [N, Ho, Wo, w]`` (activation dtype) and the block output.
    """
    mask = expand_channel_mask(mask_groups, group_size)[:, :, None, None].float()  # [N, w, 1, 1]
    xc = x.float().permute(0, 3, 1, 2)
    h1 = (torch.relu(F.conv2d(xc, conv1x1_as_2d(w1, "w1").float()[:, :, None, None], b1.float())) * mask).to(x.dtype)
    h2 = F.conv2d(h1.float(), w2.float(), b2.float(), stride=stride, padding=1, groups=conv2_groups)
    h2 = (torch.relu(h2) * mask).to(x.dtype)
    y = F.conv2d(h2.float(), conv1x1_as_2d(w3, "w3").float()[:, :, None, None], b3.float())
    res = x if residual is None else residual
    out = torch.relu(y.permute(0, 2, 3, 1) + res.float()).to(x.dtype)
    return h1.permute(0, 2, 3, 1), h2.permute(0, 2, 3, 1), out
