"""Triton kernel of the network stem's convolution (`stem_ref.py` is the specification): implicit GEMM with bias and
ReLU fused, NHWC in and out.

One program computes `BLOCK_M` output pixels × `BLOCK_N` output channels. For each kernel row ky the K slice
`kx * C + c` (KW pixels of C channels) is one contiguous run of the NHWC input, so a row's A operand is a single
masked load of `k_row` elements (the columns past KW * C and outside the map read as 0) and the K loop is KH steps.
"""

import torch

from ._utils import LazyKernel, cdiv, check_nhwc, fit_tile, interpreter_enabled
from .stem_ref import check_stem_args
from .weights import pack_stem_weight, stem_k_row

# No `from __future__ import annotations` here: Triton reads the `tl.constexpr` annotations of the kernels at runtime.
try:
    import triton.language as tl
except Exception:  # the reference path works without triton; the kernel below is then never launched

    class tl:  # noqa: N801 - stands in for triton.language so that the kernel definition still evaluates
        constexpr = object


def _stem_conv_kernel_src(
    x_ptr,  # NHWC [NB, H, W, C] contiguous
    w_ptr,  # packed [KH * K_ROW, C_OUT]
    b_ptr,  # [C_OUT] (read when HAS_BIAS)
    y_ptr,  # NHWC [NB, HO, WO, C_OUT]
    M,  # NB * HO * WO
    H,
    W,
    HO,
    WO,
    C_OUT,
    C: tl.constexpr,
    KH: tl.constexpr,
    KW: tl.constexpr,
    STRIDE: tl.constexpr,
    PAD: tl.constexpr,
    K_ROW: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    RELU: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, K_ROW)
    row_ok = rm < M
    n_ok = rn < C_OUT
    hw = HO * WO
    img = rm // hw
    r = rm - img * hw
    oy = r // WO
    ox = r - oy * WO
    iy0 = oy * STRIDE - PAD
    ix0 = ox * STRIDE - PAD
    kx = rk // C  # the K index kx * C + c of this column
    ix = ix0[:, None] + kx[None, :]
    col_ok = (rk < KW * C)[None, :] & (ix >= 0) & (ix < W)
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for ky in range(0, KH):
        iy = iy0 + ky
        ok = row_ok & (iy >= 0) & (iy < H)
        start = ((img * H + iy) * W + ix0).to(tl.int64) * C  # element offset of pixel (iy, ix0): the run starts here
        a = tl.load(x_ptr + start[:, None] + rk[None, :], mask=ok[:, None] & col_ok, other=0.0)
        b = tl.load(w_ptr + (ky * K_ROW + rk)[:, None] * C_OUT + rn[None, :], mask=n_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    dst = rm.to(tl.int64)[:, None] * C_OUT + rn[None, :]
    tl.store(y_ptr + dst, acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])


_stem_conv_kernel = LazyKernel(_stem_conv_kernel_src)


def stem_conv_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, kernel: tuple[int, int],
                     stride: int, padding: int, relu: bool = True, block_m: int | None = None) -> torch.Tensor:
    """Triton kernel of `stem_conv_ref`. Same arguments and result; `block_m`: output pixels per program."""
    check_nhwc(x, "x")
    ho, wo = check_stem_args(x, weight, bias, kernel, stride, padding)
    n, h, w, cin = x.shape
    kh, kw = kernel
    wp = (pack_stem_weight(weight) if weight.dim() == 4 else weight).to(x.dtype).contiguous()
    cout = wp.shape[1]
    y = torch.empty((n, ho, wo, cout), dtype=x.dtype, device=x.device)
    m = n * ho * wo
    if m == 0:
        return y
    interp = interpreter_enabled()
    bm = block_m or (32 if interp else 128)
    bn = fit_tile(16 if interp else 128, cout)
    grid = (cdiv(m, bm), cdiv(cout, bn))
    _stem_conv_kernel[grid](
        x, wp, bias if bias is not None else wp, y, m, h, w, ho, wo, cout,
        C=cin, KH=kh, KW=kw, STRIDE=stride, PAD=padding, K_ROW=stem_k_row(kw, cin),
        HAS_BIAS=bias is not None, RELU=relu, BLOCK_M=bm, BLOCK_N=bn,
        num_warps=1 if interp else 4, num_stages=1 if interp else 3,
    )  # fmt: skip
    return y
