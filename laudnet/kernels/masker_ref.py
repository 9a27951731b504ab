"""Pure-PyTorch reference of the masker ops of deployed spatial and layer skipping: the specification of `masker.py`.

A spatial or layer masker (LAUDNet, Han et al., TPAMI 2024) averages its block's input over windows, applies a 1x1
conv (reduced to one weight vector `w` and bias `b`: execute iff `w . mean + b >= 0`), and the deployed block needs the
executing windows as a compacted index list. The ops here split that into:

* **window sums** of an NHWC map: fp32 `[N, gh, gw, C]`, the sum over each `K x K` window (`K` = patch size x stride
  for a spatial masker; `window = 0` is the whole map, one window per sample, for a layer masker). Border windows are
  partial; the mean divides by their in-map pixel count (`avg_pool2d(..., ceil_mode=True)`, as `pool_patches`).
  Sums rather than means so that a producer can accumulate them while it writes the map (the residual-scatter
  epilogue, `conv1x1_scatter_add(..., pool_out=)`), and so that a window a block does not change keeps its sum.
* **decisions + index lists** from the sums: `keep [N, gh, gw]`, the active windows first as `patch_idx [T, 3]` of
  (sample, row, col) and `order [T]` (flat window ids), then the inactive ones (a stable partition), an int32 `[1]`
  `count` and the activation rate. Nothing is read on the host: the lists have capacity `T = N*gh*gw`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._utils import check_nhwc
from .indexing import MaskerDecisions, window_counts, window_grid, window_size


def window_sums_ref(x: torch.Tensor, window: int, relu: bool = False) -> torch.Tensor:
    """fp32 sums of an NHWC map over `window x window` windows (whole map for `MAP_WINDOW`).

    Args:
        x: NHWC `[N, H, W, C]` contiguous.
        window: window side K (the masker's patch size x its conv stride), or `MAP_WINDOW`.
        relu: first apply ReLU to `x` in place (the pass a projection block needs anyway), then sum.

    Returns:
        fp32 `[N, gh, gw, C]`.
    """
    check_nhwc(x, "x")
    n, h, w, c = x.shape
    gh, gw = window_grid((h, w), window)
    k = window_size((h, w), window)
    if relu:
        x.clamp_(min=0)
    xp = F.pad(x.float(), (0, 0, 0, gw * k - w, 0, gh * k - h))  # zeros add nothing to the sums
    return xp.view(n, gh, k, gw, k, c).sum(dim=(2, 4))


def check_sums(sums: torch.Tensor, in_hw: tuple[int, int], window: int) -> tuple[int, int, int, int]:
    """Raise ValueError unless `sums` is contiguous fp32 `[N, gh, gw, C]` on the window grid of `in_hw`."""
    grid = window_grid(in_hw, window)
    if sums.dim() != 4 or tuple(sums.shape[1:3]) != grid or sums.dtype != torch.float32 or not sums.is_contiguous():
        raise ValueError(
            f"sums must be contiguous fp32 [N, {grid[0]}, {grid[1]}, C] (windows of {window} on a {in_hw} map), "
            f"got {sums.dtype} {tuple(sums.shape)}"
        )
    return tuple(sums.shape)  # type: ignore[return-value]


def check_decide_args(sums, weight, bias, in_hw, window, forced) -> tuple[int, int, int, int]:
    """Shared argument checks of `masker_decide_ref` and the Triton launcher; returns the sums' shape."""
    n, gh, gw, c = check_sums(sums, in_hw, window)
    if weight.shape != (c,) or weight.dtype != torch.float32:
        raise ValueError(f"masker weight must be fp32 [C] = [{c}], got {weight.dtype} {tuple(weight.shape)}")
    if bias.numel() != 1 or bias.dtype != torch.float32:
        raise ValueError(f"masker bias must be one fp32 value, got {bias.dtype} {tuple(bias.shape)}")
    if forced is not None and (forced.dtype != torch.bool or forced.numel() != n * gh * gw):
        raise ValueError(
            f"forced decisions must be bool with N*gh*gw = {n * gh * gw} elements, got {forced.dtype} "
            f"{tuple(forced.shape)}"
        )
    return n, gh, gw, c


def masker_decide_ref(
    sums: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    in_hw: tuple[int, int],
    window: int,
    forced: torch.Tensor | None = None,
    zero_active: bool = False,
) -> MaskerDecisions:
    """Hard masker decisions and compacted window lists from window sums.

    Args:
        sums: fp32 `[N, gh, gw, C]` window sums of the block input (`window_sums`).
        weight: fp32 `[C]`, the masker's execute-minus-skip weight.
        bias: fp32 `[1]`, the execute-minus-skip bias.
        in_hw: the block input's (H, W), for the windows' pixel counts.
        window: window side, or `MAP_WINDOW`.
        forced: bool with `N*gh*gw` elements replacing the decisions (the logits are still computed).
        zero_active: zero the rows of `sums` of the active windows, in place, so that the block's output kernel can
            accumulate their new sums there while the inactive windows (whose pixels the block does not change) keep
            theirs.

    Returns:
        `MaskerDecisions`.
    """
    n, gh, gw, c = check_decide_args(sums, weight, bias, in_hw, window, forced)
    means = sums / window_counts(in_hw, window, sums.device)[None, :, :, None]
    keep = means @ weight + bias >= 0
    if forced is not None:
        keep = forced.reshape(n, gh, gw).clone()
    flat = keep.reshape(-1)
    order = torch.argsort((~flat).to(torch.int8), stable=True).to(torch.int32)
    o = order.long()
    patch_idx = torch.stack((o // (gh * gw), (o // gw) % gh, o % gw), dim=1).to(torch.int32)
    count = flat.sum(dtype=torch.int32).view(1)
    rate = count[0].float() / max(flat.numel(), 1)
    if zero_active:
        sums.masked_fill_(keep[..., None], 0.0)
    return MaskerDecisions(keep, patch_idx, order, count, rate, count[0] > 0)


def check_channel_masker_args(sums, pixels, w1, b1, w2, b2, forced) -> tuple[int, int, int, int]:
    """Shared argument checks of `channel_masker_ref` and its Triton launcher; returns (N, C, hidden, groups)."""
    if sums.dim() != 2 or sums.dtype != torch.float32 or not sums.is_contiguous():
        raise ValueError(f"sums must be contiguous fp32 [N, C], got {sums.dtype} {tuple(sums.shape)}")
    n, c = sums.shape
    if isinstance(pixels, bool) or not isinstance(pixels, int) or pixels < 1:
        raise ValueError(f"pixels (the map's H*W, the mean's divisor) must be a positive integer, got {pixels!r}")
    hidden, groups = w1.shape[0], w2.shape[0]
    for name, t, shape in (("fc1 weight", w1, (hidden, c)), ("fc1 bias", b1, (hidden,)),
                           ("fc2 weight", w2, (groups, hidden)), ("fc2 bias", b2, (groups,))):
        if tuple(t.shape) != shape or t.dtype != torch.float32:
            raise ValueError(f"channel masker {name} must be fp32 {list(shape)}, got {t.dtype} {tuple(t.shape)}")
    if forced is not None and (forced.dtype != torch.bool or tuple(forced.shape) != (n, groups)):
        raise ValueError(f"forced decisions must be bool [N, groups] = [{n}, {groups}], got {forced.dtype} "
                         f"{tuple(forced.shape)}")
    return n, c, hidden, groups


def channel_masker_ref(
    sums: torch.Tensor,
    pixels: int,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    forced: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hard decisions of a channel masker (global mean → fc1 → ReLU → fc2) from the per-sample sums of its input.

    Args:
        sums: fp32 `[N, C]` sums of the block input over its map (`window_sums(x, MAP_WINDOW)`).
        pixels: H*W of the map (the mean's divisor).
        w1, b1: fp32 `[hidden, C]`, `[hidden]`: the masker's first linear layer.
        w2, b2: fp32 `[groups, hidden]`, `[groups]`: execute-minus-skip rows of its second layer.
        forced: bool `[N, groups]` replacing the decisions (the MLP still runs).

    Returns:
        bool `[N, groups]`: execute group g iff `w2[g] . relu(w1 . sums / pixels + b1) + b2[g] >= 0`.
    """
    check_channel_masker_args(sums, pixels, w1, b1, w2, b2, forced)
    keep = F.relu(sums / pixels @ w1.t() + b1) @ w2.t() + b2 >= 0
    return keep if forced is None else forced.clone()
