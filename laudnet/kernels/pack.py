"""Triton kernel of `pack_ref.py`: the deployed ViT's sync-free packing of token rows in one launch (the PyTorch form
takes about eight: prefix sums, a scatter, gathers and reductions over the B·N positions, per block and sub-block).

Each program takes a chunk of positions and counts the computed rows before it itself (a re-read of the flags,
from L2), as `masker._compact_kernel` does: no grid-wide synchronisation, no host read, capturable in a CUDA graph.
"""

import torch

from ._utils import LazyKernel, cdiv, interpreter_enabled
from .indexing import Packing, check_pack_args

try:
    import triton.language as tl
except Exception:  # the reference path works without triton; the kernel below is then never launched

    class tl:  # noqa: N801 - stands in for triton.language so that the kernel definition still evaluates
        constexpr = object


def _pack_rows_kernel_src(
    tok_ptr,  # uint8 [T] tokens selected (HAS_TOKENS; else every token)
    run_ptr,  # uint8 [B] samples that run the sub-block (HAS_RUN; else every sample)
    pos_ptr,  # int64 [T] out
    pos32_ptr,  # int32 [T] out: the same
    keep_ptr,  # uint8 [T] out
    cnt_ptr,  # int32 [1] out
    cu_ptr,  # int32 [B+1] out
    T,
    N,  # positions per sample
    RUN_STRIDE,  # elements between consecutive samples' entries of run (a column of the (B, 2) sub-block decisions)
    HAS_TOKENS: tl.constexpr,
    HAS_RUN: tl.constexpr,
    WITH_CLS: tl.constexpr,  # every sample's class token (position 0) is computed, kept only where selected
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    start = pid * BLOCK
    ar = tl.arange(0, BLOCK)
    before = tl.full((BLOCK,), 0, tl.int32)
    total = tl.full((BLOCK,), 0, tl.int32)
    c = tl.full((BLOCK,), 0, tl.int32)  # this program's chunk: rows computed, and kept
    s = tl.full((BLOCK,), 0, tl.int32)
    for t0 in range(0, T, BLOCK):  # every chunk's flags; the rows computed before this program's chunk
        t = t0 + ar
        ok = t < T
        kept = ok
        if HAS_TOKENS:
            kept = kept & (tl.load(tok_ptr + t, mask=ok, other=0) != 0)
        if HAS_RUN:
            kept = kept & (tl.load(run_ptr + (t // N) * RUN_STRIDE, mask=ok, other=0) != 0)
        comp = kept
        if WITH_CLS:
            comp = comp | (ok & (t % N == 0))
        ci = comp.to(tl.int32)
        total += ci
        before += tl.where(t < start, ci, 0)
        mine = t0 == start
        c = tl.where(mine, ci, c)
        s = tl.where(mine, kept.to(tl.int32), s)
    n_total = tl.sum(total, axis=0)
    t = start + ar
    ok = t < T
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


def pack_rows_triton(tokens: torch.Tensor | None, run: torch.Tensor | None, shape: tuple[int, int],
                     with_cls: bool = False) -> Packing:
    """Triton kernel of `pack_rows_ref` (one launch). Same arguments and result."""
    b, n = check_pack_args(tokens, run, shape)
    t = b * n
    if tokens is None and run is None:
        raise ValueError("pack_rows_triton needs tokens or run: with neither, every row is selected")
    dev = (tokens if tokens is not None else run).device
    pos = torch.empty(t, dtype=torch.int64, device=dev)
    pos32 = torch.empty(t, dtype=torch.int32, device=dev)
    keep = torch.empty(t, dtype=torch.uint8, device=dev)
    # the kernel writes the count and every sequence bound (no fill launches); with no positions they are zero
    count = torch.empty(1, dtype=torch.int32, device=dev) if t else torch.zeros(1, dtype=torch.int32, device=dev)
    cu = torch.empty(b + 1, dtype=torch.int32, device=dev) if t else torch.zeros(b + 1, dtype=torch.int32, device=dev)
    if t:
        block = 16 if interpreter_enabled() else 1024
        dummy = keep
        _pack_rows_kernel[(cdiv(t, block),)](
            tokens.contiguous().view(torch.uint8) if tokens is not None else dummy,
            run.view(torch.uint8) if run is not None else dummy, pos, pos32, keep, count, cu, t, n,
            run.stride(0) if run is not None else 1,
            HAS_TOKENS=tokens is not None, HAS_RUN=run is not None, WITH_CLS=bool(with_cls),
            BLOCK=block, num_warps=1 if interpreter_enabled() else 4,
        )  # fmt: skip
    return Packing(pos, pos32, count, keep.view(torch.bool), cu)
