"""Pure-PyTorch reference of `pack.py`: the fixed-capacity ("sync-free") packing of token rows of the deployed ViT
(`laudnet.deploy.packed`), the specification of the Triton kernel.

Of a `(B, N)` selection of token rows — the kept rows `sel` (the selected tokens of the samples that run the
sub-block) and the computed rows `compute ⊇ sel` (optionally every sample's class token too, so that no sequence is
empty) — all in device tensors and without host reads:

* `pos` int64 and `pos32` int32 `(B·N,)`: the flat positions `b·N + t` of the computed rows, sample-major in order,
  then all the other positions in order (a stable partition: a permutation of `range(B·N)`; int64 for PyTorch's
  index ops, int32 for the Triton kernels);
* `count` int32 `(1,)`: the number of computed rows;
* `keep` bool `(B·N,)`: `sel` at `pos` (False past `count`);
* `cu` int32 `(B+1,)`: each sample's sequence boundaries in the packed rows (prefix sums of its computed rows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .indexing import Packing, compact_positions, selection


def pack_rows_ref(tokens: torch.Tensor | None, run: torch.Tensor | None, shape: tuple[int, int],
                  with_cls: bool = False) -> Packing:
    """The packing of the token rows (see the module docstring) of the selection `tokens` (bool (B, N), None: every
    token) in the samples `run` (bool (B,), None: every sample), with every sample's class token computed too when
    `with_cls` (kept only where selected)."""
    sel, compute = selection(tokens, run, shape, with_cls)
    flat = compute.reshape(-1)
    pos = compact_positions(flat)
    count = flat.sum(dtype=torch.int32).reshape(1)
    keep = sel.reshape(-1)[pos]  # rows past `count` are uncomputed positions: False
    cu = F.pad(compute.sum(1, dtype=torch.int32).cumsum(0, dtype=torch.int32), (1, 0))
    return Packing(pos, pos.to(torch.int32), count, keep, cu)
