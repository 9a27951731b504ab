"""Packed token rows (`laudnet.deploy.packed`): stable partition, exact and sync-free packing, the varlen reference."""

import pytest
import torch
import torch.nn.functional as F

from laudnet.deploy import packed
from laudnet.deploy.packed import compact_positions, pack_rows, varlen_attention, varlen_attention_reference


def test_compact_positions_is_a_stable_partition():
    sel = torch.rand(5, 23) < 0.4
    sel[1] = False
    sel[2] = True
    expected = torch.argsort((~sel).to(torch.uint8), dim=1, stable=True)
    assert torch.equal(compact_positions(sel), expected)
    flat = sel.reshape(-1)
    assert torch.equal(compact_positions(flat), torch.argsort((~flat).to(torch.uint8), stable=True))


def test_exact_and_sync_free_packing_agree():
    sel = torch.rand(4, 9) < 0.5
    sel[2] = False  # a sample without rows
    sel[0, 0] = True
    exact = pack_rows(sel, None, sel.shape, sync_free=False)
    free = pack_rows(sel, None, sel.shape, sync_free=True)
    total = int(sel.sum())
    assert exact.count is None and exact.keep is None
    assert torch.equal(exact.pos, sel.reshape(-1).nonzero().squeeze(1))
    assert free.pos.shape == (36,) and int(free.count) == total and free.max_len == 9
    assert torch.equal(free.pos[:total], exact.pos)
    assert free.keep[:total].all() and not free.keep[total:].any()
    counts = sel.sum(1)
    assert exact.cu.tolist() == [0, *counts[counts > 0].cumsum(0).tolist()]  # no empty sequence
    assert free.cu.tolist() == [0, *counts.cumsum(0).tolist()]  # one sequence per sample
    assert exact.max_len == int(counts.max())


def test_sync_free_packing_computes_extra_rows_without_keeping_them():
    sel = torch.zeros(3, 5, dtype=torch.bool)
    sel[1, [0, 2]] = True
    rows = pack_rows(sel, None, sel.shape, sync_free=True, with_cls=True)  # every class token computed
    assert int(rows.count) == 4
    assert rows.pos[:4].tolist() == [0, 5, 7, 10]
    assert rows.keep[:4].tolist() == [False, True, True, False]
    assert rows.cu.tolist() == [0, 1, 3, 4]


def _per_sequence(q, k, v, cu, scale):
    out = torch.zeros_like(q)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
        if b > a:
            o = F.scaled_dot_product_attention(q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1),
                                               scale=scale)
            out[a:b] = o.transpose(0, 1)
    return out


@pytest.mark.parametrize("max_len", [6, 11])  # exact and an upper bound
def test_varlen_reference_matches_per_sequence_attention(max_len):
    cu = torch.tensor([0, 3, 3, 9, 10], dtype=torch.int32)  # an empty sequence, a single-token one
    r = 14  # rows past cu[-1] = 10 are unused
    q, k, v = (torch.randn(r, 2, 8) for _ in range(3))
    out = varlen_attention_reference(q, k, v, cu, max_len, scale=0.3)
    expected = _per_sequence(q, k, v, cu, 0.3)
    assert torch.allclose(out[:10], expected[:10], atol=1e-6)
    assert torch.equal(out[10:], torch.zeros_like(out[10:]))
    assert torch.equal(varlen_attention(q, k, v, cu, max_len, 0.3), out)  # CPU: the reference


def test_varlen_support_check(monkeypatch):
    packed.check_varlen_support("cpu", torch.bfloat16)  # the reference runs there
    monkeypatch.setattr(packed, "_flash_varlen", lambda: None)
    assert not packed.varlen_available()
    packed.check_varlen_support("cuda", torch.float32)
    with pytest.raises(ValueError, match=r"attention='varlen' needs torch.nn.attention.varlen.varlen_attn"):
        packed.check_varlen_support("cuda", torch.bfloat16)


def test_add_rows_matches_index_add_and_ignores_rows_not_kept():
    x = torch.randn(10, 4)
    pos = torch.tensor([7, 2, 9, 0])
    out = torch.randn(4, 4)
    out[1] = float("nan")  # a row not kept may hold anything
    keep = torch.tensor([True, False, True, True])
    expected = x.index_add(0, pos[keep], out[keep])
    assert torch.equal(packed.add_rows(x, pos, out, keep), expected)
    assert torch.equal(packed.add_rows(x, pos[keep], out[keep]), expected)
    y = x.clone()
    assert packed.add_rows(y, pos, out, keep, inplace=True) is y and torch.equal(y, expected)
    assert not torch.equal(x, expected)  # not in place by default


def test_exact_packing_reads_the_counts_once_and_keeps_them():
    sel = torch.tensor([[True, False, True], [False, False, False], [False, True, False]])
    rows = pack_rows(sel, None, sel.shape, sync_free=False)
    assert rows.lengths == [2, 0, 1] and rows.max_len == 2
    assert rows.pos.tolist() == [0, 2, 7] and rows.cu.tolist() == [0, 2, 3]
    none = pack_rows(torch.zeros(2, 3, dtype=torch.bool), None, (2, 3), sync_free=False)
    assert none.pos.numel() == 0 and none.cu.tolist() == [0] and none.max_len == 0
