"""Triton kernels of the masker ops: window sums of a map, and decisions + compacted window lists (one or two
launches).

The specification is `masker_ref.py`. What they replace in a deployed layer-skipping block: a torch `mean` over
every block input (a full extra read of each map) and about ten small launches per block for the GEMV, the threshold,
the rate, a stable argsort and the patch and pixel lists.

* `_window_sums_kernel`: program (window, channel tile[, pixel split]) streams the window's pixels and writes fp32
  sums (deterministic); with a pixel split (few, large windows: a whole map per sample) partial sums are added
  atomically into a zeroed buffer so that enough programs fill the GPU. Optionally applies ReLU in place (a projection
  block's final pass, which then also pools for free).
* `_window_tile_sums_kernel`: small windows (a spatial masker's S x stride, up to `_TILED_MAX_WINDOW`): program
  (run of consecutive windows, channel tile) loads, per window row, a `[windows, window columns, channels]` tile (each
  window column a contiguous run of channels) and reduces it; no atomics, one pass, enough bytes per load to stream
  the map at full bandwidth (the per-window kernel above moves only 2 KB per program, far below the memory bandwidth).
* `_masker_decide_kernel`: one GEMV row block per program: logits, threshold (or imposed decisions), and zeroes the
  active rows of the sums in place for the producer-side accumulation (`conv1x1_scatter_add(pool_out=)`). When one
  program holds every window (layer skipping at small batch) it also writes the lists, and `_compact_kernel` is not
  launched.
* `_channel_masker_kernel`: a channel masker's MLP (fc1, ReLU, fc2, threshold) on one sample per program, from
  the per-sample sums of its input: one launch where PyTorch takes five (two GEMMs, ReLU, bias, compare).
* `_compact_kernel`: stable partition of the decisions (active first) into `patch_idx`/`order`, count and rate. Each
  program counts the active windows before its chunk itself (a re-read of `T` bytes, from L2), so no grid-wide
  synchronisation and no host sync are needed: everything can be captured in a CUDA graph.
"""

import torch

from ._utils import LazyKernel, cdiv, check_nhwc, interpreter_enabled, next_power_of_2
from .indexing import MAP_WINDOW, MaskerDecisions, window_grid, window_size
from .masker_ref import check_channel_masker_args, check_decide_args

# No `from __future__ import annotations` here: Triton reads the `tl.constexpr` annotations of the kernels at runtime.
try:
    import triton.language as tl
except Exception:  # the reference path works without triton; the kernels below are then never launched

    class tl:  # noqa: N801 - stands in for triton.language so that the kernel definitions still evaluate
        constexpr = object


# Programs wanted for a memory-bound pass over a map: ~8 per SM on a ~130-SM GPU, so that enough loads are in flight.
_TARGET_PROGRAMS = 1024
# Largest window side summed by `_window_tile_sums_kernel` (one program's load spans a window's columns); larger
# windows (a layer masker's whole map) go through `_window_sums_kernel` with its pixel split.
_TILED_MAX_WINDOW = 16
# Elements per load of the tiled kernel (bf16: 8 KB).
_TILE_ELEMENTS = 4096


def _window_sums_kernel_src(
    x_ptr,  # NHWC [N, H, W, C] contiguous; ReLU'd in place when RELU
    out_ptr,  # fp32 [N*GH*GW, C]: written, or (ATOMIC) accumulated into a zeroed buffer
    H,
    W,
    C,
    K,  # window side (the map's larger side for a whole-map window)
    GH,
    GW,
    SPLIT,  # programs per window along its pixels (grid axis 2)
    RELU: tl.constexpr,
    ATOMIC: tl.constexpr,  # SPLIT > 1: several programs add into one row
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    win = tl.program_id(0)
    pid_c = tl.program_id(1)
    part = tl.program_id(2)
    g = GH * GW
    n = win // g
    cell = win - n * g
    i = cell // GW
    j = cell - i * GW
    cols = tl.minimum(W - j * K, K)  # partial windows at the bottom and right borders
    npix = tl.minimum(H - i * K, K) * cols
    rc = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = rc < C
    rp = tl.arange(0, BLOCK_P)
    acc = tl.full((BLOCK_P, BLOCK_C), 0.0, tl.float32)
    for t0 in range(part * BLOCK_P, npix, SPLIT * BLOCK_P):
        t = t0 + rp
        ok = t < npix
        dy = t // cols
        dx = t - dy * cols
        pix = ((n * H + i * K + dy) * W + j * K + dx).to(tl.int64) * C
        ptrs = x_ptr + pix[:, None] + rc[None, :]
        m = ok[:, None] & c_ok[None, :]
        v = tl.load(ptrs, mask=m, other=0.0).to(tl.float32)
        if RELU:
            v = tl.maximum(v, 0.0)
            tl.store(ptrs, v.to(x_ptr.dtype.element_ty), mask=m)
        acc += v
    s = tl.sum(acc, axis=0)
    dst = out_ptr + win.to(tl.int64) * C + rc
    if ATOMIC:
        tl.atomic_add(dst, s, mask=c_ok)
    else:
        tl.store(dst, s, mask=c_ok)


def _window_tile_sums_kernel_src(
    x_ptr,  # NHWC [N, H, W, C] contiguous; ReLU'd in place when RELU
    out_ptr,  # fp32 [N*GH*GW, C]
    R,  # windows, N*GH*GW
    H,
    W,
    C,
    K,  # window side
    GH,
    GW,
    RELU: tl.constexpr,
    BLOCK_J: tl.constexpr,  # windows per program
    BLOCK_X: tl.constexpr,  # next power of 2 of K: the window columns of one load
    BLOCK_C: tl.constexpr,
):
    win = tl.program_id(0) * BLOCK_J + tl.arange(0, BLOCK_J)
    rc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    rx = tl.arange(0, BLOCK_X)
    g = GH * GW
    n = win // g
    cell = win - n * g
    i = cell // GW
    j = cell - i * GW
    col = j[:, None] * K + rx[None, :]  # [J, X]
    ok_jx = (win < R)[:, None] & (rx < K)[None, :] & (col < W)
    m = ok_jx[:, :, None] & (rc < C)[None, None, :]
    acc = tl.full((BLOCK_J, BLOCK_X, BLOCK_C), 0.0, tl.float32)
    for dy in range(0, K):
        row = i * K + dy
        pix = (n * H + row)[:, None] * W + col  # [J, X]
        ptrs = x_ptr + pix.to(tl.int64)[:, :, None] * C + rc[None, None, :]
        mm = m & (row < H)[:, None, None]
        v = tl.load(ptrs, mask=mm, other=0.0).to(tl.float32)
        if RELU:
            v = tl.maximum(v, 0.0)
            tl.store(ptrs, v.to(x_ptr.dtype.element_ty), mask=mm)
        acc += v
    s = tl.sum(acc, axis=1)
    dst = out_ptr + win.to(tl.int64)[:, None] * C + rc[None, :]
    tl.store(dst, s, mask=(win < R)[:, None] & (rc < C)[None, :])


def _masker_decide_kernel_src(
    sums_ptr,  # fp32 [R, C] window sums, R = N*GH*GW; active rows zeroed in place when ZERO_ACTIVE
    w_ptr,  # fp32 [C] execute-minus-skip weight
    b_ptr,  # fp32 [1] execute-minus-skip bias
    forced_ptr,  # uint8 [R] imposed decisions (read when HAS_FORCED)
    keep_ptr,  # uint8 [R] out: decisions
    pidx_ptr,  # with COMPACT, the outputs of `_compact_kernel` (see there)
    order_ptr,
    cnt_ptr,
    rate_ptr,
    any_ptr,
    R,
    C,
    G,  # windows per sample, GH*GW
    GW,
    H,  # input map size and window side: each window's pixel count, the mean's divisor
    W,
    K,
    HAS_FORCED: tl.constexpr,
    ZERO_ACTIVE: tl.constexpr,
    COMPACT: tl.constexpr,  # one program holds every window: it also writes the lists (no `_compact_kernel`)
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < R
    rc = tl.arange(0, BLOCK_C)
    row = r.to(tl.int64) * C
    acc = tl.full((BLOCK_R, BLOCK_C), 0.0, tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + rc
        c_ok = c < C
        s = tl.load(sums_ptr + row[:, None] + c[None, :], mask=r_ok[:, None] & c_ok[None, :], other=0.0)
        w = tl.load(w_ptr + c, mask=c_ok, other=0.0)
        acc += s * w[None, :]
    cell = r % G
    i = cell // GW
    j = cell - i * GW
    cnt = tl.minimum(H - i * K, K) * tl.minimum(W - j * K, K)
    # w . (sum / cnt) + b  ==  (w . sum) / cnt + b, up to rounding
    logit = tl.sum(acc, axis=1) / cnt.to(tl.float32) + tl.load(b_ptr)
    keep = logit >= 0.0
    if HAS_FORCED:
        keep = tl.load(forced_ptr + r, mask=r_ok, other=0) != 0
    tl.store(keep_ptr + r, keep.to(tl.uint8), mask=r_ok)
    if COMPACT:
        k = (keep & r_ok).to(tl.int32)
        n_total = tl.sum(k, axis=0)
        _store_lists(r, k, tl.cumsum(k, axis=0) - k, n_total, R, G, GW, pidx_ptr, order_ptr, cnt_ptr, rate_ptr,
                     any_ptr, r_ok, True)
    if ZERO_ACTIVE:
        zero = tl.full((BLOCK_R, BLOCK_C), 0.0, tl.float32)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + rc
            tl.store(sums_ptr + row[:, None] + c[None, :], zero, mask=(r_ok & keep)[:, None] & (c < C)[None, :])


def _compact_kernel_src(
    keep_ptr,  # uint8 [T] decisions
    pidx_ptr,  # int32 [T, 3] out: (sample, row, col), active windows first
    order_ptr,  # int32 [T] out: the same list as flat window ids
    cnt_ptr,  # int32 [1] out: number of active windows
    rate_ptr,  # fp32 [1] out: count / T
    any_ptr,  # uint8 [1] out: count > 0 (a conditional CUDA-graph node's predicate)
    T,
    G,  # windows per sample
    GW,
    BLOCK: tl.constexpr,  # windows per program
):
    pid = tl.program_id(0)
    start = pid * BLOCK
    ar = tl.arange(0, BLOCK)
    # Every program counts all active windows and those before its own chunk: T bytes from L2, no grid sync.
    before = tl.full((BLOCK,), 0, tl.int32)
    total = tl.full((BLOCK,), 0, tl.int32)
    for t0 in range(0, T, BLOCK):
        t = t0 + ar
        k = tl.load(keep_ptr + t, mask=t < T, other=0).to(tl.int32)
        total += k
        before += tl.where(t < start, k, 0)
    n_total = tl.sum(total, axis=0)
    t = start + ar
    ok = t < T
    k = tl.load(keep_ptr + t, mask=ok, other=0).to(tl.int32)
    act = tl.cumsum(k, axis=0) - k + tl.sum(before, axis=0)  # active windows before t
    _store_lists(t, k, act, n_total, T, G, GW, pidx_ptr, order_ptr, cnt_ptr, rate_ptr, any_ptr, ok, pid == 0)


def _store_lists(t, k, act, n_total, T, G, GW, pidx_ptr, order_ptr, cnt_ptr, rate_ptr, any_ptr, ok, first):
    """Windows t (k: 1 if active, act: active windows before t, n_total: all active ones) to their list positions,
    active ones first and each group in order; the count, rate and any-active flag where `first`."""
    pos = tl.where(k > 0, act, n_total + t - act)
    smp = t // G
    cell = t - smp * G
    i = cell // GW
    tl.store(order_ptr + pos, t, mask=ok)
    tl.store(pidx_ptr + pos * 3, smp, mask=ok)
    tl.store(pidx_ptr + pos * 3 + 1, i, mask=ok)
    tl.store(pidx_ptr + pos * 3 + 2, cell - i * GW, mask=ok)
    tl.store(cnt_ptr, n_total, mask=first)
    tl.store(rate_ptr, n_total.to(tl.float32) / T, mask=first)
    tl.store(any_ptr, (n_total > 0).to(tl.uint8), mask=first)


_window_sums_kernel = LazyKernel(_window_sums_kernel_src)
def _channel_masker_kernel_src(
    sums_ptr,  # fp32 [N, C]
    w1_ptr,  # fp32 [HID, C]
    b1_ptr,  # fp32 [HID]
    w2_ptr,  # fp32 [G, HID]
    b2_ptr,  # fp32 [G]
    forced_ptr,  # uint8 [N, G] (read when HAS_FORCED)
    keep_ptr,  # uint8 [N, G] out
    C,
    HID,
    G,
    inv_pixels,
    HAS_FORCED: tl.constexpr,
    BLOCK_H: tl.constexpr,  # >= HID
    BLOCK_C: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    rh = tl.arange(0, BLOCK_H)
    h_ok = rh < HID
    acc = tl.full((BLOCK_H, BLOCK_C), 0.0, tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < C
        m = tl.load(sums_ptr + n * C + c, mask=c_ok, other=0.0)
        w = tl.load(w1_ptr + rh[:, None] * C + c[None, :], mask=h_ok[:, None] & c_ok[None, :], other=0.0)
        acc += w * m[None, :]
    # fc1(sums / pixels) == (w1 . sums) / pixels + b1, up to rounding
    hid = tl.maximum(tl.sum(acc, axis=1) * inv_pixels + tl.load(b1_ptr + rh, mask=h_ok, other=0.0), 0.0)
    for g0 in range(0, G, BLOCK_G):
        g = g0 + tl.arange(0, BLOCK_G)
        g_ok = g < G
        w2 = tl.load(w2_ptr + g[:, None] * HID + rh[None, :], mask=g_ok[:, None] & h_ok[None, :], other=0.0)
        logit = tl.sum(w2 * hid[None, :], axis=1) + tl.load(b2_ptr + g, mask=g_ok, other=0.0)
        keep = logit >= 0.0
        if HAS_FORCED:
            keep = tl.load(forced_ptr + n * G + g, mask=g_ok, other=0) != 0
        tl.store(keep_ptr + n * G + g, keep.to(tl.uint8), mask=g_ok)


_channel_masker_kernel = LazyKernel(_channel_masker_kernel_src)
_window_tile_sums_kernel = LazyKernel(_window_tile_sums_kernel_src)
_masker_decide_kernel = LazyKernel(_masker_decide_kernel_src, helpers=(_store_lists,))
_compact_kernel = LazyKernel(_compact_kernel_src, helpers=(_store_lists,))


def window_sums_triton(x: torch.Tensor, window: int, relu: bool = False, *, split: int | None = None) -> torch.Tensor:
    """Triton kernel of `window_sums_ref`. Same arguments and result.

    Args:
        split: programs per window along its pixels (default: enough programs to fill the GPU; 1 is deterministic).
            Giving it selects the per-window kernel; by default windows of side up to `_TILED_MAX_WINDOW` go through
            the tiled one (deterministic).
    """
    check_nhwc(x, "x")
    n, h, w, c = x.shape
    gh, gw = window_grid((h, w), window)
    k = window_size((h, w), window)
    windows = n * gh * gw
    interp = interpreter_enabled()
    if split is None and window != MAP_WINDOW and k <= _TILED_MAX_WINDOW:
        return _window_tile_sums(x, k, (gh, gw), relu, interp)
    window_pixels = min(k, h) * min(k, w)
    block_c = min(16 if interp else 64, next_power_of_2(c))
    block_p = min(16 if interp else 64, next_power_of_2(window_pixels))  # small windows: no idle lanes
    c_tiles = cdiv(c, block_c)
    max_chunks = cdiv(window_pixels, block_p)
    if split is None:
        split = 1 if interp else max(1, min(cdiv(_TARGET_PROGRAMS, max(windows * c_tiles, 1)), max_chunks))
    if split < 1:
        raise ValueError(f"split must be >= 1, got {split}")
    atomic = split > 1
    out = (torch.zeros if atomic else torch.empty)((n, gh, gw, c), dtype=torch.float32, device=x.device)
    if windows == 0 or c == 0:
        return out.zero_()
    _window_sums_kernel[(windows, c_tiles, split)](
        x, out, h, w, c, k, gh, gw, split,
        RELU=relu, ATOMIC=atomic, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=1 if interp else 4,
    )  # fmt: skip
    return out


def _window_tile_sums(x: torch.Tensor, k: int, grid: tuple[int, int], relu: bool, interp: bool) -> torch.Tensor:
    """`_window_tile_sums_kernel` on an NHWC map with windows of side `k` (grid `(gh, gw)`)."""
    n, h, w, c = x.shape
    gh, gw = grid
    out = torch.empty((n, gh, gw, c), dtype=torch.float32, device=x.device)
    windows = n * gh * gw
    if windows == 0 or c == 0:
        return out.zero_()
    block_x = next_power_of_2(k)
    block_c = min(16 if interp else 128, next_power_of_2(c))
    block_j = max(1, min(8 if interp else _TILE_ELEMENTS // (block_x * block_c), next_power_of_2(windows)))
    _window_tile_sums_kernel[(cdiv(windows, block_j), cdiv(c, block_c))](
        x, out, windows, h, w, c, k, gh, gw,
        RELU=relu, BLOCK_J=block_j, BLOCK_X=block_x, BLOCK_C=block_c, num_warps=1 if interp else 4,
    )  # fmt: skip
    return out


def masker_decide_triton(
    sums: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    in_hw: tuple[int, int],
    window: int,
    forced: torch.Tensor | None = None,
    zero_active: bool = False,
) -> MaskerDecisions:
    """Triton kernels of `masker_decide_ref` (one launch where one program holds every window, e.g. layer skipping
    at batch 1; two otherwise). Same arguments and result."""
    n, gh, gw, c = check_decide_args(sums, weight, bias, in_hw, window, forced)
    dev = sums.device
    for name, t in (("weight", weight), ("bias", bias), ("forced", forced)):
        if t is not None and t.device != dev:
            raise ValueError(f"masker {name} is on {t.device} but the sums are on {dev}")
    t_cap = n * gh * gw
    keep = torch.empty(t_cap, dtype=torch.uint8, device=dev)
    patch_idx = torch.empty((t_cap, 3), dtype=torch.int32, device=dev)
    order = torch.empty(t_cap, dtype=torch.int32, device=dev)
    # written by the compaction kernel's first program (no fill launches: two fewer kernels per block)
    count = (torch.empty if t_cap else torch.zeros)(1, dtype=torch.int32, device=dev)
    rate = (torch.empty if t_cap else torch.zeros)(1, dtype=torch.float32, device=dev)
    active = (torch.empty if t_cap else torch.zeros)(1, dtype=torch.uint8, device=dev)
    if t_cap:
        interp = interpreter_enabled()
        block_c = min(16 if interp else 2048, next_power_of_2(c))
        # One row block per program; a whole row of up to 2048 channels in one load (8 KB): no serial C loop, so
        # the 128 layer decisions of a batch run as 128 one-load programs.
        block_r = min(next_power_of_2(t_cap), 16 if interp else max(1, 2048 // block_c))
        forced_u8 = forced.reshape(-1).contiguous().view(torch.uint8) if forced is not None else keep
        h, w = in_hw
        programs = cdiv(t_cap, block_r)
        _masker_decide_kernel[(programs,)](
            sums, weight.contiguous(), bias.reshape(1), forced_u8, keep, patch_idx, order, count, rate, active,
            t_cap, c, gh * gw, gw, h, w, window_size(in_hw, window),
            HAS_FORCED=forced is not None, ZERO_ACTIVE=zero_active, COMPACT=programs == 1, BLOCK_R=block_r,
            BLOCK_C=block_c, num_warps=1 if interp else 4,
        )  # fmt: skip
        if programs > 1:  # the lists need every program's decisions: a second launch
            block = 16 if interp else 1024
            _compact_kernel[(cdiv(t_cap, block),)](
                keep, patch_idx, order, count, rate, active, t_cap, gh * gw, gw, BLOCK=block,
                num_warps=1 if interp else 4,
            )
    return MaskerDecisions(keep.view(torch.bool).view(n, gh, gw), patch_idx, order, count, rate.view(()),
                           active.view(torch.bool).view(()))


def channel_masker_triton(
    sums: torch.Tensor,
    pixels: int,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    forced: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton kernel of `channel_masker_ref` (one launch). Same arguments and result."""
    n, c, hidden, groups = check_channel_masker_args(sums, pixels, w1, b1, w2, b2, forced)
    for name, t in (("fc1 weight", w1), ("fc1 bias", b1), ("fc2 weight", w2), ("fc2 bias", b2), ("forced", forced)):
        if t is not None and t.device != sums.device:
            raise ValueError(f"channel masker {name} is on {t.device} but the sums are on {sums.device}")
    keep = torch.empty((n, groups), dtype=torch.uint8, device=sums.device)
    if n and groups:
        interp = interpreter_enabled()
        block_h = next_power_of_2(hidden)
        block_c = min(16 if interp else max(16, 4096 // block_h), next_power_of_2(c))
        block_g = min(16 if interp else max(16, 4096 // block_h), next_power_of_2(groups))
        forced_u8 = forced.contiguous().view(torch.uint8) if forced is not None else keep
        _channel_masker_kernel[(n,)](
            sums, w1.contiguous(), b1, w2.contiguous(), b2, forced_u8, keep, c, hidden, groups, 1.0 / pixels,
            HAS_FORCED=forced is not None, BLOCK_H=block_h, BLOCK_C=block_c, BLOCK_G=block_g,
            num_warps=1 if interp else 4,
        )  # fmt: skip
    return keep.view(torch.bool)
