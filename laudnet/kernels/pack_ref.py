"""Pure-PyTorch reference of `pack.py`: the fixed-capacity ("sync-free") packing of token rows of the deployed ViT
(`laudnet.deploy.packed`), the specification of the Triton kernel.

Of a `(B, N)` selection `compute` of token rows (and `sel ⊆ compute`, the rows whose results are kept), all in
device tensors and without host reads:

* `pos` int64 and `pos32` int32 `(B·N,)`: the flat positions `b·N + t` of the computed rows, sample-major in order,
  then all the other positions in order (a stable partition: a permutation of `range(B·N)`; int64 for PyTorch's
  index ops, int32 for the Triton kernels);
* `count` int32 `(1,)`: the number of computed rows;
* `keep` bool `(B·N,)`: `sel` at `pos` (False past `count`);
* `cu` int32 `(B+1,)`: each sample's sequence boundaries in the packed rows (prefix sums of its computed rows).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class Packing(NamedTuple):
    pos: torch.Tensor
    pos32: torch.Tensor
    count: torch.Tensor
    keep: torch.Tensor
    cu: torch.Tensor


def compact_positions(sel: torch.Tensor) -> torch.Tensor:
    """Stable partition along the last dim without host synchronisation: the positions of the True entries in order,
    then those of the False entries in order (an int64 permutation of ``range(sel.shape[-1])`` per row)."""
    n = sel.shape[-1]
    idx = torch.arange(n, device=sel.device).expand_as(sel)
    before = sel.to(torch.int64).cumsum(-1)  # selected entries up to and including each position
    count = before[..., -1:]
    dest = torch.where(sel, before - 1, count + idx - before)  # unselected: count + (unselected before it)
    return torch.empty_like(idx).scatter_(-1, dest, idx)


def check_pack_args(sel: torch.Tensor, compute: torch.Tensor) -> None:
    if sel.dim() != 2 or sel.dtype != torch.bool or compute.shape != sel.shape or compute.dtype != torch.bool:
        raise ValueError(f"sel and compute must be bool (B, N) of one shape, got {sel.dtype} {tuple(sel.shape)} and "
                         f"{compute.dtype} {tuple(compute.shape)}")


def pack_rows_ref(sel: torch.Tensor, compute: torch.Tensor) -> Packing:
    """The packing of the rows `compute` (see the module docstring); `sel` ⊆ `compute`: the rows kept."""
    check_pack_args(sel, compute)
    flat = compute.reshape(-1)
    pos = compact_positions(flat)
    count = flat.sum(dtype=torch.int32).reshape(1)
    keep = sel.reshape(-1)[pos]  # rows past `count` are uncomputed positions: False
    cu = F.pad(compute.sum(1, dtype=torch.int32).cumsum(0, dtype=torch.int32), (1, 0))
    return Packing(pos, pos.to(torch.int32), count, keep, cu)
