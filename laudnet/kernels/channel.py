"""Channel-skipping bottleneck ops: fused Triton kernels over per-sample compacted channels, batch > 1.

LAUDNet (Han et al., TPAMI 2024) lets each sample keep only some groups of ``G`` consecutive channels of a
bottleneck's width. The official code multiplies dense outputs by the mask; here the skipped work is not done:

1. ``channel_index`` turns the group mask into per-sample compacted channel indices ``idx [N, Kmax]`` + ``counts``.
2. ``channel_conv1x1_out``: conv1 computes only the active output channels (rows of ``w1`` gathered), bias + ReLU
   fused, written compacted ``[N, H, W, Kmax]``.
3. ``channel_conv3x3``: implicit GEMM over the 3x3 window (zero padding 1, stride 1 or 2) reading compacted inputs
   and gathering the active rows *and* columns of ``w2``, bias + ReLU fused, written compacted.
4. ``channel_conv1x1_in``: conv3 reads only the active input channels (columns of ``w3`` gathered), bias, residual
   add and ReLU fused, in place allowed.

Each sample is its own small GEMM (a grouped GEMM with one problem per sample): program ``(slot tile, pixel tile,
sample)`` loops over the sample's own active channels only, so the work follows each sample's count. Bucketing samples
by identical pattern would let cuDNN run shared GEMMs, but with per-sample masks almost every pattern is unique, so
the per-sample kernels are the engine.

Use G >= 8 (the 3x3 weight gather gets 16-byte loads; G = 1 is several times slower), ``kmax = width`` (no host
sync) and CUDA graphs: the default ``kmax`` reads the counts on the host, a synchronisation per block in eager mode.
Measured speeds against static blocks are in the README.

The spec is ``channel_ref.py``; the public ops (``laudnet.kernels.channel_index`` ..., also importable from here)
choose between the launchers here (``*_triton``) and the reference in ``dispatch.py``, like every other op:
``impl="triton"|"reference"`` (alias ``"torch"``) or ``LAUDNET_KERNELS`` forces a path (the kernel on CPU tensors
under ``TRITON_INTERPRET=1``, as CI tests it).

Weights are taken in PyTorch's logical layouts (``w1 [w, Cin]``, ``w2 [w, w, 3, 3]``, ``w3 [Cout, w]``) with any
strides; ``pack_bottleneck_weights`` returns views of the same logical shapes whose memory layout makes the kernels'
weight gathers contiguous (``w2`` stored ``[3, 3, w_in, w_out]``, ``w3`` stored ``[w, Cout]``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from laudnet.kernels._utils import (
    GemmConfig,
    LazyKernel,
    cdiv,
    interpreter_enabled,
    next_power_of_2,
    pick_config,
    resolve_config,
)
from laudnet.kernels.channel_ref import (
    check_conv1x1_in_args,
    check_conv1x1_out_args,
    check_conv3x3_args,
)

# The public ops choose between these launchers and `channel_ref` in `dispatch.py`; deploy and the benchmarks call
# them, and pack the weights, from here.
from laudnet.kernels.dispatch import channel_conv1x1_in as channel_conv1x1_in
from laudnet.kernels.dispatch import channel_conv1x1_out as channel_conv1x1_out
from laudnet.kernels.dispatch import channel_conv3x3 as channel_conv3x3
from laudnet.kernels.dispatch import channel_index as channel_index
from laudnet.kernels.indexing import check_mask_groups, resolve_kmax
from laudnet.kernels.weights import pack_bottleneck_weights as pack_bottleneck_weights

try:  # Triton is optional: without it every op runs the reference.
    import triton.language as tl
except Exception:  # the kernels below are then never launched

    class tl:  # noqa: N801 - stands in for triton.language so that the kernel definitions still evaluate
        constexpr = object


__all__ = [
    "channel_index",
    "channel_conv1x1_out",
    "channel_conv3x3",
    "channel_conv1x1_in",
    "channel_index_triton",
    "channel_conv1x1_out_triton",
    "channel_conv3x3_triton",
    "channel_conv1x1_in_triton",
    "pack_bottleneck_weights",
]


# ----------------------------------------------------------------------------------------------------------------
# helpers


def _vec_width(group_size: int) -> int:
    """Largest power of two <= 8 dividing G: idx holds aligned runs of that many consecutive channels."""
    vec = 1
    while vec < 8 and group_size % (2 * vec) == 0:
        vec *= 2
    return vec


# ----------------------------------------------------------------------------------------------------------------
# kernels

def _channel_index_kernel_src(
    mask_ptr,  # [N, n_groups] bool group mask
    idx_ptr,  # [N, KMAX] int32 out: active channel ids, compacted, padding 0
    cnt_ptr,  # [N] int32 out: active channel count
    n_groups,
    KMAX,
    stride_mn,  # mask row stride
    stride_in,  # idx row stride
    G: tl.constexpr,  # channels per group
    G_P2: tl.constexpr,  # next power of two >= G (tl.arange needs one)
    BLOCK_G: tl.constexpr,  # >= n_groups, power of two
    BLOCK_K: tl.constexpr,  # padding chunk
):
    n = tl.program_id(0)
    g = tl.arange(0, BLOCK_G)
    keep = tl.load(mask_ptr + n * stride_mn + g, mask=g < n_groups, other=0).to(tl.int32)
    first_slot = (tl.cumsum(keep, axis=0) - keep) * G  # exclusive prefix sum: where group g's channels go
    count = tl.sum(keep, axis=0) * G
    t = tl.arange(0, G_P2)
    row = idx_ptr + n * stride_in
    tl.store(
        row + first_slot[:, None] + t[None, :],
        g[:, None] * G + t[None, :],
        mask=(keep[:, None] > 0) & (t[None, :] < G),
    )
    for k0 in range(0, KMAX, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        tl.store(row + k, tl.full([BLOCK_K], 0, tl.int32), mask=(k >= count) & (k < KMAX))
    tl.store(cnt_ptr + n, count)

def _conv1x1_out_kernel_src(
    x_ptr,  # [N, P, CIN] block input, NHWC contiguous (P = H * W)
    w_ptr,  # [w, CIN] conv1 weight (logical), strides stride_wo, stride_wi
    b_ptr,  # [w] conv1 bias
    idx_ptr,  # [N, KMAX] int32 active channel ids
    cnt_ptr,  # [N] int32 active counts
    y_ptr,  # [N, P, KMAX] compacted output
    P,
    CIN,
    KMAX,
    stride_wo,
    stride_wi,
    stride_in,  # idx row stride
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    EVEN_K: tl.constexpr,  # CIN % BK == 0: no K masks
):
    pid_n = tl.program_id(0)  # slot tile: fastest, so the x tile is reused from L2 across slot tiles
    pid_m = tl.program_id(1)
    n = tl.program_id(2)
    cnt = tl.load(cnt_ptr + n)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    m_ok = offs_m < P
    slot_ok = offs_n < cnt
    co = tl.load(idx_ptr + n * stride_in + offs_n, mask=slot_ok, other=0)
    x_row = x_ptr + n.to(tl.int64) * P * CIN + offs_m[:, None] * CIN
    w_row = w_ptr + co[:, None] * stride_wo
    # slot tiles past the count do no GEMM: they only write the zero padding
    k_end = tl.where(pid_n * BN < cnt, CIN, 0)
    acc = tl.full([BM, BN], 0.0, tl.float32)
    for k0 in range(0, k_end, BK):
        kk = k0 + offs_k
        if EVEN_K:
            a = tl.load(x_row + kk[None, :], mask=m_ok[:, None], other=0.0)
            b = tl.load(w_row + kk[None, :] * stride_wi, mask=slot_ok[:, None], other=0.0)
        else:
            k_ok = kk < CIN
            a = tl.load(x_row + kk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(w_row + kk[None, :] * stride_wi, mask=slot_ok[:, None] & k_ok[None, :], other=0.0)
        acc = tl.dot(a, tl.trans(b), acc)
    bias = tl.load(b_ptr + co, mask=slot_ok, other=0.0).to(tl.float32)
    acc = tl.maximum(acc + bias[None, :], 0.0)  # padding slots: relu(0 + 0) = 0
    y = y_ptr + n.to(tl.int64) * P * KMAX + offs_m[:, None] * KMAX + offs_n[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & (offs_n < KMAX)[None, :])

def _conv3x3_kernel_src(
    h_ptr,  # [N, H, W, KMAX] compacted conv1 output
    w_ptr,  # [w, w, 3, 3] conv2 weight (logical), strides below
    b_ptr,  # [w] conv2 bias
    idx_ptr,  # [N, KMAX] int32 active channel ids (aligned runs of VEC consecutive channels)
    cnt_ptr,  # [N] int32 active counts
    y_ptr,  # [N, HO, WO, KMAX] compacted output
    H,
    W,
    HO,
    WO,
    KMAX,
    stride_wo,  # w2 stride along output channels (1 in the packed layout)
    stride_wi,  # along input channels
    stride_wh,  # along kernel rows
    stride_ww,  # along kernel columns
    stride_in,  # idx row stride
    STRIDE: tl.constexpr,  # conv stride, 1 or 2
    VEC: tl.constexpr,  # idx comes in aligned runs of VEC consecutive channels (VEC | G)
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    n = tl.program_id(2)
    cnt = tl.load(cnt_ptr + n)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    m_ok = offs_m < HO * WO
    ho = offs_m // WO
    wo = offs_m % WO
    slot_ok = offs_n < cnt
    idx_row = idx_ptr + n * stride_in
    # Output channel of each slot, rebuilt from the first slot of its run: it is then provably VEC-contiguous,
    # which lets the weight-column gather use VEC-wide loads.
    lead = offs_n - offs_n % VEC
    co = tl.load(idx_row + lead, mask=slot_ok, other=0) + offs_n % VEC
    co = tl.max_contiguous(tl.multiple_of(co, VEC), VEC)
    h_img = h_ptr + n.to(tl.int64) * H * W * KMAX
    # one flat loop over (tap, K chunk) so that Triton software-pipelines all 9 * ceil(cnt / BK) steps
    k_end = tl.where(pid_n * BN < cnt, cnt, 0)
    n_kc = (k_end + BK - 1) // BK
    acc = tl.full([BM, BN], 0.0, tl.float32)
    for t in range(0, 9 * n_kc):
        tap = t // n_kc
        k0 = (t - tap * n_kc) * BK
        kh = tap // 3
        kw = tap - kh * 3
        hi = ho * STRIDE - 1 + kh
        wi = wo * STRIDE - 1 + kw
        pix_ok = m_ok & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
        kk = k0 + offs_k
        k_ok = kk < k_end
        ci = tl.load(idx_row + kk, mask=k_ok, other=0)
        # Masks only where the vector width survives: A's K mask is `kk < KMAX` (the padding slots between
        # the count and KMAX hold zeros, and B's rows past the count are masked to 0 anyway), B is masked by
        # rows only (slots past the count read channel idx 0.., a valid address, and are zeroed below).
        a = tl.load(
            h_img + (hi * W + wi)[:, None] * KMAX + kk[None, :],
            mask=pix_ok[:, None] & (kk < KMAX)[None, :],
            other=0.0,
        )
        b = tl.load(
            w_ptr + kh * stride_wh + kw * stride_ww + ci[:, None] * stride_wi + co[None, :] * stride_wo,
            mask=k_ok[:, None],
            other=0.0,
        )
        acc = tl.dot(a, b, acc)
    bias = tl.load(b_ptr + co, mask=slot_ok, other=0.0).to(tl.float32)
    acc = tl.where(slot_ok[None, :], tl.maximum(acc + bias[None, :], 0.0), 0.0)
    y = y_ptr + n.to(tl.int64) * HO * WO * KMAX + offs_m[:, None] * KMAX + offs_n[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & (offs_n < KMAX)[None, :])

def _conv1x1_in_kernel_src(
    h_ptr,  # [N, P, KMAX] compacted conv2 output
    w_ptr,  # [COUT, w] conv3 weight (logical), strides stride_wo, stride_wi
    b_ptr,  # [COUT] conv3 bias
    idx_ptr,  # [N, KMAX] int32 active channel ids
    cnt_ptr,  # [N] int32 active counts
    r_ptr,  # [N, P, COUT] residual, NHWC contiguous
    o_ptr,  # [N, P, COUT] output; may be r_ptr (each element is read, then written, by the same program)
    pool_ptr,  # fp32 [N, COUT]: per-sample sums of the stored output added atomically (POOL)
    P,
    COUT,
    KMAX,
    stride_wo,
    stride_wi,
    stride_in,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    PREFETCH: tl.constexpr,  # load the residual tile before the (short) K loop so that its latency overlaps it
    POOL: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    n = tl.program_id(2)
    cnt = tl.load(cnt_ptr + n)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    m_ok = offs_m < P
    n_ok = offs_n < COUT
    idx_row = idx_ptr + n * stride_in
    h_row = h_ptr + n.to(tl.int64) * P * KMAX + offs_m[:, None] * KMAX
    io = n.to(tl.int64) * P * COUT + offs_m[:, None] * COUT + offs_n[None, :]
    io_ok = m_ok[:, None] & n_ok[None, :]
    if PREFETCH:
        res = tl.load(r_ptr + io, mask=io_ok, other=0.0)
    acc = tl.full([BM, BN], 0.0, tl.float32)
    for k0 in range(0, cnt, BK):
        kk = k0 + offs_k
        k_ok = kk < cnt
        ci = tl.load(idx_row + kk, mask=k_ok, other=0)
        # K mask `kk < KMAX` keeps 16-byte loads; slots past the count are zero padding (B rows there are 0 too)
        a = tl.load(h_row + kk[None, :], mask=m_ok[:, None] & (kk < KMAX)[None, :], other=0.0)
        b = tl.load(
            w_ptr + ci[:, None] * stride_wi + offs_n[None, :] * stride_wo,
            mask=k_ok[:, None] & n_ok[None, :],
            other=0.0,
        )
        acc = tl.dot(a, b, acc)
    bias = tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
    if not PREFETCH:
        res = tl.load(r_ptr + io, mask=io_ok, other=0.0)
    out = tl.maximum(acc + bias[None, :] + res.to(tl.float32), 0.0).to(o_ptr.dtype.element_ty)
    tl.store(o_ptr + io, out, mask=io_ok)
    if POOL:  # the next channel masker's pooling: sums of the values as stored
        part = tl.sum(tl.where(io_ok, out.to(tl.float32), 0.0), axis=0)
        tl.atomic_add(pool_ptr + n.to(tl.int64) * COUT + offs_n, part, mask=n_ok)


_channel_index_kernel = LazyKernel(_channel_index_kernel_src)
_conv1x1_out_kernel = LazyKernel(_conv1x1_out_kernel_src)
_conv3x3_kernel = LazyKernel(_conv3x3_kernel_src)
_conv1x1_in_kernel = LazyKernel(_conv1x1_in_kernel_src)


# ----------------------------------------------------------------------------------------------------------------
# launchers: Triton implementations of the `channel_ref` ops, same arguments (+ `config`) and results


def channel_index_triton(
    mask_groups: torch.Tensor, group_size: int, kmax: int | None = None, align: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton kernel of `channel_index_ref` (one launch; the default `kmax` reads the counts on the host)."""
    check_mask_groups(mask_groups, group_size)
    mask_groups = mask_groups.contiguous()
    n, n_groups = mask_groups.shape
    width = n_groups * group_size
    if kmax is None or kmax < width:
        counts = mask_groups.sum(1, dtype=torch.int32) * group_size
        kmax = resolve_kmax(counts, width, kmax, align)
    idx = torch.empty(n, kmax, dtype=torch.int32, device=mask_groups.device)
    counts = torch.empty(n, dtype=torch.int32, device=mask_groups.device)
    if n:
        _channel_index_kernel[(n,)](
            mask_groups,
            idx,
            counts,
            n_groups,
            kmax,
            mask_groups.stride(0),
            idx.stride(0),
            G=group_size,
            G_P2=next_power_of_2(group_size),
            BLOCK_G=next_power_of_2(max(n_groups, 1)),
            BLOCK_K=min(1024, next_power_of_2(kmax)),
            num_warps=1 if interpreter_enabled() else 4,
        )
    return idx, counts


def channel_conv1x1_out_triton(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    idx: torch.Tensor,
    counts: torch.Tensor,
    config: GemmConfig | Mapping[str, int] | None = None,
) -> torch.Tensor:
    """Triton kernel of `channel_conv1x1_out_ref`. `config`: the tiles, a `GemmConfig` or a mapping overriding the
    default's (`BM, BN, BK, num_warps, num_stages`)."""
    w2d = check_conv1x1_out_args(x, w1, b1, idx, counts)
    n, height, width, cin = x.shape
    kmax = idx.shape[1]
    p = height * width
    y = torch.empty(n, height, width, kmax, dtype=x.dtype, device=x.device)
    cfg = resolve_config(config, pick_config("channel_conv1x1_out", p, cin, kmax))
    grid = (cdiv(kmax, cfg.block_n), cdiv(p, cfg.block_m), n)
    if n and p:
        _conv1x1_out_kernel[grid](
            x, w2d, b1, idx, counts, y,
            p, cin, kmax, w2d.stride(0), w2d.stride(1), idx.stride(0),
            BM=cfg.block_m, BN=cfg.block_n, BK=cfg.block_k, EVEN_K=cin % cfg.block_k == 0,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )  # fmt: skip
    return y


def channel_conv3x3_triton(
    h: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    idx: torch.Tensor,
    counts: torch.Tensor,
    stride: int = 1,
    group_size: int = 1,
    config: GemmConfig | Mapping[str, int] | None = None,
) -> torch.Tensor:
    """Triton implicit GEMM of `channel_conv3x3_ref` (ungrouped convs). `group_size`: the G that built `idx` (it
    only enables wider weight loads; any divisor of G is correct); `config` as for `channel_conv1x1_out_triton`."""
    check_conv3x3_args(h, w2, b2, idx, counts, stride, group_size)
    n, height, width, kmax = h.shape
    ho, wo = (height - 1) // stride + 1, (width - 1) // stride + 1
    y = torch.empty(n, ho, wo, kmax, dtype=h.dtype, device=h.device)
    cfg = resolve_config(config, pick_config("channel_conv3x3", ho * wo, kmax, kmax))
    # VEC-wide weight loads are only valid when w2 is contiguous along output channels
    vec = _vec_width(group_size) if w2.stride(0) == 1 else 1
    vec = min(vec, cfg.block_n)
    grid = (cdiv(kmax, cfg.block_n), cdiv(ho * wo, cfg.block_m), n)
    if n and ho * wo:
        _conv3x3_kernel[grid](
            h, w2, b2, idx, counts, y,
            height, width, ho, wo, kmax,
            w2.stride(0), w2.stride(1), w2.stride(2), w2.stride(3), idx.stride(0),
            STRIDE=stride, VEC=vec, BM=cfg.block_m, BN=cfg.block_n, BK=cfg.block_k,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )  # fmt: skip
    return y


def channel_conv1x1_in_triton(
    h: torch.Tensor,
    w3: torch.Tensor,
    b3: torch.Tensor,
    idx: torch.Tensor,
    counts: torch.Tensor,
    residual: torch.Tensor,
    out: torch.Tensor | None = None,
    config: GemmConfig | Mapping[str, int] | None = None,
    pool_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton kernel of `channel_conv1x1_in_ref`. `config` as for `channel_conv1x1_out_triton`; a mapping may also
    give `PREFETCH` (load the residual tile before the GEMM loop; default True)."""
    w2d = check_conv1x1_in_args(h, w3, b3, idx, counts, residual, out, pool_out)
    n, height, width, kmax = h.shape
    cout = w2d.shape[0]
    p = height * width
    o = torch.empty_like(residual) if out is None else out
    # prefetching the residual hides its load behind the (short) K loop: on by default, a mapping's PREFETCH overrides
    prefetch = True
    if config is not None and not isinstance(config, GemmConfig):
        config = dict(config)
        prefetch = bool(config.pop("PREFETCH", True))
    cfg = resolve_config(config, pick_config("channel_conv1x1_in", p, kmax, cout))
    grid = (cdiv(cout, cfg.block_n), cdiv(p, cfg.block_m), n)
    if n and p:
        _conv1x1_in_kernel[grid](
            h, w2d, b3, idx, counts, residual, o, pool_out if pool_out is not None else b3,
            p, cout, kmax, w2d.stride(0), w2d.stride(1), idx.stride(0),
            BM=cfg.block_m, BN=cfg.block_n, BK=cfg.block_k, PREFETCH=prefetch, POOL=pool_out is not None,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )  # fmt: skip
    return o
