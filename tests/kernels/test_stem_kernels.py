"""The stem convolution kernel (`laudnet.kernels.stem`) against its reference: interpreted on CPU, compiled on a GPU."""

import pytest
import torch
import torch.nn.functional as F
from spatial_testing import cuda_fixture, interpret_fixture  # noqa: F401 (fixtures)

from laudnet.kernels import dispatch
from laudnet.kernels.stem_ref import stem_conv_ref
from laudnet.kernels.weights import pack_stem_weight, unpack_stem_weight


def _err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()


@pytest.mark.parametrize(("kernel", "stride", "padding", "cout"), [((7, 7), 2, 3, 16), ((3, 3), 2, 1, 24),
                                                                  ((7, 7), 2, 3, 40), ((3, 3), 1, 1, 16)])
@pytest.mark.parametrize(("h", "w"), [(13, 11), (8, 9)])
def test_stem_conv_matches_reference(interpret, kernel, stride, padding, cout, h, w):
    """Odd map sizes, border windows on every side, channel counts that are not powers of two, bias and ReLU."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, h, w, 3, generator=g)
    weight = torch.randn(cout, 3, *kernel, generator=g)
    bias = torch.randn(cout, generator=g)
    ref = stem_conv_ref(x, weight, bias, kernel, stride, padding)
    expected = F.relu(F.conv2d(x.permute(0, 3, 1, 2), weight, bias, stride=stride, padding=padding))
    assert _err(ref, expected.permute(0, 2, 3, 1)) < 1e-6  # the reference is the convolution
    got = dispatch.stem_conv(x, weight, bias, kernel, stride, padding, impl="triton")
    assert got.shape == ref.shape and _err(got, ref) < 1e-5
    packed = dispatch.stem_conv(x, pack_stem_weight(weight), None, kernel, stride, padding, relu=False,
                                impl="triton")
    assert _err(packed, stem_conv_ref(x, weight, None, kernel, stride, padding, relu=False)) < 1e-5


def test_pack_roundtrip_and_padding():
    weight = torch.randn(64, 3, 7, 7)
    packed = pack_stem_weight(weight)
    assert packed.shape == (7 * 32, 64)  # 21 (column, channel) rows per kernel row, padded to 32
    assert torch.equal(unpack_stem_weight(packed, 3, (7, 7)), weight)
    assert packed.view(7, 32, 64)[:, 21:].abs().sum() == 0


def test_stem_conv_rejects_bad_input():
    x = torch.randn(1, 9, 9, 3)
    with pytest.raises(ValueError, match="NHWC"):
        stem_conv_ref(x[0], torch.randn(8, 3, 3, 3), None, (3, 3), 2, 1)
    with pytest.raises(ValueError, match="does not match C = 3"):
        stem_conv_ref(x, torch.randn(8, 4, 3, 3), None, (3, 3), 2, 1)
    with pytest.raises(ValueError, match="packed stem weight must be"):
        stem_conv_ref(x, torch.randn(20, 8), None, (3, 3), 2, 1)
    with pytest.raises(ValueError, match="bias must be"):
        stem_conv_ref(x, torch.randn(8, 3, 3, 3), torch.randn(7), (3, 3), 2, 1)
    with pytest.raises(ValueError, match="smaller than the 7x7 kernel"):
        stem_conv_ref(torch.randn(1, 3, 3, 3), torch.randn(8, 3, 7, 7), None, (7, 7), 2, 0)


def test_stem_conv_on_gpu(cuda):
    """ResNet's stem at a realistic size in bf16, compiled."""
    x = torch.randn(4, 224, 224, 3, device="cuda").to(torch.bfloat16)
    weight = torch.randn(64, 3, 7, 7, device="cuda") * 0.1
    bias = torch.randn(64, device="cuda")
    got = dispatch.stem_conv(x, weight.to(torch.bfloat16), bias.to(torch.bfloat16), (7, 7), 2, 3, impl="triton")
    ref = stem_conv_ref(x.float(), weight, bias, (7, 7), 2, 3)
    assert _err(got.float(), ref) < 2e-2
