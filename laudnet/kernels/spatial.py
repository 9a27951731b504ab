"""Triton kernels for spatial skipping: implicit-GEMM 3x3 conv over active patches, 1x1 conv + scatter-add + ReLU
into the residual (optionally summing the written values per patch for the next block's masker), and a 1x1 conv over
a pixel list (or over all pixels of a list of samples, for layer skipping).

Conventions (NHWC maps, `patch_idx`, gathered row order, packed weights) are those of `spatial_ref.py`, which is the
specification; each launcher here (1) checks shapes, (2) allocates the output, (3) launches (Triton tutorial 03).
Every GEMM accumulates in fp32; operands are the map's dtype (bf16/fp16 on GPU, fp32 under the interpreter).
Pixel offsets are computed in int32 before widening, so a map needs N*H*W < 2^31 (ResNet at batch 128: 1.6e6).

The default tiles (`_utils.pick_config`) were chosen by sweeps over the ResNet stage shapes.
"""

import torch

from ._utils import CONV1X1_CONFIGS as CONV1X1_CONFIGS  # the benchmarks sweep them from here
from ._utils import CONV3X3_CONFIGS as CONV3X3_CONFIGS
from ._utils import (
    GemmConfig,
    LazyKernel,
    check_bias,
    check_count,
    check_nhwc,
    check_patch_idx,
    gemm_grid,
    pick_config,
)
from .indexing import conv_out_size, patch_grid
from .spatial_ref import check_pool_out
from .weights import conv1x1_matrix, pack_conv3x3_weight

# No `from __future__ import annotations` here: Triton reads the `tl.constexpr` annotations of the kernels at runtime.
try:
    import triton.language as tl
except Exception:  # the reference path works without triton; the kernels below are then never launched

    class tl:  # noqa: N801 - stands in for triton.language so that the kernel definitions still evaluate
        constexpr = object


# ---------------------------------------------------------------------------------------------------------------
# kernels


def _gather_conv3x3_kernel_src(
    x_ptr,  # h1, NHWC [NB, H, W, C_IN] contiguous
    w_ptr,  # packed weight [9*C_IN, C_OUT]; row = (ky*3 + kx)*C_IN + ci
    b_ptr,  # bias [C_OUT] (unused without HAS_BIAS)
    pidx_ptr,  # int32 [P, 3]: (sample, patch_row, patch_col)
    y_ptr,  # output [M = P*S*S, C_OUT], row p*S*S + dy*S + dx
    cnt_ptr,  # int32 [1]: number of valid patches when HAS_COUNT (the rest of pidx is padding)
    M,
    H,
    W,
    HO,
    WO,
    C_IN,
    C_OUT,
    S,  # patch size
    STRIDE,  # 1 or 2
    HAS_BIAS: tl.constexpr,
    RELU: tl.constexpr,
    EVEN_K: tl.constexpr,  # C_IN % BLOCK_K == 0: no channel mask, so loads stay 16-byte vectors
    HAS_COUNT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # N tiles vary fastest so that the programs sharing one set of halo rows run together (L2 reuse).
    pid = tl.program_id(0)
    num_n = (C_OUT + BLOCK_N - 1) // BLOCK_N
    pid_m = pid // num_n
    pid_n = pid % num_n
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    ss = S * S
    if HAS_COUNT:  # sync-free launch: the grid covers the capacity, the valid count is read on the device
        M = tl.load(cnt_ptr) * ss
        if pid_m * BLOCK_M >= M:  # a tile past the valid rows: nothing to read or write
            return
    row_ok = rm < M
    n_ok = rn < C_OUT
    # Decode each gathered row into its output pixel once; the K loop only adds the tap offset.
    p = rm // ss
    r = rm - p * ss
    dy = r // S
    dx = r - dy * S
    smp = tl.load(pidx_ptr + p * 3, mask=row_ok, other=0)
    prow = tl.load(pidx_ptr + p * 3 + 1, mask=row_ok, other=0)
    pcol = tl.load(pidx_ptr + p * 3 + 2, mask=row_ok, other=0)
    oy = prow * S + dy
    ox = pcol * S + dx
    pix_ok = row_ok & (oy < HO) & (ox < WO)
    iy0 = oy * STRIDE - 1  # padding 1
    ix0 = ox * STRIDE - 1
    k_tiles = (C_IN + BLOCK_K - 1) // BLOCK_K
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    # One flat loop over (tap, channel tile) so the compiler pipelines loads across taps.
    for i in range(0, 9 * k_tiles):
        tap = i // k_tiles
        c0 = (i - tap * k_tiles) * BLOCK_K
        ky = tap // 3
        kx = tap - ky * 3
        iy = iy0 + ky
        ix = ix0 + kx
        ok = pix_ok & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)  # zero padding at the map's borders
        src = ((smp * H + iy) * W + ix).to(tl.int64) * C_IN + c0
        kk = c0 + rk
        wrow = (tap * C_IN + kk).to(tl.int64) * C_OUT
        if EVEN_K:
            a = tl.load(x_ptr + src[:, None] + rk[None, :], mask=ok[:, None], other=0.0)
            b = tl.load(w_ptr + wrow[:, None] + rn[None, :], mask=n_ok[None, :], other=0.0)
        else:
            k_ok = kk < C_IN
            a = tl.load(x_ptr + src[:, None] + rk[None, :], mask=ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(w_ptr + wrow[:, None] + rn[None, :], mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    acc = tl.where(pix_ok[:, None], acc, 0.0)  # pixels beyond the map are defined as 0
    dst = rm.to(tl.int64)[:, None] * C_OUT + rn[None, :]
    tl.store(y_ptr + dst, acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])


def _conv1x1_scatter_add_kernel_src(
    a_ptr,  # gathered activations [M = P*S*S, K]
    w_ptr,  # packed weight [K, C_OUT]
    b_ptr,  # bias [C_OUT] (unused without HAS_BIAS)
    res_ptr,  # residual, NHWC [NB, HO, WO, C_OUT]
    out_ptr,  # output, NHWC like residual (may be the same memory: each element is read then written by one program)
    pidx_ptr,  # int32 [P, 3]
    cnt_ptr,  # int32 [1]: number of valid patches when HAS_COUNT
    pool_ptr,  # fp32 [NB*GH*GW, C_OUT]: per-patch sums of the written values are added here (POOL > 0)
    M,
    K,
    HO,
    WO,
    C_OUT,
    S,
    GH,  # patch grid of the output map (rows of pool_ptr per sample: GH*GW)
    GW,
    HAS_BIAS: tl.constexpr,
    RELU: tl.constexpr,
    EVEN_K: tl.constexpr,  # K % BLOCK_K == 0
    HAS_COUNT: tl.constexpr,
    POOL: tl.constexpr,  # 0: no sums; 1: loop over the patches a tile touches; 2: one reduction over SEG-row segments
    SEG: tl.constexpr,  # S*S when POOL == 2 (a power of two dividing BLOCK_M)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    num_n = (C_OUT + BLOCK_N - 1) // BLOCK_N
    pid_m = pid // num_n
    pid_n = pid % num_n
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    ss = S * S
    if HAS_COUNT:
        M = tl.load(cnt_ptr) * ss
        if pid_m * BLOCK_M >= M:  # a tile past the valid rows: nothing to read or write
            return
    row_ok = rm < M
    n_ok = rn < C_OUT
    p = rm // ss
    r = rm - p * ss
    dy = r // S
    dx = r - dy * S
    smp = tl.load(pidx_ptr + p * 3, mask=row_ok, other=0)
    prow = tl.load(pidx_ptr + p * 3 + 1, mask=row_ok, other=0)
    pcol = tl.load(pidx_ptr + p * 3 + 2, mask=row_ok, other=0)
    oy = prow * S + dy
    ox = pcol * S + dx
    pix_ok = row_ok & (oy < HO) & (ox < WO)  # pixels beyond the map of border patches are never written
    dst = ((smp * HO + oy) * WO + ox).to(tl.int64) * C_OUT
    m2 = pix_ok[:, None] & n_ok[None, :]
    # The residual tile is the largest read (C_OUT >= 4*K in a bottleneck): issue it before the GEMM so that its
    # latency overlaps the short K loop (1-4 iterations).
    res = tl.load(res_ptr + dst[:, None] + rn[None, :], mask=m2, other=0.0)
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    arow = rm.to(tl.int64) * K
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        if EVEN_K:
            a = tl.load(a_ptr + arow[:, None] + kk[None, :], mask=row_ok[:, None], other=0.0)
            b = tl.load(w_ptr + kk.to(tl.int64)[:, None] * C_OUT + rn[None, :], mask=n_ok[None, :], other=0.0)
        else:
            k_ok = kk < K
            a = tl.load(a_ptr + arow[:, None] + kk[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(
                w_ptr + kk.to(tl.int64)[:, None] * C_OUT + rn[None, :], mask=k_ok[:, None] & n_ok[None, :], other=0.0
            )
        acc = tl.dot(a, b, acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    acc += res.to(tl.float32)
    if RELU:
        acc = tl.maximum(acc, 0.0)
    val = acc.to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + dst[:, None] + rn[None, :], val, mask=m2)
    if POOL > 0:
        # The next block's masker pools this map over the same patches: sum the values just written (as stored,
        # so the sums equal a later read of the map) per patch, and add them to the patch's row of pool_ptr.
        v = tl.where(m2, val.to(tl.float32), 0.0)
        if POOL == 1:  # patches of >= BLOCK_M rows (layer skipping: a whole map) or odd sizes: 1-3 per tile
            m0 = pid_m * BLOCK_M
            p_lo = m0 // ss
            # all operands non-negative: integer division truncates on the GPU and floors in the interpreter
            p_end = (tl.maximum(tl.minimum(m0 + BLOCK_M, M), m0 + 1) - 1) // ss + 1
            for jj in range(0, p_end - p_lo):
                j = p_lo + jj
                part = tl.sum(tl.where((p == j)[:, None], v, 0.0), axis=0)
                jrow = (tl.load(pidx_ptr + j * 3) * GH + tl.load(pidx_ptr + j * 3 + 1)) * GW
                jrow += tl.load(pidx_ptr + j * 3 + 2)
                tl.atomic_add(pool_ptr + jrow.to(tl.int64) * C_OUT + rn, part, mask=n_ok)
        else:  # small power-of-two patches (S = 1, 2, 4, 8): the tile is BLOCK_M // SEG whole patches
            part = tl.sum(tl.reshape(v, (BLOCK_M // SEG, SEG, BLOCK_N)), axis=1)
            q = pid_m * (BLOCK_M // SEG) + tl.arange(0, BLOCK_M // SEG)
            q_ok = q * SEG < M
            qrow = (tl.load(pidx_ptr + q * 3, mask=q_ok, other=0) * GH
                    + tl.load(pidx_ptr + q * 3 + 1, mask=q_ok, other=0)) * GW
            qrow += tl.load(pidx_ptr + q * 3 + 2, mask=q_ok, other=0)
            ptrs = pool_ptr + qrow.to(tl.int64)[:, None] * C_OUT + rn[None, :]
            tl.atomic_add(ptrs, part, mask=q_ok[:, None] & n_ok[None, :])


def _pixel_conv1x1_kernel_src(
    x_ptr,  # input map viewed as [NB*H*W, K]
    w_ptr,  # packed weight [K, C_OUT]
    b_ptr,  # bias [C_OUT] (unused without HAS_BIAS)
    pix_ptr,  # int32 [Q] flat pixel rows
    out_ptr,  # [Q, C_OUT] when COMPACT, else the output map viewed as [NB*H*W, C_OUT]
    cnt_ptr,  # int32 [1]: number of valid entries of pix_ptr when HAS_COUNT
    Q,
    K,
    C_OUT,
    HW,  # pixels per sample (PER_SAMPLE)
    HAS_BIAS: tl.constexpr,
    RELU: tl.constexpr,
    COMPACT: tl.constexpr,
    EVEN_K: tl.constexpr,  # K % BLOCK_K == 0
    HAS_COUNT: tl.constexpr,
    PER_SAMPLE: tl.constexpr,  # pix_ptr lists samples: row q is pixel q % HW of sample pix_ptr[q // HW]
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    num_n = (C_OUT + BLOCK_N - 1) // BLOCK_N
    pid_m = pid // num_n
    pid_n = pid % num_n
    if HAS_COUNT:
        Q = tl.load(cnt_ptr)
        if PER_SAMPLE:
            Q = Q * HW
        if pid_m * BLOCK_M >= Q:  # a tile past the valid rows: nothing to read or write
            return
    rq = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    q_ok = rq < Q
    n_ok = rn < C_OUT
    if PER_SAMPLE:  # layer skipping: no pixel list to build, read or keep
        smp = tl.load(pix_ptr + rq // HW, mask=q_ok, other=0)
        row = smp.to(tl.int64) * HW + (rq % HW)
    else:
        row = tl.load(pix_ptr + rq, mask=q_ok, other=0).to(tl.int64)
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        if EVEN_K:
            a = tl.load(x_ptr + row[:, None] * K + kk[None, :], mask=q_ok[:, None], other=0.0)
            b = tl.load(w_ptr + kk.to(tl.int64)[:, None] * C_OUT + rn[None, :], mask=n_ok[None, :], other=0.0)
        else:
            k_ok = kk < K
            a = tl.load(x_ptr + row[:, None] * K + kk[None, :], mask=q_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(
                w_ptr + kk.to(tl.int64)[:, None] * C_OUT + rn[None, :], mask=k_ok[:, None] & n_ok[None, :], other=0.0
            )
        acc = tl.dot(a, b, acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    dst_row = rq.to(tl.int64) if COMPACT else row
    tl.store(
        out_ptr + dst_row[:, None] * C_OUT + rn[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=q_ok[:, None] & n_ok[None, :],
    )


_gather_conv3x3_kernel = LazyKernel(_gather_conv3x3_kernel_src)
_conv1x1_scatter_add_kernel = LazyKernel(_conv1x1_scatter_add_kernel_src)
_pixel_conv1x1_kernel = LazyKernel(_pixel_conv1x1_kernel_src)


# ---------------------------------------------------------------------------------------------------------------
# launchers


def _packed3x3(weight: torch.Tensor, cin: int, dtype: torch.dtype) -> torch.Tensor:
    if weight.dim() == 4:
        if weight.shape[1] != cin:
            raise ValueError(
                f"conv3x3 weight has {weight.shape[1]} input channels but h1 has {cin} "
                "(grouped convs take the reference path: pass groups=)"
            )
        weight = pack_conv3x3_weight(weight)
    elif weight.dim() != 2 or weight.shape[0] != 9 * cin:
        raise ValueError(f"packed conv3x3 weight must be [9*Cin, Cout] = [{9 * cin}, Cout], got {tuple(weight.shape)}")
    return weight.to(dtype).contiguous()


def gather_conv3x3_triton(
    h1: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    patch_idx: torch.Tensor,
    patch_size: int,
    stride: int,
    relu: bool = True,
    config: GemmConfig | None = None,
    count: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton implicit GEMM of `gather_conv3x3_ref` (groups = 1). Same arguments and result."""
    check_nhwc(h1, "h1")
    check_patch_idx(patch_idx, h1.device)
    check_count(count, h1.device)
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    nb, h, w, cin = h1.shape
    wp = _packed3x3(weight, cin, h1.dtype)
    cout = wp.shape[1]
    check_bias(bias, cout)
    p = patch_idx.shape[0]
    m = p * patch_size * patch_size
    y = torch.empty((m, cout), dtype=h1.dtype, device=h1.device)
    if m == 0:  # no active patch: launching a zero-size grid is an error on GPU
        return y
    ho, wo = conv_out_size(h, stride), conv_out_size(w, stride)
    cfg = config or pick_config("conv3x3", m, cin, cout, whole_maps=patch_size >= max(ho, wo))
    _gather_conv3x3_kernel[gemm_grid(m, cout, cfg)](
        h1, wp, bias if bias is not None else y, patch_idx.contiguous(), y, count if count is not None else patch_idx,
        m, h, w, ho, wo, cin, cout, patch_size, stride,
        HAS_BIAS=bias is not None, RELU=relu, EVEN_K=cin % cfg.block_k == 0, HAS_COUNT=count is not None,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return y


def conv1x1_scatter_add_triton(
    y_gathered: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    patch_idx: torch.Tensor,
    patch_size: int,
    relu: bool = True,
    out: torch.Tensor | None = None,
    config: GemmConfig | None = None,
    count: torch.Tensor | None = None,
    pool_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton kernel of `conv1x1_scatter_add_ref`. Same arguments and result."""
    check_nhwc(residual, "residual")
    check_patch_idx(patch_idx, residual.device)
    check_count(count, residual.device)
    out = residual if out is None else out
    check_nhwc(out, "out")
    if out.shape != residual.shape:
        raise ValueError(f"out shape {tuple(out.shape)} != residual shape {tuple(residual.shape)}")
    p, s = patch_idx.shape[0], patch_size
    m = p * s * s
    if y_gathered.dim() != 2 or y_gathered.shape[0] != m:
        raise ValueError(f"y_gathered must be [P*S*S, Cmid] = [{m}, Cmid], got {tuple(y_gathered.shape)}")
    k = y_gathered.shape[1]
    wm = conv1x1_matrix(weight, k).to(y_gathered.dtype).contiguous()
    nb, ho, wo, cout = residual.shape
    if wm.shape[1] != cout:
        raise ValueError(f"conv output channels {wm.shape[1]} != residual channels {cout}")
    check_bias(bias, cout)
    gh, gw = patch_grid((ho, wo), s)  # validates patch_size
    check_pool_out(pool_out, (nb, gh, gw, cout), out.device)
    if m == 0:
        return out
    a = y_gathered.contiguous()
    cfg = config or pick_config("scatter", m, k, cout, whole_maps=s >= max(ho, wo))
    ss = s * s
    # POOL 2 (one reshape-reduction per tile) needs whole power-of-two patches per tile; otherwise loop per patch.
    pool = 0 if pool_out is None else (2 if ss < cfg.block_m and cfg.block_m % ss == 0 and ss & (ss - 1) == 0 else 1)
    _conv1x1_scatter_add_kernel[gemm_grid(m, cout, cfg)](
        a, wm, bias if bias is not None else a, residual, out, patch_idx.contiguous(),
        count if count is not None else patch_idx, pool_out if pool_out is not None else a,
        m, k, ho, wo, cout, s, gh, gw,
        HAS_BIAS=bias is not None, RELU=relu, EVEN_K=k % cfg.block_k == 0, HAS_COUNT=count is not None,
        POOL=pool, SEG=ss if pool == 2 else 1,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return out


def pixel_conv1x1_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    pix_idx: torch.Tensor,
    relu: bool = True,
    out: torch.Tensor | None = None,
    compact: bool = False,
    config: GemmConfig | None = None,
    count: torch.Tensor | None = None,
    per_sample: bool = False,
) -> torch.Tensor:
    """Triton kernel of `pixel_conv1x1_ref`. Same arguments and result (unwritten pixels of a new map: garbage)."""
    check_nhwc(x, "x")
    if pix_idx.dtype != torch.int32 or pix_idx.dim() != 1:
        raise ValueError(f"pix_idx must be int32 [Q], got dtype {pix_idx.dtype} shape {tuple(pix_idx.shape)}")
    check_count(count, x.device)
    nb, h, w, cin = x.shape
    wm = conv1x1_matrix(weight, cin).to(x.dtype).contiguous()
    cout = wm.shape[1]
    check_bias(bias, cout)
    q = pix_idx.shape[0] * (h * w if per_sample else 1)
    if compact:
        out = torch.empty((q, cout), dtype=x.dtype, device=x.device)
    else:
        if out is None:
            out = torch.empty((nb, h, w, cout), dtype=x.dtype, device=x.device)
        check_nhwc(out, "out")
        if out.shape != (nb, h, w, cout):
            raise ValueError(f"out must be [{nb}, {h}, {w}, {cout}], got {tuple(out.shape)}")
    if q == 0:
        return out
    cfg = config or pick_config("conv1x1", q, cin, cout, whole_maps=per_sample)
    _pixel_conv1x1_kernel[gemm_grid(q, cout, cfg)](
        x, wm, bias if bias is not None else wm, pix_idx.contiguous(), out, count if count is not None else pix_idx,
        q, cin, cout, h * w,
        HAS_BIAS=bias is not None, RELU=relu, COMPACT=compact, EVEN_K=cin % cfg.block_k == 0,
        HAS_COUNT=count is not None, PER_SAMPLE=per_sample,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return out
