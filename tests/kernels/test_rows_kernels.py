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


@pytest.mark.parametrize("cin", [24, 32])  # K with and without a partial K tile
def test_layer_norm_prologue_interpret(interpret, cin):
    """ln: the gathered rows normalised in the kernel (mean and variance over Cin in fp32) before the GEMM."""
    src, wt, bias, idx = _case(50, cin, 19, 41, 6)
    src = src * 3 + 5  # rows with a large mean: the variance must not come from E[x²] - mean²
    gen = torch.Generator().manual_seed(7)
    ln = (torch.randn(cin, generator=gen), torch.randn(cin, generator=gen), 1e-6)
    cnt = torch.tensor([29], dtype=torch.int32)
    got = rows_linear_triton(src, wt, bias, idx, cnt, "gelu", ln=ln)
    ref = rows_linear_ref(src, wt, bias, idx, cnt, "gelu", ln=ln)
    assert err_ratio(got[:29], ref[:29]) < 1e-5
    z = F.layer_norm(src[idx[:29].long()], (cin,), ln[0], ln[1], ln[2])
    assert torch.allclose(ref[:29], F.gelu(F.linear(z, wt.t(), bias)), atol=1e-5)


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
    with pytest.raises(ValueError, match=r"ln must be \(weight \(8,\)"):
        rows_linear_ref(src, wt, bias, idx, ln=(torch.ones(7), torch.zeros(8), 1e-6))


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
