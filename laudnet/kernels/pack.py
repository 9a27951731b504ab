"""Triton kernel of `pack_ref.py`: the deployed ViT's sync-free packing of token rows in one launch (the PyTorch form
takes about eight: prefix sums, a scatter, gathers and reductions over the B·N positions, per block and sub-block).

Each program takes a chunk of positions and counts the computed rows before it itself (a re-read of the flags,
from L2), as `masker._compact_kernel` does: no grid-wide synchronisation, no host read, capturable in a CUDA graph.
"""

import torch

from ._utils import LazyKernel, interpreter_enabled
from .pack_ref import Packing, check_pack_args

try:
    import triton.language as tl
except Exception:  # the reference path works without triton; the kernel below is then never launched

    class tl:  # noqa: N801 - stands in for triton.language so that the kernel definition still evaluates
        constexpr = object


def _pack_rows_kernel_src(
    sel_ptr,  # uint8 [T] rows kept
    comp_ptr,  # uint8 [T] rows computed (⊇ kept)
    pos_ptr,  # int64 [T] out
    pos32_ptr,  # int32 [T] out: the same
    keep_ptr,  # uint8 [T] out
    cnt_ptr,  # int32 [1] out
    cu_ptr,  # int32 [B+1] out
    T,
    N,  # positions per sample
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    start = pid * BLOCK
    ar = tl.arange(0, BLOCK)
    before = tl.full((BLOCK,), 0, tl.int32)
    total = tl.full((BLOCK,), 0, tl.int32)
    for t0 in range(0, T, BLOCK):
        t = t0 + ar
        c = tl.load(comp_ptr + t, mask=t < T, other=0).to(tl.int32)
        total += c
        before += tl.where(t < start, c, 0)
    n_total = tl.sum(total, axis=0)
    t = start + ar
    ok = t < T
    c = tl.load(comp_ptr + t, mask=ok, other=0).to(tl.int32)
    s = tl.load(sel_ptr + t, mask=ok, other=0)
    act = tl.cumsum(c, axis=0) - c + tl.sum(before, axis=0)  # computed rows before t
    dest = tl.where(c > 0, act, n_total + t - act)
    tl.store(pos_ptr + dest, t.to(tl.int64), mask=ok)
    tl.store(pos32_ptr + dest, t, mask=ok)
    tl.store(keep_ptr + dest, tl.where(c > 0, s, 0).to(tl.uint8), mask=ok)
    last = ok & ((t + 1) % N == 0)  # a sample's last position closes its sequence
    tl.store(cu_ptr + (t + 1) // N, act + c, mask=last)
    first = pid == 0
    tl.store(cu_ptr, 0, mask=first)
    tl.store(cnt_ptr, n_total, mask=first)


_pack_rows_kernel = LazyKernel(_pack_rows_kernel_src)


def pack_rows_triton(sel: torch.Tensor, compute: torch.Tensor) -> Packing:
    """Triton kernel of `pack_rows_ref` (one launch). Same arguments and result."""
    check_pack_args(sel, compute)
    b, n = sel.shape
    t = b * n
    dev = sel.device
    pos = torch.empty(t, dtype=torch.int64, device=dev)
    pos32 = torch.empty(t, dtype=torch.int32, device=dev)
    keep = torch.empty(t, dtype=torch.uint8, device=dev)
    count = torch.zeros(1, dtype=torch.int32, device=dev)
    cu = torch.zeros(b + 1, dtype=torch.int32, device=dev)
    if t:
        block = 16 if interpreter_enabled() else 1024
        _pack_rows_kernel[(-(-t // block),)](
            sel.contiguous().view(torch.uint8), compute.contiguous().view(torch.uint8), pos, pos32, keep, count, cu, t,
            n,
            BLOCK=block, num_warps=1 if interpreter_enabled() else 4,
        )  # fmt: skip
    return Packing(pos, pos32, count, keep.view(torch.bool), cu)
