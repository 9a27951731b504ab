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
    tokens = torch.rand((b, n), generator=gen) < p
    run = torch.rand(b, generator=gen) < 0.7
    return tokens.to(device), run.to(device)


def _equal(a, b) -> None:
    for name, x, y in zip(a._fields, a, b, strict=True):
        assert x.dtype == y.dtype and torch.equal(x, y), name


def test_reference_is_the_packing():
    tokens, run = _selection(3, 5, 0.5, 0)
    run[1] = False
    p = pack_rows_ref(tokens, run, (3, 5), with_cls=True)
    sel = tokens & run[:, None]
    compute = sel.clone()
    compute[:, 0] = True  # the class token computed in every sample, kept only where selected
    flat = compute.reshape(-1)
    n = int(flat.sum())
    assert torch.equal(p.pos[:n], flat.nonzero().squeeze(1)) and torch.equal(p.pos[n:], (~flat).nonzero().squeeze(1))
    assert int(p.count) == n and torch.equal(p.pos32, p.pos.to(torch.int32))
    assert torch.equal(p.keep, sel.reshape(-1)[p.pos])
    assert p.cu.tolist() == [0, *compute.sum(1).cumsum(0).tolist()]
    plain = pack_rows_ref(tokens, None, (3, 5))  # every sample, no extra rows
    assert int(plain.count) == int(tokens.sum()) and torch.equal(plain.keep[: int(tokens.sum())],
                                                                  torch.ones(int(tokens.sum()), dtype=torch.bool))


@pytest.mark.parametrize(("b", "n", "p"), [(3, 7, 0.5), (5, 13, 0.3), (2, 9, 1.0), (4, 6, 0.0), (1, 40, 0.6)])
@pytest.mark.parametrize("form", ["tokens", "run", "both", "both+cls", "run+cls"])
def test_pack_rows_interpret(interpret, b, n, p, form):
    """Several programs (16 positions each under the interpreter), samples straddling chunks; all, none, one
    sample; tokens and/or samples selected, with and without every class token computed."""
    tokens, run = _selection(b, n, p, b * n)
    tokens = tokens if "tokens" in form or "both" in form else None
    run = run if "run" in form or "both" in form else None
    cls = form.endswith("+cls")
    _equal(pack_rows_triton(tokens, run, (b, n), cls), pack_rows_ref(tokens, run, (b, n), cls))
    _equal(K.pack_rows(tokens, run, (b, n), cls, impl="triton"), pack_rows_ref(tokens, run, (b, n), cls))
    if run is not None:  # a column of the (B, 2) sub-block decisions: strided, read in place
        pair = torch.stack([~run, run], dim=1)
        _equal(pack_rows_triton(tokens, pair[:, 1], (b, n), cls), pack_rows_ref(tokens, run, (b, n), cls))


def test_pack_rows_rejects_bad_input():
    tokens, run = _selection(2, 3, 0.5, 1)
    with pytest.raises(ValueError, match=r"tokens must be bool \(2, 4\)"):
        pack_rows_ref(tokens, run, (2, 4))
    with pytest.raises(ValueError, match=r"run must be bool \(2,\)"):
        pack_rows_ref(tokens, run.int(), (2, 3))
    with pytest.raises(ValueError, match="needs tokens or run"):
        K.pack_rows(None, None, (2, 3))


@pytest.mark.gpu
def test_pack_rows_cuda(cuda):
    tokens, run = _selection(128, 197, 0.5, 2, device=cuda)
    for args in ((tokens, None, (128, 197), False), (tokens, run, (128, 197), True), (None, run, (128, 197), True)):
        _equal(K.pack_rows(*args), pack_rows_ref(*args))
