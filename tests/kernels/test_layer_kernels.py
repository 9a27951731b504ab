"""Layer-skipping write-back kernel against its reference (interpreter on CPU; compiled on CUDA as `gpu`)."""

import pytest
import torch
from spatial_testing import cuda_fixture, err_ratio, interpret_fixture  # noqa: F401 (fixtures)

from laudnet import kernels as K
from laudnet.kernels import layer_ref


def test_rows_add_relu_ref_matches_loop():
    gen = torch.Generator().manual_seed(0)
    out = torch.randn((5, 3, 2, 4), generator=gen)
    y = torch.randn((2, 3, 2, 4), generator=gen)
    idx = torch.tensor([3, 1])
    expect = out.clone()
    for j, i in enumerate(idx.tolist()):
        expect[i] = (expect[i] + y[j]).relu()
    layer_ref.rows_add_relu_ref(out, y, idx)
    torch.testing.assert_close(out, expect)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("kind", ["some", "all", "none", "one"])
def test_rows_add_relu_interpret(interpret, kind, dtype):
    gen = torch.Generator().manual_seed(len(kind))
    n = 5
    # rows of 7*5*3 = 105 elements: not a multiple of anything convenient
    out = torch.randn((n, 7, 5, 3), generator=gen)
    idx = {"some": [4, 0, 2], "all": [1, 0, 2, 4, 3], "none": [], "one": [3]}[kind]
    idx = torch.tensor(idx, dtype=dtype)
    y = torch.randn((len(idx), 7, 5, 3), generator=gen)
    ref = layer_ref.rows_add_relu_ref(out.clone(), y, idx)
    got = out.clone()
    assert K.rows_add_relu_(got, y, idx, impl="triton") is got
    assert torch.equal(got == got, ref == ref)
    assert err_ratio(got, ref) < 1e-6
    untouched = [i for i in range(n) if i not in idx.tolist()]
    assert torch.equal(got[untouched], out[untouched])


def test_rows_add_relu_no_relu_and_errors(interpret):
    out = torch.randn(3, 4)
    y = torch.randn(1, 4)
    got = K.rows_add_relu_(out.clone(), y, torch.tensor([1]), relu=False, impl="triton")
    torch.testing.assert_close(got[1], out[1] + y[0])
    with pytest.raises(ValueError, match="y must be"):
        K.rows_add_relu_(out, torch.randn(2, 4), torch.tensor([1]), impl="triton")
    with pytest.raises(ValueError, match="idx"):
        K.rows_add_relu_(out, y, torch.tensor([1.0]), impl="triton")
    with pytest.raises(ValueError, match="contiguous"):
        K.rows_add_relu_(out.t(), torch.randn(1, 3), torch.tensor([1]), impl="triton")


@pytest.mark.gpu
def test_rows_add_relu_cuda_bf16(cuda):
    torch.manual_seed(0)
    out = torch.randn((16, 14, 14, 1024), device=cuda, dtype=torch.bfloat16)
    idx = torch.randperm(16, device=cuda)[:7]
    y = torch.randn((7, 14, 14, 1024), device=cuda, dtype=torch.bfloat16)
    ref = layer_ref.rows_add_relu_ref(out.clone(), y, idx)
    got = K.rows_add_relu_(out.clone(), y, idx)
    torch.testing.assert_close(got, ref)
