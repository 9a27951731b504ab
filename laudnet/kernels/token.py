"""Triton LayerNorm of ViT token rows (specification: `token_ref.py`), in one kernel with three options: the token
masker fused into the block's first LayerNorm (the score and decision of each normalised token computed in
registers: no fp32 copy of the tokens and no separate GEMM for a two-output linear), a list of rows with a
device-side count (norm2 on the packed rows of the capturable deployed ViT), or plain (every row).

One read and one write per row: the fused norm1 + masker is faster than PyTorch's LayerNorm alone at ViT widths.
"""

import torch

from ._utils import LazyKernel, cdiv, next_power_of_2
from .token_ref import check_ln_score_args, check_pooled_decisions_args, check_rows_layer_norm_args

# No `from __future__ import annotations` here: Triton reads the `tl.constexpr` annotations of the kernels at runtime.
try:
    import triton.language as tl
except Exception:  # the reference path works without triton; the kernel below is then never launched

    class tl:  # noqa: N801 - stands in for triton.language so that the kernel definition still evaluates
        constexpr = object


def _layer_norm_kernel_src(
    x_ptr,  # [M, C] tokens, contiguous
    idx_ptr,  # int32 [R] rows of x to normalise (HAS_IDX; else R = M, row r is x's row r)
    cnt_ptr,  # int32 [1] rows of the list in use (HAS_COUNT)
    lw_ptr,  # [C] LayerNorm weight
    lb_ptr,  # [C] LayerNorm bias
    sw_ptr,  # [C] fp32 execute-minus-skip weight (HAS_SCORE)
    sb_ptr,  # [1] fp32 execute-minus-skip bias (HAS_SCORE)
    y_ptr,  # [R, C] normalised rows (x's dtype), packed in list order
    score_ptr,  # [R] fp32 scores (HAS_SCORE)
    keep_ptr,  # uint8 [R] decisions (HAS_SCORE): score >= 0, or the first token of its sequence
    R,
    C,
    N,  # tokens per sequence (HAS_SCORE)
    eps,
    HAS_IDX: tl.constexpr,
    HAS_COUNT: tl.constexpr,
    HAS_SCORE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    used = R
    if HAS_COUNT:
        used = tl.minimum(tl.load(cnt_ptr), R)
        if tl.program_id(0) * BLOCK_R >= used:  # a block past the rows in use: nothing to read or write
            return
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    r_ok = rows < used
    c_ok = cols < C
    m = r_ok[:, None] & c_ok[None, :]
    if HAS_IDX:  # noqa: SIM108 - a constexpr branch
        src = tl.load(idx_ptr + rows, mask=r_ok, other=0).to(tl.int64)
    else:
        src = rows.to(tl.int64)
    x = tl.load(x_ptr + src[:, None] * C + cols[None, :], mask=m, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / C
    d = tl.where(m, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / C + eps)
    lw = tl.load(lw_ptr + cols, mask=c_ok, other=0.0).to(tl.float32)
    lb = tl.load(lb_ptr + cols, mask=c_ok, other=0.0).to(tl.float32)
    y = (d * rstd[:, None] * lw[None, :] + lb[None, :]).to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + rows.to(tl.int64)[:, None] * C + cols[None, :], y, mask=m)
    if HAS_SCORE:
        sw = tl.load(sw_ptr + cols, mask=c_ok, other=0.0)
        score = tl.sum(tl.where(m, y.to(tl.float32) * sw[None, :], 0.0), axis=1) + tl.load(sb_ptr)
        tl.store(score_ptr + rows, score, mask=r_ok)
        tl.store(keep_ptr + rows, ((score >= 0) | (rows % N == 0)).to(tl.uint8), mask=r_ok)


_layer_norm_kernel = LazyKernel(_layer_norm_kernel_src)


def _pooled_decisions_kernel_src(
    y_ptr,  # [B, N, C] contiguous tokens
    w_ptr,  # fp32 [K, C]
    b_ptr,  # fp32 [K]
    out_ptr,  # uint8 [B, K] out
    N,
    C,
    K,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,  # >= C
    BLOCK_K: tl.constexpr,  # >= K
):
    smp = tl.program_id(0)
    rc = tl.arange(0, BLOCK_C)
    c_ok = rc < C
    acc = tl.full((BLOCK_C,), 0.0, tl.float32)
    for n0 in range(0, N, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        rows = (smp * N + rn).to(tl.int64)
        v = tl.load(y_ptr + rows[:, None] * C + rc[None, :], mask=(rn < N)[:, None] & c_ok[None, :], other=0.0)
        acc += tl.sum(v.to(tl.float32), axis=0)
    mean = acc / N
    rk = tl.arange(0, BLOCK_K)
    k_ok = rk < K
    w = tl.load(w_ptr + rk[:, None] * C + rc[None, :], mask=k_ok[:, None] & c_ok[None, :], other=0.0)
    logit = tl.sum(w * mean[None, :], axis=1) + tl.load(b_ptr + rk, mask=k_ok, other=0.0)
    tl.store(out_ptr + smp * K + rk, (logit >= 0).to(tl.uint8), mask=k_ok)


_pooled_decisions_kernel = LazyKernel(_pooled_decisions_kernel_src)


def _launch(x2, in_idx, count, ln_weight, ln_bias, eps, score_w=None, score_b=None, tokens=1):
    """The kernel on x2 [M, C]: (y [R, C], score [R] fp32 and keep [R] bool, or None and None)."""
    r, c = (in_idx.shape[0] if in_idx is not None else x2.shape[0]), x2.shape[1]
    y = torch.empty((r, c), dtype=x2.dtype, device=x2.device)
    scored = score_w is not None
    score = torch.empty(r, device=x2.device, dtype=torch.float32) if scored else None
    keep = torch.empty(r, device=x2.device, dtype=torch.bool) if scored else None
    if r == 0 or c == 0:
        return y, score, keep
    block_c = next_power_of_2(c)
    block_r = max(1, min(16, 4096 // block_c))  # about 4096 elements per program
    dummy = ln_weight
    _layer_norm_kernel[(cdiv(r, block_r),)](
        x2, in_idx if in_idx is not None else dummy, count if count is not None else dummy, ln_weight, ln_bias,
        score_w if scored else dummy, score_b if scored else dummy, y, score if scored else dummy,
        keep.view(torch.uint8) if scored else dummy, r, c, max(int(tokens), 1), float(eps),
        HAS_IDX=in_idx is not None, HAS_COUNT=count is not None, HAS_SCORE=scored,
        BLOCK_R=block_r, BLOCK_C=block_c,
    )  # fmt: skip
    return y, score, keep


def layer_norm_score_triton(x: torch.Tensor, ln_weight: torch.Tensor, ln_bias: torch.Tensor, eps: float,
                            score_w: torch.Tensor, score_b: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton kernel of `layer_norm_score_ref`. Same arguments and result."""
    check_ln_score_args(x, ln_weight, ln_bias, score_w, score_b)
    y, score, keep = _launch(x.view(-1, x.shape[-1]), None, None, ln_weight, ln_bias, eps, score_w, score_b,
                             x.shape[-2])
    return y.view(x.shape), score.view(x.shape[:-1]), keep.view(x.shape[:-1])


def rows_layer_norm_triton(src: torch.Tensor, in_idx: torch.Tensor | None, count: torch.Tensor | None,
                           weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """Triton kernel of `rows_layer_norm_ref` (one launch, a program per few rows). Same arguments and result."""
    check_rows_layer_norm_args(src, in_idx, count, weight, bias, eps)
    for name, t in (("in_idx", in_idx), ("count", count), ("weight", weight), ("bias", bias)):
        if t is not None and t.device != src.device:
            raise ValueError(f"{name} is on {t.device} but src is on {src.device}")
    return _launch(src, in_idx, count, weight, bias, eps)[0]


def pooled_decisions_triton(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Triton kernel of `pooled_decisions_ref` (one launch, a program per sample). Same arguments and result."""
    check_pooled_decisions_args(y, weight, bias)
    b, n, c = y.shape
    k = weight.shape[0]
    out = torch.empty((b, k), dtype=torch.uint8, device=y.device)
    if b and k:
        block_c = next_power_of_2(c)
        _pooled_decisions_kernel[(b,)](
            y, weight.contiguous(), bias.contiguous(), out, n, c, k,
            BLOCK_N=max(1, min(64, 8192 // block_c)), BLOCK_C=block_c, BLOCK_K=max(2, next_power_of_2(k)),
        )  # fmt: skip
    return out.view(torch.bool)
