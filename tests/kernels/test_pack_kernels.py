"""Sync-free token-row packing (`laudnet.kernels.pack`) against its reference: under TRITON_INTERPRET=1 on CPU,
compiled on CUDA (`gpu`)."""

import pytest
import torch
from spatial_testing import cuda_fixture, interpret_fixture  # noqa: F401 (fixtures)

from laudnet import kernels as K
from laudnet.kernels.pack import pack_rows_triton
from laudnet.kernels.pack_ref import pack_rows_ref


def _selection(b: int, n: int, p: float, seed: int, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sel = torch.rand((b, n), generator=gen) < p
    compute = sel.clone()
    compute[:, 0] = True  # e.g. the class token computed in every sample, kept only where selected
    return sel.to(device), compute.to(device)


def _equal(a, b) -> None:
    for name, x, y in zip(a._fields, a, b, strict=True):
        assert x.dtype == y.dtype and torch.equal(x, y), name


def test_reference_is_the_packing():
    sel, compute = _selection(3, 5, 0.5, 0)
    p = pack_rows_ref(sel, compute)
    flat = compute.reshape(-1)
    n = int(flat.sum())
    assert torch.equal(p.pos[:n], flat.nonzero().squeeze(1)) and torch.equal(p.pos[n:], (~flat).nonzero().squeeze(1))
    assert int(p.count) == n and torch.equal(p.pos32, p.pos.to(torch.int32))
    assert torch.equal(p.keep, sel.reshape(-1)[p.pos])
    assert p.cu.tolist() == [0, *compute.sum(1).cumsum(0).tolist()]


@pytest.mark.parametrize(("b", "n", "p"), [(3, 7, 0.5), (5, 13, 0.3), (2, 9, 1.0), (4, 6, 0.0), (1, 40, 0.6)])
def test_pack_rows_interpret(interpret, b, n, p):
    """Several programs (16 positions each under the interpreter), samples straddling chunks; all, none, one sample."""
    sel, compute = _selection(b, n, p, b * n)
    _equal(pack_rows_triton(sel, compute), pack_rows_ref(sel, compute))
    _equal(K.pack_rows(sel, sel, impl="triton"), pack_rows_ref(sel, sel))


def test_pack_rows_rejects_bad_input():
    sel, compute = _selection(2, 3, 0.5, 1)
    with pytest.raises(ValueError, match="sel and compute must be bool"):
        pack_rows_ref(sel, compute[:, :2])
    with pytest.raises(ValueError, match="sel and compute must be bool"):
        pack_rows_ref(sel.int(), compute)


@pytest.mark.gpu
def test_pack_rows_cuda(cuda):
    sel, compute = _selection(128, 197, 0.5, 2, device=cuda)
    _equal(K.pack_rows(sel, compute), pack_rows_ref(sel, compute))
