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

from ._utils import check_bias, check_nhwc
from .indexing import check_mask_groups, compact_channels, expand_channel_mask, resolve_kmax, slot_valid
from .weights import conv1x1_as_2d

__all__ = [
    "channel_index_ref",
    "channel_conv1x1_out_ref",
    "channel_conv3x3_ref",
    "channel_conv1x1_in_ref",
    "dense_masked_bottleneck_ref",
]


# ----------------------------------------------------------------------------------------------------------------
# argument checks shared with the Triton launchers (`channel.py`)


def check_index(idx: torch.Tensor, counts: torch.Tensor, n: int, device: torch.device) -> None:
    """Raise ValueError unless `idx` is int32 `[N, Kmax]` (rows contiguous) and `counts` int32 `[N]`, on `device`."""
    if idx.dtype != torch.int32 or idx.dim() != 2 or idx.shape[0] != n:
        raise ValueError(f"idx must be int32 [N={n}, Kmax], got {idx.dtype} {tuple(idx.shape)}")
    if counts.dtype != torch.int32 or counts.shape != (n,):
        raise ValueError(f"counts must be int32 [N={n}], got {counts.dtype} {tuple(counts.shape)}")
    if idx.device != device or counts.device != device:
        raise ValueError(f"idx and counts must be on {device}, got {idx.device} and {counts.device}")
    if idx.stride(1) != 1:
        raise ValueError("idx must be contiguous along its last dimension")


def check_conv1x1_out_args(x, w1, b1, idx, counts) -> torch.Tensor:
    """Checks of `channel_conv1x1_out`; returns `w1` as `[w, Cin]`."""
    check_nhwc(x, "x")
    n, _, _, cin = x.shape
    w2d = conv1x1_as_2d(w1, "w1")
    if w2d.shape[1] != cin:
        raise ValueError(f"w1 must have shape [{w2d.shape[0]}, {cin}] (or with trailing 1, 1), got {tuple(w1.shape)}")
    check_bias(b1, w2d.shape[0], "b1")
    check_index(idx, counts, n, x.device)
    return w2d


def check_conv3x3_args(h, w2, b2, idx, counts, stride, group_size=1, conv_groups=1) -> None:
    """Checks of `channel_conv3x3`."""
    check_nhwc(h, "h")
    n, _, _, kmax = h.shape
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    if w2.dim() != 4 or w2.shape[2:] != (3, 3) or w2.shape[0] % conv_groups or w2.shape[0] != w2.shape[1] * conv_groups:
        raise ValueError(f"w2 must be [w, w / conv_groups, 3, 3] with conv_groups={conv_groups}, got {tuple(w2.shape)}")
    check_bias(b2, w2.shape[0], "b2")
    check_index(idx, counts, n, h.device)
    if idx.shape[1] != kmax:
        raise ValueError(f"h has {kmax} compacted slots but idx has {idx.shape[1]}")
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")


def check_conv1x1_in_args(h, w3, b3, idx, counts, residual, out, pool_out) -> torch.Tensor:
    """Checks of `channel_conv1x1_in`; returns `w3` as `[Cout, w]`."""
    check_nhwc(h, "h")
    n, _, _, kmax = h.shape
    w2d = conv1x1_as_2d(w3, "w3")
    cout = w2d.shape[0]
    check_nhwc(residual, "residual", cout)
    if residual.shape[:3] != h.shape[:3]:
        raise ValueError(f"residual {tuple(residual.shape)} does not match h {tuple(h.shape)} in N, H, W")
    check_bias(b3, cout, "b3")
    check_index(idx, counts, n, h.device)
    if idx.shape[1] != kmax:
        raise ValueError(f"h has {kmax} compacted slots but idx has {idx.shape[1]}")
    if out is not None:
        check_nhwc(out, "out", cout)
        if out.shape != residual.shape or out.dtype != residual.dtype:
            raise ValueError(f"out must match residual: {tuple(residual.shape)} {residual.dtype}")
        if out.data_ptr() != residual.data_ptr() and _overlaps(out, residual):
            raise ValueError("out must be residual itself or not overlap it")
    if pool_out is not None and (pool_out.shape != (n, cout) or pool_out.dtype != torch.float32
                                 or not pool_out.is_contiguous() or pool_out.device != h.device):
        raise ValueError(f"pool_out must be contiguous fp32 [{n}, {cout}] on {h.device}, got {pool_out.dtype} "
                         f"{tuple(pool_out.shape)}")
    return w2d


def _overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    a0, b0 = a.data_ptr(), b.data_ptr()
    a1, b1 = a0 + a.numel() * a.element_size(), b0 + b.numel() * b.element_size()
    return a0 < b1 and b0 < a1


# ----------------------------------------------------------------------------------------------------------------
# the compacted ops



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
    w1 = check_conv1x1_out_args(x, w1, b1, idx, counts).float()
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
    conv_groups: int = 1,
) -> torch.Tensor:
    """``relu(conv3x3(h) + b2)`` (padding 1) from compacted active inputs to compacted active outputs.

    Input and output share the channel set ``idx`` (the same mask gates conv1's and conv2's outputs), so the weight
    of sample ``n`` is ``w2[act][:, act]`` with ``act = idx[n, :counts[n]]``.

    Args:
        h: ``[N, H, W, Kmax]`` compacted conv1 output.
        w2: ``[w, w / conv_groups, 3, 3]`` folded conv2 weight; ``b2``: ``[w]``.
        stride: 1 or 2.
        conv_groups: groups of the conv (RegNet). Grouped convs are computed densely (`_grouped_conv3x3`), which is
            also their path on the GPU.

    Returns:
        ``[N, Ho, Wo, Kmax]`` with ``Ho = (H - 1) // stride + 1`` (likewise ``Wo``).
    """
    check_conv3x3_args(h, w2, b2, idx, counts, stride, conv_groups=conv_groups)
    if conv_groups != 1:
        return _grouped_conv3x3(h, w2, b2, idx, counts, stride, conv_groups)
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


def _grouped_conv3x3(
    h: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    idx: torch.Tensor,
    counts: torch.Tensor,
    stride: int,
    conv_groups: int,
) -> torch.Tensor:
    """Grouped 3x3 conv on compacted channels, done densely: scatter to full width, cuDNN, gather the active slots.

    The inactive input channels are zero after the scatter, and the gather keeps only active outputs, so the result
    equals the channel-skipping computation; it does the dense amount of work.
    """
    n, height, width, kmax = h.shape
    w = w2.shape[0]
    valid = slot_valid(idx, counts)
    dense = torch.zeros(n, height, width, w + 1, dtype=h.dtype, device=h.device)
    # padding slots scatter into a spare channel w, dropped below
    target = torch.where(valid, idx.long(), torch.full_like(idx, w, dtype=torch.long))
    dense.scatter_(3, target[:, None, None, :].expand(n, height, width, kmax), h)
    x = dense[..., :w].permute(0, 3, 1, 2)
    y = F.conv2d(x.float(), w2.float(), b2.float(), stride=stride, padding=1, groups=conv_groups)
    y = torch.relu(y).to(h.dtype).permute(0, 2, 3, 1)
    return compact_channels(y, idx, counts).contiguous()


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
    w3 = check_conv1x1_in_args(h, w3, b3, idx, counts, residual, out, pool_out).float()
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
