"""Every registered model × paradigm: torchvision equivalence with masks on, gradients, bad input."""

import pytest
import torch
from helpers import TORCHVISION_BUILDERS, randomize_batchnorm

import laudnet
import laudnet.train.losses
from laudnet.blocks import PARADIGMS

# The CNNs (by their family in the model table); the ViTs have their own paradigms and tests (test_vit.py).
MODELS = [n for n in laudnet.list_models() if not laudnet.model_info(n).is_vit]


def test_registry_lists_the_four_cnns():
    assert MODELS == ["laud_regnety_400mf", "laud_regnety_800mf", "laud_resnet101", "laud_resnet50"]
    assert laudnet.list_models("laud_resnet*") == ["laud_resnet101", "laud_resnet50"]


@pytest.mark.parametrize("name", MODELS)
def test_masks_on_equals_torchvision(name):
    """With every mask forced to one, each paradigm computes torchvision's network with the same weights."""
    reference = randomize_batchnorm(TORCHVISION_BUILDERS[name](num_classes=10)).eval()
    x = torch.randn(2, 3, 72, 88)  # not a multiple of 32: border patches are partial at every stage
    with torch.no_grad():
        expected = reference(x)
    for paradigm in PARADIGMS:
        model = laudnet.create_model(name, paradigm=paradigm, num_classes=10)
        laudnet.load_torchvision_weights(model, reference.state_dict())
        model.eval()
        with torch.no_grad(), laudnet.mask_override(model, 1):
            out = model(x)
        rel = ((out - expected).norm() / expected.norm()).item()
        assert rel < 1e-5, f"{name}/{paradigm}: relative error {rel}"


@pytest.mark.parametrize("name", MODELS)
def test_layer_skipping_with_zero_masks_makes_blocks_identities(name):
    model = laudnet.create_model(name, paradigm="layer", num_classes=10).eval()
    randomize_batchnorm(model)
    seen = []

    def hook(block, inputs, output):
        seen.append((block, inputs[0], output))

    handles = [b.register_forward_hook(hook) for b in model.dynamic_blocks()]
    with torch.no_grad(), laudnet.mask_override(model, 0):
        model(torch.randn(2, 3, 64, 64))
    for h in handles:
        h.remove()
    assert len(seen) == len(model.dynamic_blocks())
    for block, x, out in seen:
        if block.has_projection:
            torch.testing.assert_close(out, torch.relu(block._shortcut(x)))
        else:
            torch.testing.assert_close(out, x, rtol=0, atol=0)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("paradigm", ["spatial", "channel", "layer"])
def test_every_parameter_gets_a_gradient(name, paradigm):
    model = laudnet.create_model(name, paradigm=paradigm, num_classes=5).train()
    model.set_temperature(1.0)
    x = torch.randn(2, 3, 64, 64)
    logits = model(x)
    loss = laudnet.train.losses.LaudLoss(target=0.5, total_epochs=10)(logits, torch.tensor([0, 3]), model)["loss"]
    loss.backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, f"no gradient for {n}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient for {n}"
    for n, m in model.named_modules():
        if n.endswith("masker"):
            assert any(p.grad.abs().sum() > 0 for p in m.parameters()), f"masker {n} got only zero gradients"


@pytest.mark.parametrize("name", MODELS)
def test_eval_is_deterministic_and_records_info(name):
    model = laudnet.create_model(name, paradigm="spatial", num_classes=10).eval()
    x = torch.randn(3, 3, 64, 96)
    with torch.no_grad():
        a, b = model(x), model(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    infos = laudnet.collect_info(model)
    assert len(infos) == len(model.dynamic_blocks())
    for info in infos:
        assert info.paradigm == "spatial"
        assert info.masks["pixel"].shape[0] == 3
        assert info.flops.shape == (3,)
        assert set(info.density) == {"conv1", "conv2", "conv3"}
        assert info.name


def test_dense_flops_match_published_totals():
    """Per-image MACs at 224² against torchvision's published operation counts (GFLOPs in its weight metadata)."""
    from torchvision.models import (
        RegNet_Y_400MF_Weights,
        RegNet_Y_800MF_Weights,
        ResNet50_Weights,
        ResNet101_Weights,
    )

    published = {
        "laud_resnet50": ResNet50_Weights.IMAGENET1K_V1.meta["_ops"],
        "laud_resnet101": ResNet101_Weights.IMAGENET1K_V1.meta["_ops"],
        "laud_regnety_400mf": RegNet_Y_400MF_Weights.IMAGENET1K_V1.meta["_ops"],
        "laud_regnety_800mf": RegNet_Y_800MF_Weights.IMAGENET1K_V1.meta["_ops"],
    }
    # The papers' rounded totals: 4.1 G, 7.8 G, 0.4 G, 0.8 G.
    papers = {"laud_resnet50": 4.1, "laud_resnet101": 7.8, "laud_regnety_400mf": 0.4, "laud_regnety_800mf": 0.8}
    for name, gmacs in published.items():
        dense = laudnet.model_flops(laudnet.create_model(name, paradigm="static")).dense / 1e9
        assert abs(dense / gmacs - 1) < 0.02, f"{name}: {dense:.3f} G vs published {gmacs} G"
        assert round(dense, 1) == papers[name], f"{name}: {dense:.3f} G does not round to {papers[name]} G"


def test_model_flops_after_forward_and_ratio():
    model = laudnet.create_model("laud_resnet50", paradigm="layer").eval()
    before = laudnet.model_flops(model)
    assert before.dynamic is None and before.ratio is None
    with torch.no_grad(), laudnet.mask_override(model, 0):
        model(torch.randn(2, 3, 224, 224))
    after = laudnet.model_flops(model)
    assert after.dense == before.dense == after.dense_last
    # All blocks skipped: stem, head, projections and maskers remain.
    blocks = model.dynamic_blocks()
    kept = sum(b.flops_terms((1, 1))["shortcut"] == 0 for b in blocks)  # sanity: some blocks have no projection
    assert kept > 0
    assert 0.05 < after.ratio < 0.2
    assert len(after.blocks) == len(blocks)


def test_any_input_resolution_works():
    model = laudnet.create_model("laud_resnet50", paradigm="spatial", granularity="4-4-2-1").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 97, 131))
    assert out.shape == (1, 1000)
    grids = [i.masks["patch"].shape[-2:] for i in model.collect_info()]
    # stage sizes 25×33, 13×17, 7×9, 4×5 → ceil(/S)
    assert grids[0] == (7, 9) and grids[3] == (4, 5) and grids[-1] == (4, 5)


class TestBadInput:
    def test_unknown_model_lists_choices(self):
        with pytest.raises(ValueError, match="unknown model 'resnet50'.*laud_resnet50"):
            laudnet.create_model("resnet50")

    def test_unknown_paradigm_lists_choices(self):
        with pytest.raises(ValueError, match="unknown paradigm 'token'.*spatial, channel, layer"):
            laudnet.create_model("laud_resnet50", paradigm="token")

    @pytest.mark.parametrize("bad", [0, -2, "4-0-2-1", (4, 4, 2)])
    def test_bad_spatial_patch_size(self, bad):
        with pytest.raises(ValueError, match="patch size|4 values|positive"):
            laudnet.create_model("laud_resnet50", paradigm="spatial", granularity=bad)

    def test_channel_group_must_divide_width(self):
        with pytest.raises(ValueError, match=r"stage 1.*G=3 does not divide the block width 64"):
            laudnet.create_model("laud_resnet50", paradigm="channel", granularity=3)
        with pytest.raises(ValueError, match=r"G=16 does not divide the block width 104"):
            laudnet.create_model("laud_regnety_400mf", paradigm="channel", granularity=16)

    def test_layer_takes_no_granularity(self):
        with pytest.raises(ValueError, match="takes no granularity"):
            laudnet.create_model("laud_resnet50", paradigm="layer", granularity=2)

    def test_wrong_number_of_input_channels(self):
        model = laudnet.create_model("laud_regnety_400mf").eval()
        with pytest.raises(ValueError, match=r"expected an input of shape \(B, 3, H, W\), got \(2, 1, 32, 32\)"):
            model(torch.randn(2, 1, 32, 32))

    def test_flops_before_forward(self):
        model = laudnet.create_model("laud_resnet50")
        with pytest.raises(RuntimeError, match="run a forward pass"):
            model.dynamic_flops()
