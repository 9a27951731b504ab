"""Masks, index lists and result types of the kernels: what the deployed blocks build, the kernels read and the
references take, without a kernel of their own (pure PyTorch, most of them without a host sync).

* Spatial skipping (`spatial.py`; conventions in `spatial_ref.py`): patch grids on a block's output, coarse masks to
  `patch_idx [P, 3]` lists (with `torch.nonzero`, or sync-free with a device-side count), pixel masks and lists.
* Maskers (`masker.py`): the window grid of a spatial or layer masker (`MAP_WINDOW`: the whole map) and the
  `MaskerDecisions` that `masker_decide` returns.
* Channel skipping (`channel.py`): group masks to per-sample compacted channels (`slot k < counts[n]` holds channel
  `idx[n, k]`).
* The ViT's token rows (`pack.py`): the selection of rows and the `Packing` that `pack_rows` returns.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ._utils import cdiv

# ---------------------------------------------------------------------------------------------------------------
# spatial skipping: patch grids, masks and index lists


def conv_out_size(size: int, stride: int) -> int:
    """Output size of a 3x3 conv with padding 1 (and of a 1x1 conv with padding 0) at this stride."""
    return (size - 1) // stride + 1


def patch_grid(out_hw: tuple[int, int], patch_size: int) -> tuple[int, int]:
    """Patch grid `(ceil(Ho/S), ceil(Wo/S))` of an output map."""
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    ho, wo = out_hw
    return cdiv(ho, patch_size), cdiv(wo, patch_size)


def mask_to_patch_idx(mask: torch.Tensor) -> torch.Tensor:
    """Active patches of a coarse mask as an int32 list.

    Compaction needs the count P on the host to size every later tensor, so this is one `torch.nonzero` (one device
    sync); a Triton prefix-sum would need the same sync and is not worth its own kernel.

    Args:
        mask: bool (or 0/1) tensor `[N, gh, gw]`.

    Returns:
        int32 tensor `[P, 3]` of (sample, patch_row, patch_col), in row-major order.
    """
    if mask.dim() != 3:
        raise ValueError(f"mask must be [N, gh, gw], got shape {tuple(mask.shape)}")
    return torch.nonzero(mask != 0).to(torch.int32)


def _compact(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the true entries of a flat bool tensor, first, without a host sync.

    Returns `(idx, count)`: int32 `[T]` whose first `count` entries are the true positions in increasing order (the
    rest is 0), and `count` as an int32 `[1]` tensor on the same device. cumsum + scatter instead of `nonzero`,
    so nothing waits for the device and the whole thing can be captured in a CUDA graph.
    """
    flat = flat.reshape(-1).bool()
    t = flat.numel()
    out = torch.zeros(t + 1, dtype=torch.int32, device=flat.device)
    if t == 0:
        return out[:0], torch.zeros(1, dtype=torch.int32, device=flat.device)
    pos = torch.cumsum(flat, 0, dtype=torch.int32) - 1
    dest = torch.where(flat, pos.long(), t)  # inactive entries all go to the spare slot t
    out.scatter_(0, dest, torch.arange(t, dtype=torch.int32, device=flat.device))
    return out[:t], pos[-1:] + 1


def mask_to_patch_list(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sync-free `mask_to_patch_idx`: a fixed-capacity list and a device-side count.

    Args:
        mask: bool `[N, gh, gw]`.

    Returns:
        `(patch_idx, count)`: int32 `[N*gh*gw, 3]` whose first `count` rows are the active patches in row-major order
        (the rest is padding), and an int32 `[1]` count. Pass both to the ops (`count=`): kernels are launched for
        the capacity and tiles past the count do no work.
    """
    if mask.dim() != 3:
        raise ValueError(f"mask must be [N, gh, gw], got shape {tuple(mask.shape)}")
    _, gh, gw = mask.shape
    flat, count = _compact(mask != 0)
    patch_idx = torch.stack((flat // (gh * gw), (flat // gw) % gh, flat % gw), dim=1).to(torch.int32)
    return patch_idx, count


def pixel_mask_to_idx_padded(pixel_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sync-free `pixel_mask_to_idx`: int32 `[N*H*W]` (valid first) and an int32 `[1]` count."""
    if pixel_mask.dim() != 3:
        raise ValueError(f"pixel_mask must be [N, H, W], got shape {tuple(pixel_mask.shape)}")
    return _compact(pixel_mask)


def samples_to_patch_idx(idx: torch.Tensor) -> torch.Tensor:
    """Active samples `[n]` -> int32 `[n, 3]` of (sample, 0, 0): layer skipping as one patch of S = map size."""
    if idx.dim() != 1:
        raise ValueError(f"idx must be 1-D, got shape {tuple(idx.shape)}")
    z = torch.zeros_like(idx)
    return torch.stack((idx, z, z), dim=1).to(torch.int32)


def patch_idx_to_mask(patch_idx: torch.Tensor, n: int, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of `mask_to_patch_idx`: bool `[N, gh, gw]` mask."""
    mask = torch.zeros((n, *grid), dtype=torch.bool, device=patch_idx.device)
    if patch_idx.numel():
        pi = patch_idx.long()
        mask[pi[:, 0], pi[:, 1], pi[:, 2]] = True
    return mask


def patch_mask_to_pixel_mask(mask: torch.Tensor, patch_size: int, out_hw: tuple[int, int]) -> torch.Tensor:
    """Coarse mask `[N, gh, gw]` -> output-pixel mask `[N, Ho, Wo]` (nearest upsampling, cropped to the map)."""
    ho, wo = out_hw
    if tuple(mask.shape[1:]) != patch_grid(out_hw, patch_size):
        raise ValueError(
            f"mask grid {tuple(mask.shape[1:])} does not match ceil({ho}/{patch_size}) x ceil({wo}/{patch_size})"
        )
    pix = mask.bool().repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2)
    return pix[:, :ho, :wo]


def conv1_pixel_mask(mask: torch.Tensor, patch_size: int, stride: int, in_hw: tuple[int, int]) -> torch.Tensor:
    """Pixels of the conv2 (3x3) input that the active output patches need: where conv1 must be computed.

    An active output patch (py, px) reads input rows `[py*S*s - 1, (py*S + S - 1)*s + 1]` (and the same for columns),
    clipped to the map. This is LAUDNet's `ExpandMask(stride=s, padding=1)`: put each output pixel at the top-left of
    an s x s cell, then dilate with a 3x3 box.

    Args:
        mask: coarse mask `[N, gh, gw]` on the block's output grid.
        patch_size: S.
        stride: stride s of the 3x3 conv (1 or 2).
        in_hw: (H, W) of the 3x3 conv's input (= conv1's output).

    Returns:
        bool `[N, H, W]`.
    """
    h, w = in_hw
    ho, wo = conv_out_size(h, stride), conv_out_size(w, stride)
    out_pix = patch_mask_to_pixel_mask(mask, patch_size, (ho, wo))
    placed = torch.zeros((mask.shape[0], 1, h, w), dtype=torch.float32, device=mask.device)
    placed[:, 0, ::stride, ::stride] = out_pix.float()
    return F.max_pool2d(placed, kernel_size=3, stride=1, padding=1)[:, 0] > 0.5


def pixel_mask_to_idx(pixel_mask: torch.Tensor) -> torch.Tensor:
    """Bool `[N, H, W]` -> int32 `[Q]` flat pixel rows `n*H*W + y*W + x` of an NHWC map viewed as `[N*H*W, C]`."""
    if pixel_mask.dim() != 3:
        raise ValueError(f"pixel_mask must be [N, H, W], got shape {tuple(pixel_mask.shape)}")
    return torch.nonzero(pixel_mask.reshape(-1)).reshape(-1).to(torch.int32)


def samples_to_pixel_idx(idx: torch.Tensor, hw: int) -> torch.Tensor:
    """Sample indices `[n]` -> int32 flat pixel rows `[n*hw]` of those samples, in order (for layer skipping)."""
    rows = idx.to(torch.int64)[:, None] * hw + torch.arange(hw, device=idx.device)[None, :]
    return rows.reshape(-1).to(torch.int32)


# ---------------------------------------------------------------------------------------------------------------
# maskers: window grids and decisions


MAP_WINDOW = 0  # `window` value meaning "the whole map" (the layer masker's global average pooling)


class MaskerDecisions(NamedTuple):
    """Result of `masker_decide`.

    Attributes:
        keep: bool `[N, gh, gw]` decisions.
        patch_idx: int32 `[T, 3]` (sample, window row, window col): the `count` active windows first, in row-major
            order, then the inactive ones.
        order: int32 `[T]` the same list as flat window ids `(n*gh + row)*gw + col` (for layer skipping: samples).
        count: int32 `[1]` number of active windows.
        rate: fp32 0-d tensor, `count / T`.
        active: bool 0-d tensor, `count > 0` (the predicate of a conditional CUDA-graph node).
    """

    keep: torch.Tensor
    patch_idx: torch.Tensor
    order: torch.Tensor
    count: torch.Tensor
    rate: torch.Tensor
    active: torch.Tensor


def window_grid(hw: tuple[int, int], window: int) -> tuple[int, int]:
    """Number of `window x window` windows `(ceil(H/K), ceil(W/K))` of a map; `(1, 1)` for `MAP_WINDOW`."""
    if window < 0:
        raise ValueError(f"window must be >= 1, or {MAP_WINDOW} for the whole map, got {window}")
    if window == MAP_WINDOW:
        return 1, 1
    h, w = hw
    return cdiv(h, window), cdiv(w, window)


def window_size(hw: tuple[int, int], window: int) -> int:
    """Side of the windows as the kernels use it: `window`, or the map's larger side for `MAP_WINDOW`."""
    return max(hw) if window == MAP_WINDOW else window


def window_counts(hw: tuple[int, int], window: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """In-map pixels of each window, fp32 `[gh, gw]` (what `avg_pool2d(ceil_mode=True)` divides by)."""
    h, w = hw
    k = window_size(hw, window)
    gh, gw = window_grid(hw, window)
    rows = (h - torch.arange(gh, device=device) * k).clamp(max=k)
    cols = (w - torch.arange(gw, device=device) * k).clamp(max=k)
    return (rows[:, None] * cols[None, :]).float()


# ---------------------------------------------------------------------------------------------------------------
# channel skipping: compacted channels


def _round_up(x: int, multiple: int) -> int:
    return cdiv(x, multiple) * multiple


def check_mask_groups(mask_groups: torch.Tensor, group_size: int) -> None:
    """Raise ValueError unless `mask_groups` is a 2-D bool tensor and `group_size` a positive int."""
    if not isinstance(mask_groups, torch.Tensor) or mask_groups.dtype != torch.bool or mask_groups.dim() != 2:
        is_tensor = isinstance(mask_groups, torch.Tensor)
        got = f"{mask_groups.dtype} {tuple(mask_groups.shape)}" if is_tensor else type(mask_groups).__name__
        raise ValueError(f"mask_groups must be a bool tensor [N, n_groups], got {got}")
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group size G must be a positive int, got {group_size!r}")


def resolve_kmax(counts: torch.Tensor, width: int, kmax: int | None, align: int) -> int:
    """Width of the compacted tensors: `kmax` if given (checked against the counts), else max count rounded up.

    Computing the maximum reads `counts` on the host (a device sync); pass `kmax=width` to avoid it.
    """
    if align < 1:
        raise ValueError(f"align must be >= 1, got {align}")
    if kmax is None:
        top = int(counts.max()) if counts.numel() else 0
        return min(_round_up(max(top, 1), align), _round_up(width, align))
    if kmax < 1:
        raise ValueError(f"kmax must be >= 1, got {kmax}")
    if kmax < width:
        top = int(counts.max()) if counts.numel() else 0
        if top > kmax:
            raise ValueError(f"kmax={kmax} is smaller than the largest active channel count {top}")
    return kmax


def expand_channel_mask(mask_groups: torch.Tensor, group_size: int) -> torch.Tensor:
    """Repeat each group decision over its G consecutive channels: `[N, n_groups] -> [N, n_groups * G]`."""
    return mask_groups.repeat_interleave(group_size, dim=1)


def compact_channels(h: torch.Tensor, idx: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Gather channels `idx` of a dense NHWC tensor `[N, H, W, w]` into `[N, H, W, Kmax]`, padding = 0."""
    n, kmax = idx.shape
    gathered = torch.gather(h, 3, idx.long()[:, None, None, :].expand(n, h.shape[1], h.shape[2], kmax))
    valid = torch.arange(kmax, device=idx.device)[None, :] < counts[:, None]
    return gathered * valid[:, None, None, :].to(h.dtype)


def slot_valid(idx: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Bool `[N, Kmax]`: which compacted slots hold an active channel (slot < count)."""
    return torch.arange(idx.shape[1], device=idx.device)[None, :] < counts[:, None]  # [N, Kmax]


# ---------------------------------------------------------------------------------------------------------------
# the ViT's token rows: selections and packings (the layout is described in `pack_ref.py`)


class Packing(NamedTuple):
    """Result of `pack_rows`: the computed rows' flat positions first (`pos` int64, `pos32` int32), their `count`,
    `keep` (the kept rows among them) and each sample's bounds `cu` (the layout is described in `pack_ref.py`)."""

    pos: torch.Tensor
    pos32: torch.Tensor
    count: torch.Tensor
    keep: torch.Tensor
    cu: torch.Tensor


def compact_positions(sel: torch.Tensor) -> torch.Tensor:
    """Stable partition along the last dim without host synchronisation: the positions of the True entries in order,
    then those of the False entries in order (an int64 permutation of ``range(sel.shape[-1])`` per row)."""
    n = sel.shape[-1]
    idx = torch.arange(n, device=sel.device).expand_as(sel)
    before = sel.to(torch.int64).cumsum(-1)  # selected entries up to and including each position
    count = before[..., -1:]
    dest = torch.where(sel, before - 1, count + idx - before)  # unselected: count + (unselected before it)
    return torch.empty_like(idx).scatter_(-1, dest, idx)


def check_pack_args(tokens: torch.Tensor | None, run: torch.Tensor | None, shape: tuple[int, int]) -> tuple[int, int]:
    """Raise ValueError unless tokens is bool (B, N) and run bool (B,) (either may be None); returns (B, N)."""
    b, n = shape
    if tokens is not None and (tokens.dtype != torch.bool or tuple(tokens.shape) != (b, n)):
        raise ValueError(f"tokens must be bool ({b}, {n}), got {tokens.dtype} {tuple(tokens.shape)}")
    if run is not None and (run.dtype != torch.bool or tuple(run.shape) != (b,)):
        raise ValueError(f"run must be bool ({b},), got {run.dtype} {tuple(run.shape)}")
    return b, n


def selection(tokens: torch.Tensor | None, run: torch.Tensor | None, shape: tuple[int, int],
              with_cls: bool = False, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sel, compute) bool (B, N): the rows kept (`tokens` of the samples in `run`) and the rows computed (`sel`,
    plus every sample's class token with `with_cls`)."""
    b, n = check_pack_args(tokens, run, shape)
    dev = device if device is not None else next((x.device for x in (tokens, run) if x is not None), None)
    sel = tokens.clone() if tokens is not None else torch.ones((b, n), dtype=torch.bool, device=dev)
    if run is not None:
        sel &= run[:, None]
    compute = sel.clone()
    if with_cls and n:
        compute[:, 0] = True
    return sel, compute
