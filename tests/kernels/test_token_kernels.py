"""ViT LayerNorm kernel (token masker fused into it; listed rows with a device-side count) against its reference
(interpreter on CPU; compiled on CUDA as `gpu`)."""

import pytest
import torch
from spatial_testing import cuda_fixture, err_ratio, interpret_fixture  # noqa: F401 (fixtures)

from laudnet import kernels as K
from laudnet.blocks.vit import TokenMasker
from laudnet.kernels import token_ref


def _args(shape, dtype, gen, device="cpu"):
    c = shape[-1]
    x = (torch.randn(shape, generator=gen) * 3 + 1).to(device=device, dtype=dtype)
    lw = (1 + 0.5 * torch.randn(c, generator=gen)).to(device=device, dtype=dtype)
    lb = (0.1 * torch.randn(c, generator=gen)).to(device=device, dtype=dtype)
    sw = torch.randn(c, generator=gen).to(device)
    sb = torch.randn(1, generator=gen).to(device)
    return x, lw, lb, sw, sb


def test_reference_score_is_the_token_maskers_logit_difference():
    gen = torch.Generator().manual_seed(0)
    masker = TokenMasker(24).eval()
    torch.nn.init.normal_(masker.fc.weight, generator=gen)
    x, lw, lb, _, _ = _args((3, 11, 24), torch.float32, gen)
    w, b = masker.fc.weight, masker.fc.bias
    y, score, keep_ref = token_ref.layer_norm_score_ref(x, lw, lb, 1e-6, (w[0] - w[1]).detach(),
                                                        (b[:1] - b[1:]).detach())
    torch.testing.assert_close(y, torch.nn.functional.layer_norm(x, (24,), lw, lb, 1e-6))
    logits = masker.fc(y)
    torch.testing.assert_close(score, logits[..., 0] - logits[..., 1], rtol=1e-5, atol=1e-5)
    keep = masker(y)[:, 1:]  # the class token is always kept; the others by execute ≥ skip
    assert torch.equal(keep.bool(), (score >= 0)[:, 1:]) and torch.equal(keep_ref[:, 1:], keep.bool())
    assert keep_ref[:, 0].all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 13, 24), (3, 7, 50), (1, 1, 384), (5, 130)])
def test_layer_norm_score_interpret(interpret, shape, dtype):
    gen = torch.Generator().manual_seed(sum(shape))
    args = _args(shape, dtype, gen)
    y_ref, s_ref, k_ref = token_ref.layer_norm_score_ref(*args[:3], 1e-6, *args[3:])
    y, score, keep = K.layer_norm_score(*args[:3], 1e-6, *args[3:], impl="triton")
    assert y.dtype == dtype and y.shape == args[0].shape and score.dtype == torch.float32
    tol = 1e-6 if dtype == torch.float32 else 1e-2  # bf16: a last-bit difference in some normalised values
    assert err_ratio(y, y_ref) < tol
    assert err_ratio(score, s_ref) < tol
    expect = score >= 0  # the kernel's decision is its own score's sign, the first token of a sequence kept
    expect[..., 0] = True
    assert keep.dtype == torch.bool and torch.equal(keep, expect)
    sure = s_ref.abs() > 1e-3
    sure[..., 0] = True
    assert torch.equal(keep[sure], k_ref[sure])  # the reference's decisions wherever rounding cannot flip them


def test_layer_norm_score_empty_interpret(interpret):
    args = _args((0, 5, 8), torch.float32, torch.Generator().manual_seed(0))
    y, score, keep = K.layer_norm_score(*args[:3], 1e-6, *args[3:], impl="triton")
    assert y.shape == (0, 5, 8) and score.shape == keep.shape == (0, 5)


def test_bad_arguments_are_named():
    x, lw, lb, sw, sb = _args((2, 5, 8), torch.float32, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="contiguous"):
        K.layer_norm_score(x.transpose(0, 1), lw, lb, 1e-6, sw, sb, impl="reference")
    with pytest.raises(ValueError, match="ln_bias must have shape \\(8,\\)"):
        K.layer_norm_score(x, lw, lb[:4], 1e-6, sw, sb, impl="reference")
    with pytest.raises(ValueError, match="fp32"):
        K.layer_norm_score(x, lw, lb, 1e-6, sw.half(), sb, impl="reference")
    x2 = x.view(10, 8)
    with pytest.raises(ValueError, match=r"LayerNorm needs weight \(8,\)"):
        K.rows_layer_norm(x2, None, None, lw[:7], lb, 1e-6, impl="reference")
    with pytest.raises(ValueError, match="in_idx must be int32"):
        K.rows_layer_norm(x2, torch.arange(3), None, lw, lb, 1e-6, impl="reference")


@pytest.mark.parametrize("count", [None, 0, 1, 29])
@pytest.mark.parametrize("cin", [24, 32])  # C below and at a power of two
def test_rows_layer_norm_interpret(interpret, count, cin):
    """Listed rows normalised into a packed matrix (mean and variance in fp32), only the counted rows; without a
    list, every row."""
    gen = torch.Generator().manual_seed(6)
    src = torch.randn((50, cin), generator=gen) * 3 + 5  # a large mean: the variance must not come from E[x²] - mean²
    idx = torch.randperm(50, generator=gen)[:41].to(torch.int32)
    w, b = torch.randn(cin, generator=gen), torch.randn(cin, generator=gen)
    cnt = None if count is None else torch.tensor([count], dtype=torch.int32)
    got = K.rows_layer_norm(src, idx, cnt, w, b, 1e-6, impl="triton")
    ref = token_ref.rows_layer_norm_ref(src, idx, cnt, w, b, 1e-6)
    n = 41 if count is None else count
    assert got.shape == (41, cin)
    assert torch.allclose(ref[:n], torch.nn.functional.layer_norm(src[idx[:n].long()], (cin,), w, b, 1e-6), atol=1e-5)
    if n:
        assert err_ratio(got[:n], ref[:n]) < 1e-5
        every = K.rows_layer_norm(src, None, cnt, w, b, 1e-6, impl="triton")  # no list: rows 0..count-1
        assert err_ratio(every[:n], torch.nn.functional.layer_norm(src[:n], (cin,), w, b, 1e-6)) < 1e-5


@pytest.mark.gpu
def test_layer_norm_score_cuda(cuda):
    gen = torch.Generator().manual_seed(1)
    args = _args((8, 197, 384), torch.bfloat16, gen, device=cuda)
    y_ref, s_ref, _ = token_ref.layer_norm_score_ref(*args[:3], 1e-6, *args[3:])
    y, score, _ = K.layer_norm_score(*args[:3], 1e-6, *args[3:])
    assert err_ratio(y, y_ref) < 1e-2 and err_ratio(score, s_ref) < 1e-2


@pytest.mark.gpu
def test_rows_layer_norm_cuda(cuda):
    """DeiT-S shapes: norm2 on half of 128 x 197 capacity rows."""
    gen = torch.Generator().manual_seed(2)
    m, c = 128 * 197, 384
    src = torch.randn((m, c), generator=gen).to(cuda, torch.bfloat16)
    idx = torch.randperm(m, generator=gen).to(cuda, torch.int32)
    w, b = (torch.randn(c, generator=gen).to(cuda, torch.bfloat16) for _ in range(2))
    cnt = torch.tensor([m // 2], dtype=torch.int32, device=cuda)
    z = K.rows_layer_norm(src, idx, cnt, w, b, 1e-6)
    ref = token_ref.rows_layer_norm_ref(src.float(), idx, cnt, w.float(), b.float(), 1e-6)
    assert err_ratio(z[: m // 2].float(), ref[: m // 2]) < 1e-2


def test_pooled_decisions_reference_is_the_maskers_decision():
    """The stacked execute-minus-skip linear decides as the head and sub-block maskers do (execute ≥ skip)."""
    from laudnet.blocks.vit import HeadMasker, SubBlockMasker
    from laudnet.deploy.vit import _execute_minus_skip

    gen = torch.Generator().manual_seed(1)
    y = torch.randn(5, 9, 24, generator=gen)
    heads, layers = HeadMasker(24, 3).eval(), SubBlockMasker(24).eval()
    for m in (heads, layers):
        torch.nn.init.normal_(m.fc.weight, generator=gen)
    rows = [_execute_minus_skip(m.fc) for m in (heads, layers)]
    got = token_ref.pooled_decisions_ref(y, torch.cat([w for w, _ in rows]), torch.cat([b for _, b in rows]))
    pooled = y.mean(1)
    with torch.no_grad():
        expected = [(m.fc(pooled).view(5, 2, -1)[:, 0] >= m.fc(pooled).view(5, 2, -1)[:, 1]) for m in (heads, layers)]
    assert torch.equal(got, torch.cat(expected, dim=1))


@pytest.mark.parametrize(("shape", "k"), [((3, 17, 48), 5), ((1, 197, 40), 2), ((4, 5, 300), 8)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pooled_decisions_interpret(interpret, shape, k, dtype):
    """One program per sample: token mean and the stacked linear, odd token counts and widths."""
    gen = torch.Generator().manual_seed(k)
    y = torch.randn(shape, generator=gen).to(dtype)
    w, b = torch.randn(k, shape[2], generator=gen), torch.randn(k, generator=gen) * 0.1
    got = K.pooled_decisions(y, w, b, impl="triton")
    logit = y.mean(1, dtype=torch.float32) @ w.t() + b
    decided = logit.abs() > 1e-4  # away from the threshold, where summation order cannot flip a decision
    assert got.dtype == torch.bool and got.shape == (shape[0], k)
    assert torch.equal(got[decided], (logit >= 0)[decided])
    with pytest.raises(ValueError, match="must be fp32"):
        K.pooled_decisions(y, w.double(), b, impl="triton")
    with pytest.raises(ValueError, match=r"weight must be \[K, "):
        K.pooled_decisions(y, w[:, 1:], b, impl="triton")


def test_pooled_decisions_cuda(cuda):
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(64, 197, 384, generator=gen).to(cuda, torch.bfloat16)
    w, b = torch.randn(8, 384, generator=gen).to(cuda), torch.randn(8, generator=gen).to(cuda) * 0.1
    logit = y.mean(1, dtype=torch.float32) @ w.t() + b
    decided = logit.abs() > 1e-3
    got = K.pooled_decisions(y, w, b)
    assert torch.equal(got[decided], (logit >= 0)[decided])
