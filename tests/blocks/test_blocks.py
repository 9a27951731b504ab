"""Dynamic blocks: hand-made masks give hand-computed FLOPs, masks mean exact zeros, any map size works."""

import pytest
import torch
from torchvision.models.regnet import ResBottleneckBlock
from torchvision.models.resnet import Bottleneck

from laudnet.blocks import DynamicBottleneck, DynamicRegNetBlock


def _bottleneck(inplanes, planes, stride=1, paradigm="static", granularity=None):
    downsample = None
    if stride != 1 or inplanes != planes * 4:
        downsample = torch.nn.Sequential(
            torch.nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), torch.nn.BatchNorm2d(planes * 4)
        )
    return DynamicBottleneck(Bottleneck(inplanes, planes, stride, downsample), paradigm, granularity).eval()


def _record_input(module, store, key):
    """Store a module's input on forward (the hook returns None, so the output is untouched)."""
    module.register_forward_hook(lambda m, i, o: store.__setitem__(key, i[0]))


def _force(masker, mask):
    """Make a masker return a fixed decision tensor."""
    masker.forward = lambda *args, **kwargs: mask


def test_spatial_flops_of_a_hand_made_mask():
    block = _bottleneck(256, 64, paradigm="spatial", granularity=2)
    coarse = torch.zeros(1, 1, 4, 4)
    coarse[0, 0, 0, 0] = 1  # one 2×2 patch active in the top-left corner of an 8×8 map
    _force(block.masker, coarse)
    block(torch.randn(1, 256, 8, 8))
    info = block.info
    # conv1 runs on the 3×3 input region the active 2×2 patch needs (dilated by one pixel, clipped at the border).
    conv1 = 256 * 64 * 9
    conv2 = 9 * 64 * 64 * 4
    conv3 = 64 * 256 * 4
    masker = 256 * 64 + 256 * 2 * 16  # pool every input element, 1×1 conv on the 4×4 grid
    assert info.flops.item() == conv1 + conv2 + conv3 + masker
    assert info.dense_flops == (256 * 64 + 9 * 64 * 64 + 64 * 256) * 64
    assert info.density["conv1"].item() == pytest.approx(9 / 64)
    assert info.density["conv3"].item() == pytest.approx(4 / 64)


def test_spatial_stride2_conv1_region_and_projection():
    block = _bottleneck(64, 32, stride=2, paradigm="spatial", granularity=2)
    coarse = torch.zeros(1, 1, 2, 2)
    coarse[0, 0, 0, 0] = 1  # output rows/cols 0-1 of a 4×4 output
    _force(block.masker, coarse)
    block(torch.randn(1, 64, 8, 8))
    # Output pixels 0..1 read input rows 2i-1 .. 2i+1 → rows 0..3 (row -1 is padding): a 4×4 input region.
    assert block.info.masks["conv1"].sum().item() == 16
    conv1 = 64 * 32 * 16
    conv2 = 9 * 32 * 32 * 4
    conv3 = 32 * 128 * 4
    shortcut = 64 * 128 * 16  # the projection is always dense
    masker = 64 * 64 + 64 * 2 * 4
    assert block.info.flops.item() == conv1 + conv2 + conv3 + shortcut + masker


def test_channel_flops_per_sample():
    block = _bottleneck(256, 64, paradigm="channel", granularity=16)
    groups = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    _force(block.channel_masker, groups)
    block(torch.randn(2, 256, 5, 5))
    hw = 25
    masker = 256 * 25 + 256 * 16 + 16 * 8  # hidden width max(4 // 16, 16) = 16
    half = 256 * 64 * hw * 0.5 + 9 * 64 * 64 * hw * 0.25 + 64 * 256 * hw * 0.5 + masker
    full = 256 * 64 * hw + 9 * 64 * 64 * hw + 64 * 256 * hw + masker
    torch.testing.assert_close(block.info.flops, torch.tensor([half, full]), rtol=1e-6, atol=0)


def test_skipped_channels_are_exact_zeros_after_bn_and_relu():
    block = _bottleneck(64, 32, paradigm="channel", granularity=8)
    for m in block.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.bias.data.fill_(1.0)  # a BN shift would leak into skipped channels if masks were applied before BN
    _force(block.channel_masker, torch.tensor([[1.0, 0.0, 0.0, 1.0]]))
    seen = {}
    _record_input(block.conv2, seen, "conv2_in")
    _record_input(block.conv3, seen, "conv3_in")
    block(torch.randn(1, 64, 6, 6))
    for key in ("conv2_in", "conv3_in"):
        assert seen[key][:, 8:24].abs().max() == 0
        assert seen[key][:, :8].abs().max() > 0


def test_spatial_inactive_positions_take_the_residual():
    block = _bottleneck(64, 16, paradigm="spatial", granularity=3)
    coarse = torch.tensor([[[[1.0, 0.0, 0.0]]]]).expand(1, 1, 3, 3).clone()  # 7×7 map: 3×3 grid, partial border
    _force(block.masker, coarse)
    x = torch.rand(1, 64, 7, 7)
    out = block(x)
    assert block.info.masks["pixel"].shape == (1, 1, 7, 7)
    torch.testing.assert_close(out[..., 3:], x[..., 3:], rtol=0, atol=0)
    assert not torch.equal(out[..., :3], x[..., :3])


def test_regnet_spatial_se_pools_active_pixels_only():
    tv = ResBottleneckBlock(32, 32, 1, torch.nn.BatchNorm2d, torch.nn.ReLU, group_width=8, bottleneck_multiplier=1.0,
                            se_ratio=0.25)
    block = DynamicRegNetBlock(tv, "spatial", 2).eval()
    coarse = torch.zeros(1, 1, 3, 3)
    coarse[0, 0, 1, 1] = 1
    _force(block.masker, coarse)
    seen = {}
    _record_input(block.f.se, seen, "se_in")
    block(torch.randn(1, 32, 6, 6))
    se_in = seen["se_in"]
    assert se_in[..., :2, :].abs().max() == 0 and se_in[..., 4:, :].abs().max() == 0
    assert se_in[..., 2:4, 2:4].abs().max() > 0


def test_block_rejects_wrong_channels():
    block = _bottleneck(64, 16, paradigm="layer")
    with pytest.raises(ValueError, match=r"expects input \(B, 64, H, W\), got \(1, 32, 8, 8\)"):
        block(torch.randn(1, 32, 8, 8))
