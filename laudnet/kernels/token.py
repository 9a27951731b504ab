"""Triton kernel of the ViT token masker fused into the block's first LayerNorm (specification: `token_ref.py`).

One read of the tokens and one write of the normalised tokens, the masker's score computed from the normalised
values in registers: no fp32 copy of the tokens and no separate GEMM for a two-output linear.
"""

import torch

from ._utils import LazyKernel, next_power_of_2
from .token_ref import check_ln_score_args

# No `from __future__ import annotations` here: Triton reads the `tl.constexpr` annotations of the kernels at runtime.
try:
    import triton.language as tl
except Exception:  # the reference path works without triton; the kernel below is then never launched

    class tl:  # noqa: N801 - stands in for triton.language so that the kernel definition still evaluates
        constexpr = object


def _ln_score_kernel_src(
    x_ptr,  # [R, C] tokens, contiguous
    lw_ptr,  # [C] LayerNorm weight
    lb_ptr,  # [C] LayerNorm bias
    sw_ptr,  # [C] fp32 execute-minus-skip weight
    sb_ptr,  # [1] fp32 execute-minus-skip bias
    y_ptr,  # [R, C] normalised tokens (x's dtype)
    score_ptr,  # [R] fp32 scores
    R,
    C,
    eps,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    r_ok = rows < R
    c_ok = cols < C
    m = r_ok[:, None] & c_ok[None, :]
    offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / C
    d = tl.where(m, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / C + eps)
    lw = tl.load(lw_ptr + cols, mask=c_ok, other=0.0).to(tl.float32)
    lb = tl.load(lb_ptr + cols, mask=c_ok, other=0.0).to(tl.float32)
    y = (d * rstd[:, None] * lw[None, :] + lb[None, :]).to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + offs, y, mask=m)
    sw = tl.load(sw_ptr + cols, mask=c_ok, other=0.0)
    score = tl.sum(tl.where(m, y.to(tl.float32) * sw[None, :], 0.0), axis=1) + tl.load(sb_ptr)
    tl.store(score_ptr + rows, score, mask=r_ok)


_ln_score_kernel = LazyKernel(_ln_score_kernel_src)


def layer_norm_score_triton(x: torch.Tensor, ln_weight: torch.Tensor, ln_bias: torch.Tensor, eps: float,
                            score_w: torch.Tensor, score_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton kernel of `layer_norm_score_ref`. Same arguments and result."""
    check_ln_score_args(x, ln_weight, ln_bias, score_w, score_b)
    c = x.shape[-1]
    y = torch.empty_like(x)
    score = torch.empty(x.shape[:-1], device=x.device, dtype=torch.float32)
    r = score.numel()
    if r == 0:
        return y, score
    block_c = next_power_of_2(c)
    block_r = max(1, min(16, 4096 // block_c))  # about 4096 elements per program
    _ln_score_kernel[(-(-r // block_r),)](x, ln_weight, ln_bias, score_w, score_b, y, score, r, c, float(eps),
                                          BLOCK_R=block_r, BLOCK_C=block_c)
    return y, score
