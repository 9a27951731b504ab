"""Triton kernel of `attention_ref.py`: attention within packed sequences, skipped (sequence, head) pairs not computed.

One program per (block of a sequence's query rows, sequence, head): the sequence's keys and values in blocks with an
online softmax (flash attention's forward), all in fp32 but the two `tl.dot`s. Where `heads` skips the pair, the
program writes zeros and computes nothing — what PyTorch's varlen flash attention cannot do (it takes every head of
every sequence). Query blocks past a sequence's end exit at once, so the grid can be sized from a capacity
(``max_len``) without reading the lengths on the host.
"""

from __future__ import annotations

import torch

from ._utils import LazyKernel, cdiv, interpreter_enabled, next_power_of_2
from .attention_ref import check_varlen_args

try:
    import triton.language as tl
except Exception:  # the reference path works without triton; the kernel below is then never launched

    class tl:  # noqa: N801 - stands in for triton.language so that the kernel definition still evaluates
        constexpr = object


def _varlen_attention_kernel_src(
    q_ptr,  # [R, H, D] contiguous
    k_ptr,
    v_ptr,
    o_ptr,  # [R, H, D]
    cu_ptr,  # int32/int64 [S + 1]
    hm_ptr,  # uint8 [S, H] (HEAD_MASK)
    max_len,
    scale,
    H: tl.constexpr,
    D: tl.constexpr,
    HEAD_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pair = tl.program_id(1)
    seq = pair // H
    head = pair % H
    start = tl.load(cu_ptr + seq).to(tl.int32)
    length = tl.minimum(tl.load(cu_ptr + seq + 1).to(tl.int32) - start, max_len)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    m_ok = offs_m < length
    row_stride = H * D
    keep = pid_m * BLOCK_M < length
    if HEAD_MASK:
        keep = keep & (tl.load(hm_ptr + seq * H + head) != 0)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    if keep:
        q = tl.load(q_ptr + (start + offs_m)[:, None] * row_stride + head * D + offs_d[None, :],
                    mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        qk_scale = scale * 1.4426950408889634  # exp(x) = exp2(x * log2(e))
        for n0 in range(0, length, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            n_ok = offs_n < length
            kv_off = (start + offs_n)[:, None] * row_stride + head * D + offs_d[None, :]
            k = tl.load(k_ptr + kv_off, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
            s = tl.dot(q, tl.trans(k)) * qk_scale
            s = tl.where(n_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_ptr + kv_off, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        acc = acc / l_i[:, None]
    # rows of the sequence (zeros where the pair is skipped); query blocks past the end write nothing
    out_ok = m_ok[:, None] & d_ok[None, :]
    tl.store(o_ptr + (start + offs_m)[:, None] * row_stride + head * D + offs_d[None, :],
             acc.to(o_ptr.dtype.element_ty), mask=out_ok)


_varlen_attention_kernel = LazyKernel(_varlen_attention_kernel_src)


def varlen_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, max_len: int,
                            scale: float, heads: torch.Tensor | None = None) -> torch.Tensor:
    """Triton kernel of `varlen_attention_ref`; rows past ``cu[-1]`` (or a sequence's `max_len`) are left
    unwritten."""
    check_varlen_args(q, k, v, cu, max_len, heads)
    r, h, d = q.shape
    s = cu.numel() - 1
    o = torch.empty_like(q)
    if s == 0 or max_len == 0 or r == 0:
        return o.zero_()
    interp = interpreter_enabled()
    block_d = max(16, next_power_of_2(d))
    block_m = 16 if interp else 64
    block_n = 16 if interp else 64
    hm = heads.contiguous().view(torch.uint8) if heads is not None else cu
    grid = (cdiv(max_len, block_m), s * h)
    _varlen_attention_kernel[grid](
        q, k, v, o, cu, hm, max_len, float(scale), H=h, D=d, HEAD_MASK=heads is not None, BLOCK_M=block_m,
        BLOCK_N=block_n, BLOCK_D=block_d, num_warps=1 if interp else 4, num_stages=1 if interp else 2,
    )  # fmt: skip
    return o
