"""Gates, maskers and mask expansion."""

import pytest
import torch

from laudnet.masks import (
    ChannelMasker,
    SpatialMasker,
    conv3x3_input_mask,
    expand_channel_groups,
    expand_patches,
    gumbel_gate,
    mask_grid_size,
    pool_patches,
)


def test_eval_gate_is_argmax_and_training_gate_is_straight_through():
    logits = torch.tensor([[[2.0, -1.0, 0.0], [1.0, 3.0, 0.0]]])  # (B=1, 2, 3)
    assert gumbel_gate(logits, 1.0, training=False).tolist() == [[1.0, 0.0, 1.0]]
    leaf = logits.clone().requires_grad_(True)
    sample = gumbel_gate(leaf, 0.5, training=True)
    assert set(sample.unique().tolist()) <= {0.0, 1.0}
    sample.sum().backward()
    assert leaf.grad.abs().sum() > 0


def test_gate_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"\(B, 2, ...\)"):
        gumbel_gate(torch.zeros(2, 3), 1.0, False)


def test_training_gate_frequency_follows_logits():
    torch.manual_seed(0)
    logits = torch.zeros(4000, 2)
    logits[:, 0] = 1.0  # P(execute) = sigmoid(1) ≈ 0.731 for the hard Gumbel sample, whatever the temperature
    rate = gumbel_gate(logits, 5.0, training=True).mean().item()
    assert abs(rate - 0.731) < 0.03


def test_grid_size_and_patch_expansion_with_partial_border():
    assert mask_grid_size(7, 9, 2) == (4, 5)
    assert mask_grid_size(7, 9, None) == (1, 1)
    coarse = torch.arange(20.0).view(1, 1, 4, 5)
    pixel = expand_patches(coarse, 2, (7, 9))
    assert pixel.shape == (1, 1, 7, 9)
    assert pixel[0, 0, 6, 8] == coarse[0, 0, 3, 4]
    assert pixel[0, 0, 1, 1] == coarse[0, 0, 0, 0] and pixel[0, 0, 2, 1] == coarse[0, 0, 1, 0]


def test_spatial_masker_pools_exact_patch_regions():
    x = torch.arange(49.0).view(1, 1, 7, 7)
    pooled = pool_patches(x, stride=1, patch=3, out_hw=(7, 7))
    assert pooled.shape == (1, 1, 3, 3)
    assert pooled[0, 0, 0, 0] == x[0, 0, :3, :3].mean()
    assert pooled[0, 0, 2, 2] == x[0, 0, 6, 6]  # the 1×1 corner patch is averaged over its only pixel
    # Stride 2: output patch S covers 2S input pixels.
    pooled = pool_patches(torch.ones(1, 1, 9, 9), stride=2, patch=2, out_hw=(5, 5))
    assert pooled.shape == (1, 1, 3, 3) and torch.all(pooled == 1)


def test_masker_initial_decisions_execute():
    x = torch.randn(8, 16, 8, 8)
    spatial = SpatialMasker(16).eval()
    assert spatial(x, 1, 2, (8, 8)).mean() > 0.9
    channel = ChannelMasker(16, 32).eval()
    assert channel.hidden == 16 and channel(x).shape == (8, 32)
    assert channel(x).mean() > 0.9
    # Every skip logit is initialised, not only all but the first (the official off-by-one).
    assert torch.all(channel.fc2.bias[32:] == -2.0) and torch.all(spatial.conv.bias[1:] == 0)


def test_conv3x3_input_mask_stride1_and_stride2():
    out = torch.zeros(1, 1, 4, 4)
    out[0, 0, 3, 3] = 1
    m1 = conv3x3_input_mask(out, 1, (4, 4))
    assert m1[0, 0].nonzero().tolist() == [[2, 2], [2, 3], [3, 2], [3, 3]]
    m2 = conv3x3_input_mask(out, 2, (7, 7))  # output (3, 3) reads input rows/cols 5..7, 7 is beyond the map
    assert m2[0, 0].nonzero().tolist() == [[5, 5], [5, 6], [6, 5], [6, 6]]


def test_channel_group_expansion():
    m = expand_channel_groups(torch.tensor([[1.0, 0.0]]), 3)
    assert m.view(-1).tolist() == [1, 1, 1, 0, 0, 0] and m.shape == (1, 6, 1, 1)


def test_gate_noise_scale():
    torch.manual_seed(0)
    logits = torch.zeros(4000, 2)
    logits[:, 0] = 1.0
    # Half the noise: P(execute) = P(g1 - g2 > -2), a logistic variable of scale 1, = sigmoid(2) ≈ 0.881.
    assert abs(gumbel_gate(logits, 1.0, training=True, noise=0.5).mean().item() - 0.881) < 0.03
    # No noise: exactly the eval decision, with the soft sample's gradient.
    leaf = torch.tensor([[[2.0, -1.0, 0.0], [1.0, 3.0, 0.0]]], requires_grad=True)
    hard = gumbel_gate(leaf, 0.5, training=True, noise=0.0)
    assert hard.tolist() == gumbel_gate(leaf.detach(), 0.5, training=False).tolist()
    hard[0, 2].backward()
    soft = torch.sigmoid(torch.tensor(0.0))  # logits equal: soft = 0.5, d soft / d logit_exec = 0.5 * 0.5 / T
    assert leaf.grad[0, 0, 2].item() == pytest.approx(float(soft * (1 - soft)) / 0.5)
    assert leaf.grad[0, 1, 2].item() == pytest.approx(-float(soft * (1 - soft)) / 0.5)


def _trained_norm(masker, x, *args):
    """Run `masker` in training mode on a few shifted batches so its input normalisation holds real statistics."""
    masker.train()
    for k in range(5):
        masker(x * (1 + k) + k, *args)
    return masker.eval()


def test_masker_input_normalisation_folds_into_the_decision_weights():
    torch.manual_seed(0)
    x = torch.rand(6, 8, 9, 7) * 3  # non-negative, like a post-ReLU block input
    masker = _trained_norm(SpatialMasker(8), x, 1, 2, (9, 7))
    with torch.no_grad():
        masker.conv.bias[0] = 0.3
        assert masker.norm.running_mean.abs().sum() > 1  # statistics moved away from the identity
        expect = masker(x, 1, 2, (9, 7))
        w, b = masker.decision_weights()
        pooled = pool_patches(x, 1, 2, (9, 7))
        got = (torch.einsum("bchw,c->bhw", pooled, w) + b >= 0).float()
    assert torch.equal(got, expect[:, 0])
    assert 0 < expect.mean() < 1


def test_channel_masker_normalisation_folds_into_fc1():
    torch.manual_seed(0)
    x = torch.rand(6, 16, 5, 5) * 2
    masker = _trained_norm(ChannelMasker(16, n_groups=4), x)
    with torch.no_grad():
        hidden = masker.fc1(masker.norm(x.mean(dim=(2, 3))))
        folded = masker.folded_fc1()(x.mean(dim=(2, 3)))
    torch.testing.assert_close(folded, hidden, rtol=1e-5, atol=1e-5)


def test_paper_masker_has_no_normalisation_and_checkpoints_keep_theirs():
    plain = SpatialMasker(8, norm=False)
    assert plain.norm is None and not any("norm" in k for k in plain.state_dict())
    normed = SpatialMasker(8)
    normed.norm.running_mean.fill_(2.0)
    # A checkpoint without the normalisation (the paper's masker, or an older laudnet) loads as such ...
    target = SpatialMasker(8)
    target.load_state_dict(plain.state_dict())
    assert target.norm is None
    # ... and one with it gets it, statistics included.
    plain.load_state_dict(normed.state_dict())
    assert plain.norm is not None and torch.equal(plain.norm.running_mean, torch.full((8,), 2.0))
    channel = ChannelMasker(16, n_groups=4, norm=False)
    channel.load_state_dict(ChannelMasker(16, n_groups=4).state_dict())
    assert isinstance(channel.norm, torch.nn.BatchNorm1d)


def test_normalised_maskers_train_on_one_image():
    # A layer masker (1×1 grid) and a channel masker see one value per channel for a batch of one image.
    layer, channel = SpatialMasker(8).train(), ChannelMasker(16, n_groups=4).train()
    x = torch.rand(1, 8, 5, 5)
    assert layer(x, 1, None, (5, 5)).shape == (1, 1, 1, 1)
    assert channel(torch.rand(1, 16, 3, 3)).shape == (1, 4)
    assert torch.equal(layer.norm.running_mean, torch.zeros(8))  # running statistics left as they were
