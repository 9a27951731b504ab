"""The varlen attention kernel with skipped heads (interpreted on CPU) against its reference and plain attention."""

import math

import pytest
import torch
import torch.nn.functional as F
from spatial_testing import cuda_fixture, interpret_fixture  # noqa: F401 (fixtures)

from laudnet.kernels import dispatch
from laudnet.kernels.attention_ref import varlen_attention_ref


def _case(lengths, h=3, d=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = sum(lengths) + 2  # two spare rows past the last sequence
    q, k, v = (torch.randn(r, h, d, generator=g) for _ in range(3))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return q, k, v, cu


def test_reference_is_attention_per_sequence_and_zero_for_skipped_heads():
    q, k, v, cu = _case([5, 1, 7])
    heads = torch.tensor([[True, False, True], [True, True, True], [False, False, True]])
    scale = 0.3
    o = varlen_attention_ref(q, k, v, cu, 7, scale, heads)
    for s in range(3):
        a, b = int(cu[s]), int(cu[s + 1])
        expected = F.scaled_dot_product_attention(*(t[a:b].transpose(0, 1) for t in (q, k, v)), scale=scale)
        expected = expected.transpose(0, 1) * heads[s][None, :, None]
        torch.testing.assert_close(o[a:b], expected)
    assert o[int(cu[-1]):].abs().max() == 0


@pytest.mark.parametrize(("lengths", "max_len"),
                         [([5, 1, 19], 19), ([16, 16], 16), ([3, 33, 2], 40), ([1], 1), ([4, 0, 6], 6)])
@pytest.mark.parametrize("with_heads", [False, True])
def test_kernel_matches_reference(interpret, lengths, max_len, with_heads):
    """Odd lengths, a one-row and an empty sequence, lengths that fill whole blocks, several key blocks, a capacity
    above the longest sequence; every head kept, some skipped, a sequence with none."""
    q, k, v, cu = _case(lengths, seed=len(lengths))
    heads = None
    if with_heads:
        heads = torch.rand(len(lengths), 3, generator=torch.Generator().manual_seed(1)) < 0.5
        heads[0] = False
    scale = 1 / math.sqrt(q.shape[-1])
    got = dispatch.varlen_attention(q, k, v, cu, max_len, scale, heads, impl="triton")
    expected = varlen_attention_ref(q, k, v, cu, max_len, scale, heads)
    end = int(cu[-1])
    torch.testing.assert_close(got[:end], expected[:end], atol=1e-5, rtol=1e-4)


def test_kernel_with_no_sequences(interpret):
    q, k, v, _ = _case([2])
    empty = torch.zeros(1, dtype=torch.int32)
    assert dispatch.varlen_attention(q, k, v, empty, 4, 1.0, impl="triton").abs().max() == 0


def test_bad_arguments_are_named():
    q, k, v, cu = _case([3, 2])
    with pytest.raises(ValueError, match="heads must be a bool"):
        dispatch.varlen_attention(q, k, v, cu, 3, 1.0, torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="one shape"):
        dispatch.varlen_attention(q, k[:, :2], v, cu, 3, 1.0)
    with pytest.raises(ValueError, match="contiguous"):
        dispatch.varlen_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), cu, 3, 1.0)
    with pytest.raises(ValueError, match="cu must be"):
        dispatch.varlen_attention(q, k, v, cu.float(), 3, 1.0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernel_on_gpu(cuda, dtype):
    q, k, v, cu = (t.cuda() for t in _case([197, 60, 1, 120], h=6, d=64))
    q, k, v = (t.to(dtype) for t in (q, k, v))
    heads = torch.rand(4, 6, device="cuda") < 0.5
    got = dispatch.varlen_attention(q, k, v, cu, 197, 0.125, heads, impl="triton")
    expected = varlen_attention_ref(q.float(), k.float(), v.float(), cu, 197, 0.125, heads)
    end = int(cu[-1])
    torch.testing.assert_close(got[:end].float(), expected[:end], atol=2e-2, rtol=2e-2)
