"""Row-list linear layer with fused GELU / residual scatter-add (`laudnet.kernels.rows`) against its reference:
under TRITON_INTERPRET=1 on CPU, compiled on CUDA (`gpu`)."""

import pytest
import torch
import torch.nn.functional as F
from spatial_testing import cuda_fixture, err_ratio, interpret_fixture  # noqa: F401 (fixtures)

from laudnet import kernels as K
from laudnet.kernels.rows import rows_linear_triton
from laudnet.kernels.rows_ref import rows_linear_ref


def _case(m: int, cin: int, cout: int, r: int, seed: int, device="cpu", dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    src = torch.randn((m, cin), generator=gen)
    wt = torch.randn((cin, cout), generator=gen) / cin**0.5
    bias = torch.randn(cout, generator=gen)
    idx = torch.randperm(m, generator=gen)[:r].to(torch.int32)
    return [t.to(device) for t in (src.to(dtype), wt.to(dtype), bias.to(dtype), idx)]


def test_reference_is_the_linear_layer_on_the_rows():
    src, wt, bias, idx = _case(20, 12, 7, 9, 0)
    count = torch.tensor([6], dtype=torch.int32)
    y = rows_linear_ref(src, wt, bias, idx, count, "gelu")
    assert torch.allclose(y[:6], F.gelu(F.linear(src[idx[:6].long()], wt.t(), bias)), atol=1e-6)
    out = torch.randn(25, 7)
    keep = torch.tensor([True, False, True, True, False, True, True, True, True])
    scale = torch.rand(7)
    dst = torch.randperm(25)[:9].to(torch.int32)
    got = rows_linear_ref(src, wt, bias, idx, count, out=out.clone(), out_idx=dst, keep=keep, scale=scale)
    expect = out.clone()
    for r in range(6):
        if keep[r]:
            expect[dst[r]] += scale * F.linear(src[idx[r].long()], wt.t(), bias)
    assert torch.allclose(got, expect, atol=1e-5)


@pytest.mark.parametrize("count", [None, 0, 1, 37, 41])
@pytest.mark.parametrize("act", ["none", "gelu"])
def test_gather_form_interpret(interpret, count, act):
    """Odd sizes (several row tiles, a partial N tile, K not a multiple of the K tile); count 0, 1, all, beyond."""
    src, wt, bias, idx = _case(50, 24, 19, 41, 1)
    cnt = None if count is None else torch.tensor([count], dtype=torch.int32)
    got = rows_linear_triton(src, wt, bias, idx, cnt, act)
    ref = rows_linear_ref(src, wt, bias, idx, cnt, act)
    n = 41 if count is None else min(count, 41)
    assert got.shape == (41, 19)
    if n:
        assert err_ratio(got[:n], ref[:n]) < 1e-5
    full = rows_linear_triton(src, wt, None, None, None, act)  # every row of src, no bias
    assert err_ratio(full, rows_linear_ref(src, wt, None, act=act)) < 1e-5


@pytest.mark.parametrize("count", [None, 0, 23])
def test_planes_and_heads_interpret(interpret, count):
    """The qkv form: q, k, v planes, columns of the heads a row's sample skips at zero (samples of 7 tokens, 3 heads
    of 16 columns per plane); the all-heads-kept mask equals no mask."""
    src, wt, bias, idx = _case(35, 16, 144, 30, 8)  # 5 samples x 7 tokens
    gen = torch.Generator().manual_seed(9)
    kept = torch.rand(5, 3, generator=gen) < 0.5
    kept[0] = False  # a sample without heads
    kept[1] = True
    cnt = None if count is None else torch.tensor([count], dtype=torch.int32)
    got = rows_linear_triton(src, wt, bias, idx, cnt, planes=3, heads=(kept, 7))
    ref = rows_linear_ref(src, wt, bias, idx, cnt, planes=3, heads=(kept, 7))
    n = 30 if count is None else count
    assert got.shape == ref.shape == (3, 30, 48)
    dense = rows_linear_ref(src, wt, bias, idx, cnt)
    col_head = torch.arange(144) % 48 // 16
    expect = dense * kept[idx.long() // 7][:, col_head]
    assert torch.allclose(ref[:, :n], expect[:n].view(n, 3, 48).transpose(0, 1), atol=1e-6)
    if n:
        assert err_ratio(got[:, :n], ref[:, :n]) < 1e-5
        all_kept = rows_linear_triton(src, wt, bias, idx, cnt, planes=3, heads=(torch.ones(5, 3, dtype=torch.bool), 7))
        assert err_ratio(all_kept[:, :n], dense[:n].view(n, 3, 48).transpose(0, 1)) < 1e-5


def test_heads_narrower_than_a_tile_are_refused(interpret):
    src, wt, bias, idx = _case(35, 16, 36, 30, 8)  # 3 heads of 4 columns per plane
    with pytest.raises(ValueError, match="heads of 4 columns: the head width must be a multiple of 16"):
        rows_linear_triton(src, wt, bias, idx, planes=3, heads=(torch.ones(5, 3, dtype=torch.bool), 7))


@pytest.mark.parametrize("kind", ["all", "some", "none"])
@pytest.mark.parametrize("with_scale", [False, True])
def test_scatter_add_form_interpret(interpret, kind, with_scale):
    src, wt, bias, idx = _case(50, 24, 19, 41, 2)
    gen = torch.Generator().manual_seed(3)
    out = torch.randn((60, 19), generator=gen)
    dst = torch.randperm(60, generator=gen)[:41].to(torch.int32)
    keep = {"all": torch.ones(41, dtype=torch.bool), "none": torch.zeros(41, dtype=torch.bool),
            "some": torch.rand(41, generator=gen) < 0.5}[kind]
    scale = torch.rand(19, generator=gen) if with_scale else None
    cnt = torch.tensor([33], dtype=torch.int32)
    got = rows_linear_triton(src, wt, bias, idx, cnt, out=out.clone(), out_idx=dst, keep=keep, scale=scale)
    ref = rows_linear_ref(src, wt, bias, idx, cnt, out=out.clone(), out_idx=dst, keep=keep, scale=scale)
    assert err_ratio(got, ref) < 1e-5
    untouched = torch.ones(60, dtype=torch.bool)
    untouched[dst[:33][keep[:33]].long()] = False
    assert torch.equal(got[untouched], out[untouched])  # rows not listed, not kept or past the count: unchanged
    packed = K.rows_linear(src, wt, bias, None, cnt, out=out.clone(), out_idx=torch.arange(50, dtype=torch.int32),
                           impl="triton")  # the packed-input form: src row r goes to out_idx[r]
    assert err_ratio(packed, rows_linear_ref(src, wt, bias, None, cnt, out=out.clone(),
                                             out_idx=torch.arange(50, dtype=torch.int32))) < 1e-5


def test_rows_linear_rejects_bad_input():
    src, wt, bias, idx = _case(10, 8, 4, 5, 4)
    with pytest.raises(ValueError, match="weight_t must be"):
        rows_linear_ref(src, wt.t().contiguous(), bias, idx)
    with pytest.raises(ValueError, match="act must be one of"):
        rows_linear_ref(src, wt, bias, idx, act="relu")
    with pytest.raises(ValueError, match="in_idx must be int32"):
        rows_linear_ref(src, wt, bias, idx.long())
    with pytest.raises(ValueError, match="out_idx has 3 rows"):
        rows_linear_ref(src, wt, bias, idx, out=torch.zeros(10, 4), out_idx=idx[:3])
    with pytest.raises(ValueError, match="scatter-add form takes no activation"):
        rows_linear_ref(src, wt, bias, idx, act="gelu", out=torch.zeros(10, 4), out_idx=idx)
    with pytest.raises(ValueError, match="belong to the scatter-add form"):
        rows_linear_ref(src, wt, bias, idx, keep=torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="planes must be a positive integer dividing Cout=4"):
        rows_linear_ref(src, wt, bias, idx, planes=3)
    with pytest.raises(ValueError, match="heads must be a bool"):
        rows_linear_ref(src, wt, bias, idx, heads=(torch.ones(2, 3, dtype=torch.bool), 5))
    with pytest.raises(ValueError, match="more than 2 samples x 4 tokens"):
        rows_linear_ref(src, wt, bias, idx, heads=(torch.ones(2, 2, dtype=torch.bool), 4))
    with pytest.raises(ValueError, match="planes and heads belong to the gather form"):
        rows_linear_ref(src, wt, bias, idx, out=torch.zeros(10, 4), out_idx=idx, planes=2)


@pytest.mark.gpu
@pytest.mark.parametrize("act", ["none", "gelu"])
def test_rows_linear_cuda_bf16(cuda, act):
    """DeiT-S shapes: 128·197 capacity rows, half in use; fc1 with GELU, then fc2 scatter-added into the tokens."""
    m, c, hid = 128 * 197, 384, 1536
    src, w1, b1, idx = _case(m, c, hid, m, 5, cuda, torch.bfloat16)
    cnt = torch.tensor([m // 2], dtype=torch.int32, device=cuda)
    h = K.rows_linear(src, w1, b1, idx, cnt, act)
    ref = rows_linear_ref(src.float(), w1.float(), b1.float(), idx, cnt, act)
    assert err_ratio(h[: m // 2].float(), ref[: m // 2]) < 2e-2
    w2 = (torch.randn(hid, c, device=cuda) / hid**0.5).to(torch.bfloat16)
    keep = torch.rand(m, device=cuda) < 0.9
    x = src.clone()
    got = K.rows_linear(h, w2, None, None, cnt, out=x, out_idx=idx, keep=keep)
    expect = rows_linear_ref(h.float(), w2.float(), None, None, cnt, out=src.float(), out_idx=idx, keep=keep)
    assert err_ratio(got.float(), expect) < 2e-2


@pytest.mark.gpu
def test_heads_cuda_bf16(cuda):
    """DeiT-S shapes: the qkv GEMM with per-sample heads (6 heads of 64) on half the capacity rows."""
    b, n, c = 128, 197, 384
    m = b * n
    src, wqkv, bqkv, idx = _case(m, c, 3 * c, m, 10, cuda, torch.bfloat16)
    cnt = torch.tensor([m // 2], dtype=torch.int32, device=cuda)
    kept = torch.rand(b, 6, device=cuda) < 0.5
    got = K.rows_linear(src, wqkv, bqkv, idx, cnt, planes=3, heads=(kept, n))
    expect = rows_linear_ref(src.float(), wqkv.float(), bqkv.float(), idx, cnt, planes=3, heads=(kept, n))
    assert err_ratio(got[:, : m // 2].float(), expect[:, : m // 2]) < 2e-2
