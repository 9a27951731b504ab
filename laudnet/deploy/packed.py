"""Packed token rows for the deployed ViT: index building (with or without host synchronisation), GEMMs on the packed
rows, and variable-length ("varlen") attention over them.

A selection of tokens (B, N) is packed sample-major: the selected tokens of sample 0 in token order, then those of
sample 1, ..., so each sample's tokens form one contiguous sequence and `cu` (int32, length S+1) holds the sequence
boundaries, as flash-attention's varlen interface takes them.

Two ways of building the rows:

- **exact** (`sync_free=False`): exactly the selected rows; the host reads the per-sample counts once (the only
  synchronisation) and the rows come from the same stable partition as below, cut at their total. Samples without a
  selected token get no sequence at all.
- **sync-free** (`sync_free=True`): the rows are a permutation of all B·N positions with the selected ones first
  (`laudnet.kernels.pack_rows`: one Triton launch on CUDA, prefix sums and a scatter in PyTorch elsewhere; no host
  read); `count` (a one-element int32 device tensor) says how many are in use,
  and the sequence bound is N. Everything has a fixed shape, so the work can be captured in a CUDA graph; the GEMMs
  read `count` on the device and skip the tiles past it (`laudnet.kernels.pixel_conv1x1`), flash-attention skips the
  blocks past each sequence's end. Rows past `count` hold unspecified values and are never written back.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from laudnet.kernels import dispatch
from laudnet.kernels.attention_ref import varlen_attention_ref
from laudnet.kernels.indexing import compact_positions as compact_positions
from laudnet.kernels.indexing import selection

_HALF = (torch.float16, torch.bfloat16)


@dataclass
class PackedRows:
    """Selected token rows, packed sample-major (see the module docstring).

    Attributes:
        pos: int64 (R,) flat token positions b·N + t of the packed rows.
        count: None when every row is in use (exact packing), else an int32 (1,) device tensor: rows in use.
        keep: None when every row in use is written back, else a bool (R,): rows whose results are written back
            (rows computed only to keep a sequence non-empty, and the rows past `count`, are not).
        cu: int32 (S+1,) sequence boundaries, one sequence per sample (exact packing: per sample with rows).
        max_len: an upper bound of the sequence lengths (host integer).
        lengths: exact packing: the host-read number of selected rows of every sample, empty ones included.
    """

    pos: Tensor
    count: Tensor | None
    keep: Tensor | None
    cu: Tensor
    max_len: int
    lengths: list[int] | None = None

    pos_int32: Tensor | None = None

    @property
    def pos32(self) -> Tensor:
        """`pos` as int32, for the Triton kernels (made once)."""
        if self.pos_int32 is None:
            self.pos_int32 = self.pos.to(torch.int32)
        return self.pos_int32


def pack_rows(tokens: Tensor | None, run: Tensor | None, shape: tuple[int, int], *, sync_free: bool,
              with_cls: bool = False, device: torch.device | None = None) -> PackedRows:
    """Pack the selected tokens (`tokens` bool (B, N), None: all) of the samples that run (`run` bool (B,), None: all).

    Args:
        tokens, run: the selection (see above); shape: (B, N).
        sync_free: fixed-capacity packing without host reads (see the module docstring).
        with_cls: sync-free only: compute every sample's class token too (kept only where selected), so that no
            sequence is empty.
        device: where the packing lives when tokens and run are both None.
    """
    b, n = shape
    if not sync_free:
        sel = selection(tokens, run, shape, device=device)[0]
        counts = sel.sum(1)
        lengths = counts.tolist()  # the one host read
        used = [c for c in lengths if c]
        pos = compact_positions(sel.reshape(-1))[: sum(used)]
        # Boundaries of the non-empty sequences, on the device: the non-empty samples are the first len(used) of
        # a stable partition of the samples.
        nonempty = compact_positions(counts > 0)[: len(used)]
        cu = F.pad(counts.cumsum(0)[nonempty], (1, 0)).to(torch.int32)
        return PackedRows(pos, None, None, cu, max(used, default=0), lengths)
    if tokens is None and run is None:  # every row: the packing is the identity, built by the same kernel
        tokens = torch.ones(shape, dtype=torch.bool, device=device)
    p = dispatch.pack_rows(tokens, run, shape, with_cls)  # one Triton launch on CUDA
    return PackedRows(p.pos, p.count, p.keep, p.cu, n, pos_int32=p.pos32)


def _triton_rows(src: Tensor, rows: PackedRows, weight_t: Tensor | None) -> bool:
    return rows.count is not None and weight_t is not None and dispatch.resolve_impl(src, weight_t) == "triton"


def rows_linear(src: Tensor, weight: Tensor, weight_t: Tensor | None, bias: Tensor | None, rows: PackedRows,
                *, packed: bool = False) -> Tensor:
    """``F.linear`` on the packed rows of `src`.

    Args:
        src: (M, Cin) contiguous: token rows by flat position, or (with `packed`) already in packing order.
        weight: (Cout, Cin). weight_t: the same as a contiguous (Cin, Cout), for the Triton kernel (sync-free only).
        bias: (Cout,) or None.
        rows: the packing.
        packed: `src` row r is packed row r (no gather).

    Returns:
        (R, Cout) in packing order. With a sync-free packing on CUDA (Triton), rows past `count` are unspecified and
        not computed; on the PyTorch path every row is computed.
    """
    if _triton_rows(src, rows, weight_t):
        m = src.shape[0]
        idx = torch.arange(m, device=src.device, dtype=torch.int32) if packed else rows.pos32
        return dispatch.pixel_conv1x1(src.view(m, 1, 1, src.shape[1]), weight_t, bias, idx, relu=False, compact=True,
                                      count=rows.count, impl="triton")
    return F.linear(src if packed else src[rows.pos], weight, bias)


def rows_linears(src: Tensor, layers: list[tuple[Tensor, Tensor | None, Tensor | None]],
                 rows: PackedRows) -> list[Tensor]:
    """`rows_linear` of several (weight, weight_t, bias) on the same rows (the PyTorch path gathers them once)."""
    if _triton_rows(src, rows, layers[0][1]):
        return [rows_linear(src, w, wt, b, rows) for w, wt, b in layers]
    gathered = src[rows.pos]
    return [F.linear(gathered, w, b) for w, _, b in layers]


def add_rows(x2: Tensor, pos: Tensor, out: Tensor, keep: Tensor | None = None, *, inplace: bool = False) -> Tensor:
    """``x2`` (M, C) plus `out` (R, C) at the distinct row positions `pos` (R,); rows where `keep` (R,) is False add
    nothing (their `out` may hold anything, NaN included).

    The positions are distinct, so this is a gather, an add and a copy: no atomics (`index_add` runs on atomics,
    which are slow in bf16). In place when `inplace` (x2 must then be a tensor the caller owns).
    """
    cur = x2.index_select(0, pos)
    new = cur + out if keep is None else torch.where(keep[:, None], cur + out, cur)
    return (x2 if inplace else x2.clone()).index_copy_(0, pos, new)


def scatter_rows(x2: Tensor, out: Tensor, rows: PackedRows, *, inplace: bool = False) -> Tensor:
    """``x2`` (B·N, C) plus the packed results `out` (R, C) at their token positions; rows not kept add nothing."""
    return add_rows(x2, rows.pos, out, rows.keep, inplace=inplace)


# --- varlen attention ---------------------------------------------------------------------------------------------
@functools.cache
def _flash_varlen() -> Callable | None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


@functools.cache
def _varlen_takes_scale() -> bool:
    return "scale" in inspect.signature(_flash_varlen()).parameters


def varlen_available() -> bool:
    """True when this PyTorch has `torch.nn.attention.varlen.varlen_attn` (flash-attention on CUDA, PyTorch ≥ 2.9)."""
    return _flash_varlen() is not None


def check_varlen_support(device: torch.device | str, dtype: torch.dtype) -> None:
    """Raise ValueError when varlen attention cannot run fast here: CUDA in fp16/bf16 without `varlen_attn`.

    (Elsewhere, on CPU or in fp32, the PyTorch reference `varlen_attention_reference` computes the same function.)
    """
    if torch.device(device).type == "cuda" and dtype in _HALF and not varlen_available():
        raise ValueError(
            f"attention='varlen' needs torch.nn.attention.varlen.varlen_attn (PyTorch >= 2.9); this is torch "
            f"{torch.__version__}: use attention='bucket'"
        )


def varlen_attention(q: Tensor, k: Tensor, v: Tensor, cu: Tensor, max_len: int, scale: float) -> Tensor:
    """Attention within each packed sequence: q, k, v (R, H, d) contiguous → (R, H, d).

    CUDA in fp16/bf16 runs `torch.nn.attention.varlen.varlen_attn` (flash-attention, or cuDNN where PyTorch chooses
    it; rows past ``cu[-1]`` are not computed); elsewhere `varlen_attention_reference`. The inputs must be
    contiguous: some PyTorch versions place cuDNN's ragged sequences at ``cu·H·d`` whatever the strides.
    """
    if not (q.is_contiguous() and k.is_contiguous() and v.is_contiguous()):
        raise ValueError("varlen_attention needs contiguous (R, H, d) q, k and v")
    if q.is_cuda and q.dtype in _HALF:
        fn = _flash_varlen()
        if fn is None:
            check_varlen_support(q.device, q.dtype)
        if _varlen_takes_scale():
            return fn(q, k, v, cu, cu, max_len, max_len, scale=scale)
        # PyTorch 2.9's varlen_attn has no scale argument: it uses 1/√d, so fold the ratio into q.
        return fn(q * (scale * math.sqrt(q.shape[-1])), k, v, cu, cu, max_len, max_len)
    return varlen_attention_reference(q, k, v, cu, max_len, scale)


def varlen_attention_reference(q: Tensor, k: Tensor, v: Tensor, cu: Tensor, max_len: int, scale: float) -> Tensor:
    """PyTorch reference of `varlen_attention`, without host synchronisation (`laudnet.kernels.attention_ref`).
    Rows past ``cu[-1]`` give 0."""
    return varlen_attention_ref(q.contiguous(), k.contiguous(), v.contiguous(), cu, max_len, scale)
