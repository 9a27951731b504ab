"""Triton kernel for the layer-skipping write-back `out[idx] = relu(out[idx] + y)`, fused and in place.

One read of each active row of `out` and `y`, one write of the row; inactive rows are not touched. PyTorch needs
three passes for the same (`index_select`, add + ReLU, `index_copy_`). The specification is `layer_ref.py`.
"""

import torch

from ._utils import LazyKernel, cdiv
from .layer_ref import check_rows_args

# No `from __future__ import annotations` here: Triton reads the `tl.constexpr` annotations of the kernels at runtime.
try:
    import triton.language as tl
except Exception:  # the reference path works without triton; the kernel below is then never launched

    class tl:  # noqa: N801 - stands in for triton.language so that the kernel definition still evaluates
        constexpr = object


_ROWS_BLOCK = 2048  # elements per program: 4 KB of bf16, 16-byte vectors over 128 threads, 4 each


def _rows_add_relu_kernel_src(
    out_ptr,  # [N, R] contiguous, updated in place
    y_ptr,  # [n, R] contiguous
    idx_ptr,  # [n] sample indices (int32 or int64)
    R,  # elements per sample row
    RELU: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # Grid (cdiv(R, BLOCK), n): axis 1 (limit 65535) is the sample, axis 0 (limit 2^31 - 1) the chunk of the row.
    pid_r = tl.program_id(0)
    i = tl.program_id(1)
    row = tl.load(idx_ptr + i).to(tl.int64)
    offs = pid_r * BLOCK + tl.arange(0, BLOCK)
    ok = offs < R
    o_ptrs = out_ptr + row * R + offs
    v = tl.load(o_ptrs, mask=ok, other=0.0).to(tl.float32)
    v += tl.load(y_ptr + i.to(tl.int64) * R + offs, mask=ok, other=0.0).to(tl.float32)
    if RELU:
        v = tl.maximum(v, 0.0)
    tl.store(o_ptrs, v.to(out_ptr.dtype.element_ty), mask=ok)


_rows_add_relu_kernel = LazyKernel(_rows_add_relu_kernel_src)


def rows_add_relu_triton(out: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, relu: bool = True) -> torch.Tensor:
    """Triton kernel of `rows_add_relu_ref`. Same arguments and result."""
    check_rows_args(out, y, idx)
    n = idx.shape[0]
    if n == 0 or out.numel() == 0:
        return out
    if n > 65535:
        raise ValueError(f"at most 65535 active samples per launch, got {n}")
    r = out[0].numel()
    _rows_add_relu_kernel[(cdiv(r, _ROWS_BLOCK), n)](out, y, idx.contiguous(), r, RELU=relu, BLOCK=_ROWS_BLOCK)
    return out
