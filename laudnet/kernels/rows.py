"""Triton kernel of `rows_ref.py`: a linear layer on listed token rows with the GELU or the residual scatter-add in
its epilogue, reading the row count on the device (tiles past it do no GEMM).

What it replaces in the capturable deployed ViT (H200 profile of the varlen CUDA graph at token rate 0.5,
`benchmarks/NOTES-vit.md`): GELU over every one of the B·N capacity rows (0.6 ms per forward) and, per residual
branch, a gather, a `where` and an `index_copy_` over the capacity rows (about 1.9 ms with the packing's gathers),
and norm2 over every token (0.5 ms): with `ln` the fc1 kernel normalises the rows it gathers itself.
"""

import torch

from ._utils import LazyKernel
from .rows_ref import check_rows_linear_args
from .spatial import GemmConfig, _grid, _pick_config

try:
    import triton.language as tl
except Exception:  # the reference path works without triton; the kernel below is then never launched

    class tl:  # noqa: N801 - stands in for triton.language so that the kernel definition still evaluates
        constexpr = object


def _rows_linear_kernel_src(
    src_ptr,  # [M, K]
    w_ptr,  # [K, N] (the weight transposed)
    b_ptr,  # [N] (read when HAS_BIAS)
    in_ptr,  # int32 [R] rows of src (read when HAS_IN_IDX)
    cnt_ptr,  # int32 [1] rows in use (read when HAS_COUNT)
    out_ptr,  # [R, N] (gather form) or [M', N] updated in place (SCATTER)
    oidx_ptr,  # int32 [R] output rows (SCATTER)
    keep_ptr,  # uint8 [R] (SCATTER and HAS_KEEP)
    scale_ptr,  # [N] (SCATTER and HAS_SCALE)
    lnw_ptr,  # [K] LayerNorm weight of the rows (HAS_LN)
    lnb_ptr,  # [K] LayerNorm bias (HAS_LN)
    eps,
    R,
    K,
    N,
    HAS_BIAS: tl.constexpr,
    HAS_IN_IDX: tl.constexpr,
    HAS_COUNT: tl.constexpr,
    GELU: tl.constexpr,
    SCATTER: tl.constexpr,
    HAS_KEEP: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_LN: tl.constexpr,
    EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    num_n = (N + BLOCK_N - 1) // BLOCK_N
    pid_m = pid // num_n
    pid_n = pid % num_n
    if HAS_COUNT:
        R = tl.minimum(tl.load(cnt_ptr), R)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < R
    n_ok = rn < N
    if HAS_IN_IDX:  # noqa: SIM108 - a constexpr branch
        row = tl.load(in_ptr + rm, mask=m_ok, other=0).to(tl.int64)
    else:
        row = rm.to(tl.int64)
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    k_end = K * (pid_m * BLOCK_M < R)  # no GEMM for a tile past the rows in use
    if HAS_LN:  # the rows' mean and variance first (two passes over K, from L2 after the first), in fp32
        s1 = tl.full((BLOCK_M,), 0.0, tl.float32)
        for k0 in range(0, k_end, BLOCK_K):
            kk = k0 + rk
            v = tl.load(src_ptr + row[:, None] * K + kk[None, :], mask=m_ok[:, None] & (kk < K)[None, :], other=0.0)
            s1 += tl.sum(v.to(tl.float32), axis=1)
        mean = s1 / K
        s2 = tl.full((BLOCK_M,), 0.0, tl.float32)
        for k0 in range(0, k_end, BLOCK_K):
            kk = k0 + rk
            k_ok = kk < K
            v = tl.load(src_ptr + row[:, None] * K + kk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            dv = tl.where(k_ok[None, :], v.to(tl.float32) - mean[:, None], 0.0)
            s2 += tl.sum(dv * dv, axis=1)
        rstd = 1.0 / tl.sqrt(s2 / K + eps)
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
        if HAS_LN:  # normalised in fp32, rounded to the input dtype (what a stored LayerNorm output would be)
            lw = tl.load(lnw_ptr + kk, mask=kk < K, other=0.0).to(tl.float32)
            lb = tl.load(lnb_ptr + kk, mask=kk < K, other=0.0).to(tl.float32)
            an = (a.to(tl.float32) - mean[:, None]) * rstd[:, None] * lw[None, :] + lb[None, :]
            a = tl.where((kk < K)[None, :], an, 0.0).to(src_ptr.dtype.element_ty)
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
        ptrs = out_ptr + rm.to(tl.int64)[:, None] * N + rn[None, :]
        tl.store(ptrs, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


_rows_linear_kernel = LazyKernel(_rows_linear_kernel_src)


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
    ln: tuple[torch.Tensor, torch.Tensor, float] | None = None,
    config: GemmConfig | None = None,
) -> torch.Tensor:
    """Triton kernel of `rows_linear_ref` (one launch). Same arguments and result; `config`: the tile shape (default
    chosen by shape)."""
    r, cin, cout = check_rows_linear_args(src, weight_t, bias, in_idx, count, act, out, out_idx, keep, scale, ln)
    lnw, lnb, eps = ln if ln is not None else (None, None, 0.0)
    for name, t in (("weight_t", weight_t), ("bias", bias), ("in_idx", in_idx), ("count", count), ("out", out),
                    ("out_idx", out_idx), ("keep", keep), ("scale", scale), ("ln weight", lnw), ("ln bias", lnb)):
        if t is not None and t.device != src.device:
            raise ValueError(f"{name} is on {t.device} but src is on {src.device}")
    wt = weight_t.to(src.dtype).contiguous()
    scatter = out_idx is not None
    if not scatter:
        out = torch.empty((r, cout), dtype=src.dtype, device=src.device)
    if r == 0 or cout == 0:
        return out
    cfg = config or _pick_config("conv1x1", r, cin, cout)
    dummy = wt
    _rows_linear_kernel[_grid(r, cout, cfg)](
        src, wt, bias if bias is not None else dummy, in_idx if in_idx is not None else dummy,
        count if count is not None else dummy, out, out_idx if scatter else dummy,
        keep.view(torch.uint8) if keep is not None else dummy, scale if scale is not None else dummy,
        lnw if lnw is not None else dummy, lnb if lnb is not None else dummy, float(eps),
        r, cin, cout,
        HAS_BIAS=bias is not None, HAS_IN_IDX=in_idx is not None, HAS_COUNT=count is not None, GELU=act == "gelu",
        SCATTER=scatter, HAS_KEEP=keep is not None, HAS_SCALE=scale is not None, HAS_LN=ln is not None,
        EVEN_K=cin % cfg.block_k == 0,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return out
