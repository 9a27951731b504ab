"""Pure-PyTorch reference of the spatial-skipping ops: the specification the Triton kernels are tested against.

Conventions shared by every op (the deployed bottleneck block of LAUDNet, Han et al., TPAMI 2024, with BN folded):

* Feature maps are NHWC contiguous tensors `[N, H, W, C]` (a channels_last NCHW tensor `.permute(0, 2, 3, 1)`).
* A coarse spatial mask lives on the block's OUTPUT grid: patch size S, grid `ceil(Ho/S) x ceil(Wo/S)`. Border
  patches may be partial: their pixels beyond the map do not exist, are never read and never written.
* Active patches are an int32 tensor `patch_idx [P, 3]` of (sample, patch_row, patch_col), each at most once.
* "Gathered" tensors hold the S*S pixels of each active patch in order: row `p*S*S + dy*S + dx` is output pixel
  `(patch_row*S + dy, patch_col*S + dx)` of sample `patch_idx[p, 0]`. Rows of pixels beyond the map are zero.
* Weights come either in torch's conv layout (`[Cout, Cin/groups, kh, kw]`, 4-D) or packed K-major for the GEMM
  kernels (2-D: `[9*Cin, Cout]` for a 3x3, tap-major (ky, kx) then input channel; `[Cin, Cout]` for a 1x1), as made
  by `weights.pack_conv3x3_weight` / `weights.pack_conv1x1_weight`.
* Masks and index lists (`patch_idx`, pixel lists, their sync-free forms) are made by `indexing.py`.

The reference is also the fallback on CPU and the grouped-conv path on GPU (gather halo tiles, then cuDNN).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._utils import check_bias, check_nhwc, check_patch_idx
from .indexing import conv_out_size, patch_grid, samples_to_pixel_idx
from .weights import conv1x1_matrix, unpack_conv3x3_weight

# ---------------------------------------------------------------------------------------------------------------
# checks and helpers of the ops


def check_pool_out(pool_out: torch.Tensor | None, shape: tuple[int, int, int, int], device: torch.device) -> None:
    """Raise ValueError unless `pool_out` is None or a contiguous fp32 tensor of `shape` on `device`."""
    if pool_out is None:
        return
    if (tuple(pool_out.shape) != tuple(shape) or pool_out.dtype != torch.float32 or not pool_out.is_contiguous()
            or pool_out.device != device):
        raise ValueError(
            f"pool_out must be contiguous fp32 [N, gh, gw, Cout] = {list(shape)} on {device} (the output's patch "
            f"grid), got {pool_out.dtype} {tuple(pool_out.shape)} on {pool_out.device}"
        )


def _valid_count(count: torch.Tensor | None, capacity: int) -> int:
    """Host value of a device-side count (the reference may sync), checked against the list's capacity."""
    if count is None:
        return capacity
    if count.dtype != torch.int32 or count.numel() != 1:
        raise ValueError(f"count must be an int32 tensor of one element, got {count.dtype} {tuple(count.shape)}")
    c = int(count.item())
    if not 0 <= c <= capacity:
        raise ValueError(f"count {c} outside [0, {capacity}]")
    return c


def _patch_pixels(patch_idx: torch.Tensor, patch_size: int, out_hw: tuple[int, int]):
    """Per gathered row: (sample, oy, ox, inside-map) as int64/bool tensors of length P*S*S."""
    s = patch_size
    dev = patch_idx.device
    pi = patch_idx.long()
    dy = torch.arange(s, device=dev).repeat_interleave(s)  # row-major within the patch
    dx = torch.arange(s, device=dev).repeat(s)
    n = pi[:, 0:1].expand(-1, s * s).reshape(-1)
    oy = (pi[:, 1:2] * s + dy[None, :]).reshape(-1)
    ox = (pi[:, 2:3] * s + dx[None, :]).reshape(-1)
    inside = (oy < out_hw[0]) & (ox < out_hw[1])
    return n, oy, ox, inside


# ---------------------------------------------------------------------------------------------------------------
# ops


def gather_conv3x3_ref(
    h1: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    patch_idx: torch.Tensor,
    patch_size: int,
    stride: int,
    relu: bool = True,
    groups: int = 1,
    count: torch.Tensor | None = None,
) -> torch.Tensor:
    """3x3 conv (padding 1) evaluated only on the active output patches, gathered.

    Gathers each patch's halo tile (`(S-1)*s + 3` pixels a side, zero beyond the map) and runs one conv on the tile
    batch; this is exact and is also the GPU path for grouped convs.

    Args:
        h1: NHWC `[N, H, W, Cin]`.
        weight: `[Cout, Cin/groups, 3, 3]` or packed `[9*Cin, Cout]` (groups = 1 only).
        bias: `[Cout]` or None.
        patch_idx: int32 `[P, 3]`.
        patch_size: S.
        stride: 1 or 2.
        relu: apply ReLU after the bias.
        groups: conv groups.
        count: int32 `[1]`: only the first `count` patches are valid (from `mask_to_patch_list`); the output keeps
            P*S*S rows, those past the count are unspecified (0 here).

    Returns:
        `[P*S*S, Cout]` in h1's dtype; rows of pixels beyond the map are 0.
    """
    check_nhwc(h1, "h1")
    check_patch_idx(patch_idx, h1.device)
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    nb, h, w, cin = h1.shape
    wt = unpack_conv3x3_weight(weight, cin)
    if wt.shape[1] * groups != cin:
        raise ValueError(f"weight has {wt.shape[1]} input channels per group; with groups={groups} expected Cin={cin}")
    cout = wt.shape[0]
    check_bias(bias, cout)
    s, p = patch_size, patch_idx.shape[0]
    ho, wo = conv_out_size(h, stride), conv_out_size(w, stride)
    gh, gw = patch_grid((ho, wo), s)
    valid = _valid_count(count, p)
    if valid < p:
        res = h1.new_zeros((p * s * s, cout))
        res[: valid * s * s] = gather_conv3x3_ref(h1, weight, bias, patch_idx[:valid], s, stride, relu, groups)
        return res
    if p == 0:
        return h1.new_zeros((0, cout))
    t = (s - 1) * stride + 3  # halo tile side
    # Pad 1 on top/left (the conv's padding) and enough on bottom/right for the last (partial) patch's tile.
    pad_b = max(0, (gh - 1) * s * stride - 1 + t - h)
    pad_r = max(0, (gw - 1) * s * stride - 1 + t - w)
    h1p = F.pad(h1, (0, 0, 1, pad_r, 1, pad_b))
    pi = patch_idx.long()
    ar = torch.arange(t, device=h1.device)
    rows = pi[:, 1:2] * (s * stride) + ar  # padded coordinates: input row r -> r + 1
    cols = pi[:, 2:3] * (s * stride) + ar
    tiles = h1p[pi[:, 0, None, None], rows[:, :, None], cols[:, None, :]]  # [P, t, t, Cin]
    tiles = tiles.permute(0, 3, 1, 2)  # NCHW view of NHWC memory (channels_last)
    out = F.conv2d(tiles, wt.to(h1.dtype), None if bias is None else bias.to(h1.dtype), stride=stride, groups=groups)
    if relu:
        out = out.relu()
    out = out.permute(0, 2, 3, 1).reshape(p * s * s, cout)
    _, _, _, inside = _patch_pixels(patch_idx, s, (ho, wo))
    return out * inside[:, None].to(out.dtype)


def conv1x1_scatter_add_ref(
    y_gathered: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    patch_idx: torch.Tensor,
    patch_size: int,
    relu: bool = True,
    out: torch.Tensor | None = None,
    count: torch.Tensor | None = None,
    pool_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """`out[active] = relu(residual[active] + y_gathered @ W + b)`, in place; other positions untouched.

    Args:
        y_gathered: `[P*S*S, Cmid]` gathered pixels (rows beyond the map are ignored).
        weight: `[Cout, Cmid, 1, 1]` or packed `[Cmid, Cout]`.
        bias: `[Cout]` or None.
        residual: NHWC `[N, Ho, Wo, Cout]`, the identity (or the projection) at full size.
        patch_idx: int32 `[P, 3]`.
        patch_size: S.
        relu: apply ReLU after the add.
        out: NHWC tensor like `residual` to write into; default `residual` itself.
        count: int32 `[1]`: only the first `count` patches (and their rows of `y_gathered`) are valid.
        pool_out: fp32 `[N, gh, gw, Cout]` on the output's patch grid, or None: the sum of the values written at
            each active patch's pixels (as stored, in `out`'s dtype) is added to its row — the next block's masker
            input, accumulated while the map is written (the caller zeroes the active rows first).

    Returns:
        `out`.
    """
    check_nhwc(residual, "residual")
    check_patch_idx(patch_idx, residual.device)
    out = residual if out is None else out
    check_nhwc(out, "out")
    if out.shape != residual.shape:
        raise ValueError(f"out shape {tuple(out.shape)} != residual shape {tuple(residual.shape)}")
    s, p = patch_size, patch_idx.shape[0]
    if y_gathered.dim() != 2 or y_gathered.shape[0] != p * s * s:
        raise ValueError(f"y_gathered must be [P*S*S, Cmid] = [{p * s * s}, Cmid], got {tuple(y_gathered.shape)}")
    wm = conv1x1_matrix(weight, y_gathered.shape[1])
    cout = wm.shape[1]
    if cout != residual.shape[3]:
        raise ValueError(f"conv output channels {cout} != residual channels {residual.shape[3]}")
    check_bias(bias, cout)
    nb, ho, wo, _ = residual.shape
    gh, gw = patch_grid((ho, wo), s)
    check_pool_out(pool_out, (nb, gh, gw, cout), out.device)
    valid = _valid_count(count, p)
    if valid < p:
        return conv1x1_scatter_add_ref(
            y_gathered[: valid * s * s], weight, bias, residual, patch_idx[:valid], s, relu, out, pool_out=pool_out
        )
    if p == 0:
        return out
    n, oy, ox, inside = _patch_pixels(patch_idx, s, (ho, wo))
    z = y_gathered.float() @ wm.float()
    if bias is not None:
        z = z + bias.float()
    n, oy, ox, z = n[inside], oy[inside], ox[inside], z[inside]
    val = residual[n, oy, ox].float() + z
    if relu:
        val = val.relu()
    val = val.to(out.dtype)
    out[n, oy, ox] = val
    if pool_out is not None:
        pool_out.view(-1, cout).index_add_(0, (n * gh + oy // s) * gw + ox // s, val.float())
    return out


def pixel_conv1x1_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    pix_idx: torch.Tensor,
    relu: bool = True,
    out: torch.Tensor | None = None,
    compact: bool = False,
    count: torch.Tensor | None = None,
    per_sample: bool = False,
) -> torch.Tensor:
    """1x1 conv on a list of pixels: `out[q] = act(x[q] @ W + b)` for each flat pixel row q in `pix_idx`.

    Args:
        x: NHWC `[N, H, W, Cin]`.
        weight: `[Cout, Cin, 1, 1]` or packed `[Cin, Cout]`.
        bias: `[Cout]` or None.
        pix_idx: int32 `[Q]` flat rows `n*H*W + y*W + x`.
        relu: apply ReLU.
        out: with `compact=False`, the NHWC `[N, H, W, Cout]` map to write the pixels into (default: a new map whose
            other pixels are unspecified; the reference fills them with 0, the kernel leaves them uninitialised).
        compact: return the `[Q, Cout]` results in `pix_idx` order instead of scattering them.
        count: int32 `[1]`: only the first `count` entries of `pix_idx` are valid (`pixel_mask_to_idx_padded`);
            compact rows past it are unspecified (0 here).
        per_sample: `pix_idx` lists samples instead (layer skipping): every pixel of each listed sample, in order,
            as if `pix_idx` were `samples_to_pixel_idx(pix_idx, H*W)` (and `count` counts samples).

    Returns:
        `out` (scattered) or the compact `[Q, Cout]` tensor.
    """
    check_nhwc(x, "x")
    if pix_idx.dtype != torch.int32 or pix_idx.dim() != 1:
        raise ValueError(f"pix_idx must be int32 [Q], got dtype {pix_idx.dtype} shape {tuple(pix_idx.shape)}")
    nb, h, w, cin = x.shape
    if per_sample:
        hw = h * w
        valid = _valid_count(count, pix_idx.shape[0])
        pixels = samples_to_pixel_idx(pix_idx, hw)
        return pixel_conv1x1_ref(x, weight, bias, pixels, relu, out, compact,
                                 torch.tensor([valid * hw], dtype=torch.int32, device=x.device))
    wm = conv1x1_matrix(weight, cin)
    cout = wm.shape[1]
    check_bias(bias, cout)
    valid = _valid_count(count, pix_idx.shape[0])
    if valid < pix_idx.shape[0]:
        res = pixel_conv1x1_ref(x, weight, bias, pix_idx[:valid], relu, out, compact)
        if compact:
            res = torch.cat((res, res.new_zeros((pix_idx.shape[0] - valid, cout))))
        return res
    rows = pix_idx.long()
    z = x.reshape(-1, cin)[rows].float() @ wm.float()
    if bias is not None:
        z = z + bias.float()
    if relu:
        z = z.relu()
    z = z.to(x.dtype)
    if compact:
        return z
    if out is None:
        out = x.new_zeros((nb, h, w, cout))
    check_nhwc(out, "out")
    if out.shape != (nb, h, w, cout):
        raise ValueError(f"out must be [{nb}, {h}, {w}, {cout}], got {tuple(out.shape)}")
    out.view(-1, cout)[rows] = z.to(out.dtype)
    return out
