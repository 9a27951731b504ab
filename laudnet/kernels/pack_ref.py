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


def check_pack_args(tokens: torch.Tensor | None, run: torch.Tensor | None, shape: tuple[int, int]) -> tuple[int, int]:
    """Raise ValueError unless tokens is bool (B, N) and run bool (B,) (either may be None); returns (B, N)."""
    b, n = shape
    if tokens is not None and (tokens.dtype != torch.bool or tuple(tokens.shape) != (b, n)):
        raise ValueError(f"tokens must be bool ({b}, {n}), got {tokens.dtype} {tuple(tokens.shape)}")
    if run is not None and (run.dtype != torch.bool or tuple(run.shape) != (b,)):
        raise ValueError(f"run must be bool ({b},), got {run.dtype} {tuple(run.shape)}")
    return b, n


def selection(tokens: torch.Tensor | None, run: torch.Tensor | None, shape: tuple[int, int],
              with_cls: bool = False, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sel, compute) bool (B, N): the rows kept (`tokens` of the samples in `run`) and the rows computed (`sel`,
    plus every sample's class token with `with_cls`)."""
    b, n = check_pack_args(tokens, run, shape)
    dev = device if device is not None else next((x.device for x in (tokens, run) if x is not None), None)
    sel = tokens.clone() if tokens is not None else torch.ones((b, n), dtype=torch.bool, device=dev)
    if run is not None:
        sel &= run[:, None]
    compute = sel.clone()
    if with_cls and n:
        compute[:, 0] = True
    return sel, compute


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
