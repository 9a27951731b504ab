"""Triton kernels of `rows_ref.py`: a linear layer on listed token rows with the GELU or the residual scatter-add in
its epilogue (and, for the qkv projection, per-sample kept heads and q / k / v planes), reading the row count on the
device (programs past it exit at once). The LayerNorm of listed rows is in `token.py`.

What they replace in the capturable deployed ViT (the varlen CUDA-graph form): GELU over every one of the B·N
capacity rows and, per residual branch, a gather, a `where` and an `index_copy_` over the capacity rows, and norm2
over every token. norm2 is its own kernel (`token.rows_layer_norm_triton`), not the fc1 GEMM's prologue:
normalising inside the GEMM's K loop made the fc1 kernel several times slower than cuBLAS on the same rows.
"""

import dataclasses

import torch

from ._utils import GemmConfig, LazyKernel, gemm_grid, pick_config
from .rows_ref import check_rows_linear_args

try:
    import triton.language as tl
except Exception:  # the reference path works without triton; the kernel below is then never launched

    class tl:  # noqa: N801 - stands in for triton.language so that the kernel definition still evaluates
        constexpr = object


def _rows_tile(
    pid_m,
    pid_n,
    used,  # rows in use
    src_ptr,  # [M, K]
    w_ptr,  # [K, N] (the weight transposed)
    b_ptr,  # [N] (read when HAS_BIAS)
    in_ptr,  # int32 [R] rows of src (read when HAS_IN_IDX)
    out_ptr,  # [N // PLANE, R, PLANE] (gather form) or [M', N] updated in place (SCATTER)
    oidx_ptr,  # int32 [R] output rows (SCATTER)
    keep_ptr,  # uint8 [R] (SCATTER and HAS_KEEP)
    scale_ptr,  # [N] (SCATTER and HAS_SCALE)
    hm_ptr,  # uint8 [B, NUM_HEADS] kept heads of each sample (HEAD_MASK)
    R,
    K,
    N,
    PLANE,  # output columns per plane (gather form)
    TOKENS,  # source rows per sample (HEAD_MASK: the sample of source row m is m // TOKENS)
    HEAD_DIM,  # columns per head within a plane (HEAD_MASK)
    NUM_HEADS,
    HAS_BIAS: tl.constexpr,
    HAS_IN_IDX: tl.constexpr,
    GELU: tl.constexpr,
    SCATTER: tl.constexpr,
    HAS_KEEP: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HEAD_MASK: tl.constexpr,
    EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """One (BLOCK_M x BLOCK_N) output tile of the kernel below."""
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < used
    n_ok = rn < N
    if HAS_IN_IDX:  # noqa: SIM108 - a constexpr branch
        row = tl.load(in_ptr + rm, mask=m_ok, other=0).to(tl.int64)
    else:
        row = rm.to(tl.int64)
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    k_end = K
    if HEAD_MASK:  # the tile's columns lie in one head (BLOCK_N divides HEAD_DIM): rows whose sample keeps it
        head = (pid_n * BLOCK_N % PLANE) // HEAD_DIM
        on = tl.load(hm_ptr + (row // TOKENS) * NUM_HEADS + head, mask=m_ok, other=0) != 0
        k_end = k_end * (tl.max(on.to(tl.int32), axis=0) > 0)  # no GEMM for a tile without any
    for k0 in range(0, k_end, BLOCK_K):
        kk = k0 + rk
        if EVEN_K:
            a = tl.load(src_ptr + row[:, None] * K + kk[None, :], mask=m_ok[:, None], other=0.0)
            b = tl.load(w_ptr + kk.to(tl.int64)[:, None] * N + rn[None, :], mask=n_ok[None, :], other=0.0)
        else:
            k_ok = kk < K
            a = tl.load(src_ptr + row[:, None] * K + kk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(w_ptr + kk.to(tl.int64)[:, None] * N + rn[None, :], mask=k_ok[:, None] & n_ok[None, :],
                        other=0.0)
        acc = tl.dot(a, b, acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if SCATTER:
        ok = m_ok
        if HAS_KEEP:
            ok = ok & (tl.load(keep_ptr + rm, mask=m_ok, other=0) != 0)
        if HAS_SCALE:
            acc = acc * tl.load(scale_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        dst = tl.load(oidx_ptr + rm, mask=ok, other=0).to(tl.int64)
        ptrs = out_ptr + dst[:, None] * N + rn[None, :]
        mask = ok[:, None] & n_ok[None, :]
        cur = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
        tl.store(ptrs, (cur + acc).to(out_ptr.dtype.element_ty), mask=mask)
    else:
        if GELU:
            acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
        if HEAD_MASK:  # a skipped head's columns are zero (its attention then outputs zero)
            acc = tl.where(on[:, None], acc, 0.0)
        plane = (rn // PLANE).to(tl.int64)
        ptrs = out_ptr + plane[None, :] * R * PLANE + rm.to(tl.int64)[:, None] * PLANE + (rn % PLANE)[None, :]
        tl.store(ptrs, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def _rows_linear_kernel_src(
    src_ptr,  # [M, K]
    w_ptr,  # [K, N] (the weight transposed)
    b_ptr,  # [N] (read when HAS_BIAS)
    in_ptr,  # int32 [R] rows of src (read when HAS_IN_IDX)
    cnt_ptr,  # int32 [1] rows in use (read when HAS_COUNT)
    out_ptr,  # [N // PLANE, R, PLANE] (gather form) or [M', N] updated in place (SCATTER)
    oidx_ptr,  # int32 [R] output rows (SCATTER)
    keep_ptr,  # uint8 [R] (SCATTER and HAS_KEEP)
    scale_ptr,  # [N] (SCATTER and HAS_SCALE)
    hm_ptr,  # uint8 [B, NUM_HEADS] kept heads of each sample (HEAD_MASK)
    R,
    K,
    N,
    PLANE,  # output columns per plane (gather form)
    TOKENS,  # source rows per sample (HEAD_MASK: the sample of source row m is m // TOKENS)
    HEAD_DIM,  # columns per head within a plane (HEAD_MASK)
    NUM_HEADS,
    HAS_BIAS: tl.constexpr,
    HAS_IN_IDX: tl.constexpr,
    HAS_COUNT: tl.constexpr,
    GELU: tl.constexpr,
    SCATTER: tl.constexpr,
    HAS_KEEP: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HEAD_MASK: tl.constexpr,
    EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    num_n = (N + BLOCK_N - 1) // BLOCK_N
    pid_m = pid // num_n
    used = R
    if HAS_COUNT:
        used = tl.minimum(tl.load(cnt_ptr), R)
        if pid_m * BLOCK_M >= used:  # a tile past the rows in use: nothing to read or write
            return
    _rows_tile(pid_m, pid % num_n, used, src_ptr, w_ptr, b_ptr, in_ptr, out_ptr, oidx_ptr, keep_ptr, scale_ptr,
               hm_ptr, R, K, N, PLANE, TOKENS, HEAD_DIM, NUM_HEADS, HAS_BIAS, HAS_IN_IDX, GELU, SCATTER, HAS_KEEP,
               HAS_SCALE, HEAD_MASK, EVEN_K, BLOCK_M, BLOCK_N, BLOCK_K)


HEAD_TILE_MIN = 16  # tl.dot's narrowest tile: with `heads`, a head's columns are whole column tiles
_rows_linear_kernel = LazyKernel(_rows_linear_kernel_src, helpers=(_rows_tile,))


def rows_linear_triton(
    src: torch.Tensor,
    weight_t: torch.Tensor,
    bias: torch.Tensor | None,
    in_idx: torch.Tensor | None = None,
    count: torch.Tensor | None = None,
    act: str = "none",
    *,
    out: torch.Tensor | None = None,
    out_idx: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    planes: int = 1,
    heads: tuple[torch.Tensor, int] | None = None,
    config: GemmConfig | None = None,
) -> torch.Tensor:
    """Triton kernel of `rows_linear_ref` (one launch). Same arguments and result; `config`: the tile shape (default
    chosen by shape and form). A program per tile of the capacity; tiles past the count return at once (a persistent
    grid walking only the counted tiles measured slower)."""
    r, cin, cout = check_rows_linear_args(src, weight_t, bias, in_idx, count, act, out, out_idx, keep, scale, planes,
                                          heads)
    for name, t in (("weight_t", weight_t), ("bias", bias), ("in_idx", in_idx), ("count", count), ("out", out),
                    ("out_idx", out_idx), ("keep", keep), ("scale", scale),
                    ("heads", heads[0] if heads is not None else None)):
        if t is not None and t.device != src.device:
            raise ValueError(f"{name} is on {t.device} but src is on {src.device}")
    wt = weight_t.to(src.dtype).contiguous()
    scatter = out_idx is not None
    plane = cout // planes
    if not scatter:
        out = torch.empty((planes, r, plane) if planes > 1 else (r, cout), dtype=src.dtype, device=src.device)
    if r == 0 or cout == 0:
        return out
    # at DeiT-S shapes the scatter-add form is fastest with 128 x 64 tiles (chosen by measurement, as for the
    # CNN's residual scatter)
    cfg = config or pick_config("scatter" if scatter else "conv1x1", r, cin, cout)
    dummy = wt
    head_keep, tokens = heads if heads is not None else (None, 1)
    num_heads = head_keep.shape[1] if heads is not None else 1
    if heads is not None and (plane // num_heads) % cfg.block_n:  # a column tile must not straddle two heads
        block_n = (plane // num_heads) & -(plane // num_heads)  # the largest power of two dividing the head width
        if block_n < HEAD_TILE_MIN:
            raise ValueError(f"heads of {plane // num_heads} columns: the head width must be a multiple of "
                             f"{HEAD_TILE_MIN} (the narrowest column tile of the GEMM)")
        cfg = dataclasses.replace(cfg, block_n=min(cfg.block_n, block_n))
    _rows_linear_kernel[gemm_grid(r, cout, cfg)](
        src, wt, bias if bias is not None else dummy, in_idx if in_idx is not None else dummy,
        count if count is not None else dummy, out, out_idx if scatter else dummy,
        keep.view(torch.uint8) if keep is not None else dummy, scale if scale is not None else dummy,
        head_keep.contiguous().view(torch.uint8) if heads is not None else dummy,
        r, cin, cout, plane, tokens, plane // num_heads, num_heads,
        HAS_BIAS=bias is not None, HAS_IN_IDX=in_idx is not None, HAS_COUNT=count is not None, GELU=act == "gelu",
        SCATTER=scatter, HAS_KEEP=keep is not None, HAS_SCALE=scale is not None, HEAD_MASK=heads is not None,
        EVEN_K=cin % cfg.block_k == 0,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return out
