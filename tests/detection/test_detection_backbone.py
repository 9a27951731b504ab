"""LAUD backbones with an FPN: exactly torchvision's backbone with every mask on, any image size, frozen parts, masks
per image, FLOPs, and loading classification weights."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from helpers import randomize_batchnorm
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import FrozenBatchNorm2d

import laudnet
from laudnet.detection.backbone import BACKBONES, LaudBackboneBody, image_masks, laud_fpn_backbone
from laudnet.masks import pool_patches
from laudnet.train.checkpoint import CheckpointError, save_checkpoint


@pytest.fixture(scope="module")
def r50_state():
    return randomize_batchnorm(torchvision.models.resnet50(weights=None)).state_dict()


@pytest.fixture(scope="module")
def r50_file(tmp_path_factory, r50_state):
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    torch.save(r50_state, path)
    return path


@pytest.mark.parametrize("paradigm", ["spatial", "channel", "layer"])
def test_all_masks_on_is_torchvision_resnet_fpn(paradigm, r50_state):
    bb = laud_fpn_backbone("laud_resnet50", paradigm=paradigm, weights=r50_state).eval()
    ref = _resnet_fpn_extractor(torchvision.models.resnet50(norm_layer=FrozenBatchNorm2d), 3).eval()
    # Same state-dict layout as torchvision's BackboneWithFPN, maskers apart: a strict load.
    ref.load_state_dict({k: v for k, v in bb.state_dict().items() if "masker" not in k})
    x = torch.randn(2, 3, 70, 100)  # not square, not a multiple of 32
    with torch.no_grad(), laudnet.mask_override(bb, 1):
        ours = bb(x)
        theirs = ref(x)
    assert list(ours) == list(theirs) == ["0", "1", "2", "3", "pool"]
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], rtol=0, atol=0)


def test_all_masks_on_is_torchvision_regnet():
    tv = randomize_batchnorm(torchvision.models.regnet_y_400mf()).eval()
    bb = laud_fpn_backbone("laud_regnety_400mf", paradigm="spatial", weights=tv.state_dict()).eval()
    x = torch.randn(1, 3, 50, 82)
    with torch.no_grad(), laudnet.mask_override(bb, 1):
        ours = bb.body(x)
        h, theirs = tv.stem(x), []
        for stage in tv.trunk_output:
            h = stage(h)
            theirs.append(h)
    assert [tuple(v.shape) for v in ours.values()] == [tuple(t.shape) for t in theirs]
    for a, b in zip(ours.values(), theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)  # FrozenBatchNorm2d vs batch_norm: rounding only


@pytest.mark.parametrize("name", ["laud_resnet50", "laud_regnety_400mf"])
@pytest.mark.parametrize("paradigm,granularity", [("spatial", "4-4-2-1"), ("spatial", 3), ("channel", None),
                                                  ("layer", None)])
def test_any_image_size(name, paradigm, granularity):
    bb = laud_fpn_backbone(name, paradigm=paradigm, granularity=granularity).eval()
    for hw in [(45, 83), (83, 45)]:
        with torch.no_grad():
            out = bb(torch.randn(1, 3, *hw))
        sizes = [hw]
        for _ in range(6):  # halvings: stages 1-4 at 1/4 .. 1/32, then the pool level
            sizes.append((math.ceil(sizes[-1][0] / 2), math.ceil(sizes[-1][1] / 2)))
        assert [tuple(v.shape[-2:]) for v in out.values()] == sizes[2:]
        if paradigm == "spatial":
            for block, info in zip(bb.body.dynamic_blocks(), bb.collect_info(), strict=True):
                ho, wo = info.masks["pixel"].shape[-2:]
                s = block.granularity
                assert info.masks["patch"].shape[-2:] == (math.ceil(ho / s), math.ceil(wo / s))


def test_masker_pools_exact_patches_of_non_square_maps():
    # Border cells of a map whose sides S does not divide pool over the partial patch only; stride 2 included.
    x = torch.rand(1, 2, 13, 9)  # output 7×5 at stride 2, patch 2: a 4×3 grid of 4×4 input windows
    pooled = pool_patches(x, 2, 2, (7, 5))
    ref = torch.stack([torch.stack([x[:, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4].mean((2, 3)) for j in range(3)], -1)
                       for i in range(4)], -2)
    torch.testing.assert_close(pooled, ref)
    x = torch.rand(1, 2, 5, 25)  # patch larger than one side
    torch.testing.assert_close(pool_patches(x, 1, 8, (5, 25))[:, :, 0, 3], x[:, :, :, 24:].mean((2, 3)))


def test_frozen_parts():
    bb = laud_fpn_backbone("laud_resnet50", paradigm="spatial")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) and m.affine for m in bb.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in bb.modules()) == 53
    grads = {n: p.requires_grad for n, p in bb.body.named_parameters()}
    assert not any(v for n, v in grads.items() if n.startswith(("conv1", "layer1")))  # stem + stage 1, maskers too
    assert any(n.startswith("layer1") and "masker" in n for n in grads)
    assert all(v for n, v in grads.items() if n.startswith(("layer2", "layer3", "layer4")))
    bb.train()
    assert not bb.body.layer1.training and bb.body.layer2.training
    assert not bb.body.layer2[0].masker.norm.training  # frozen masker normalisation
    assert bb.body.layer2[0].masker.temperature == 0.1
    every = laud_fpn_backbone("laud_regnety_400mf", paradigm="channel", trainable_layers=5, frozen_bn=False,
                              freeze_masker_norm=False).train()
    assert all(p.requires_grad for p in every.parameters())
    assert all(m.training for m in every.modules())


def test_image_masks_crop_each_image_to_its_extent():
    bb = laud_fpn_backbone("laud_resnet50", paradigm="spatial", granularity="4-4-2-1").eval()
    with torch.no_grad():
        bb(torch.randn(2, 3, 64, 96))  # a padded batch: image 0 is 64×96, image 1 is 40×70
    masks = image_masks(bb.body, [(64, 96), (40, 70)])
    full, small = masks[0]["layer2.0"], masks[1]["layer2.0"]  # stage 2: 8×12 output, patch 4
    assert {k: tuple(v.shape) for k, v in full.items()} == {"patch": (1, 2, 3), "pixel": (1, 8, 12),
                                                            "conv1": (1, 16, 24)}
    assert {k: tuple(v.shape) for k, v in small.items()} == {"patch": (1, 2, 3), "pixel": (1, 5, 9),
                                                             "conv1": (1, 10, 18)}
    assert masks[1]["layer4.2"]["patch"].shape == (1, 2, 3)  # stage 4: 2×3 map, patch 1 -> 40/32, 70/32 -> 2×3
    batch = {i.name: i for i in bb.collect_info()}
    torch.testing.assert_close(small["pixel"], batch["layer2.0"].masks["pixel"][1, :, :5, :9])
    with pytest.raises(ValueError, match="3 image sizes for a batch of 2"):
        image_masks(bb.body, [(64, 96)] * 3)


def test_backbone_flops_are_the_classifier_minus_its_head():
    model = laudnet.create_model("laud_resnet50", paradigm="spatial")
    bb = laud_fpn_backbone("laud_resnet50", paradigm="spatial").eval()
    head = model._head_flops(2048, (2, 3))
    assert bb.body.dense_flops((64, 96)) == pytest.approx(model.dense_flops((64, 96)) - head)
    with torch.no_grad(), laudnet.mask_override(bb, 1):
        bb(torch.randn(2, 3, 64, 96))
    per_image, dense = bb.body.dynamic_flops()
    assert dense == pytest.approx(bb.body.dense_flops((64, 96)))
    maskers = sum(b.masker_flops(tuple(i.masks["conv1"].shape[-2:]))
                  for b, i in zip(bb.body.dynamic_blocks(), bb.collect_info(), strict=True))
    torch.testing.assert_close(per_image, torch.full((2,), dense + maskers))  # every block on, plus the maskers
    assert laudnet.model_flops(bb.body, (3, 64, 96)).ratio == pytest.approx((dense + maskers) / dense)


def test_load_torchvision_weights_file(r50_file, r50_state):
    bb = laud_fpn_backbone("laud_resnet50", paradigm="spatial", weights=r50_file)
    torch.testing.assert_close(bb.body.layer3[2].conv2.weight, r50_state["layer3.2.conv2.weight"])
    torch.testing.assert_close(bb.body.layer1[0].bn1.running_var, r50_state["layer1.0.bn1.running_var"])
    with pytest.raises(ValueError, match=r"^torchvision weights .*resnet50.pth do not fit the detection backbone "
                                         r"laud_regnety_400mf: .*unexpected keys"):
        laud_fpn_backbone("laud_regnety_400mf", weights=r50_file)


def test_load_laudnet_checkpoints(tmp_path, r50_state):
    static = laudnet.create_model("laud_resnet50", paradigm="static", num_classes=10)
    laudnet.load_torchvision_weights(static, r50_state, exclude_head=True)
    path = save_checkpoint(tmp_path / "static.pt", {"model": static.state_dict()}, model_name="laud_resnet50")
    bb = laud_fpn_backbone("laud_resnet50", paradigm="channel", weights=path)  # 10-class head: dropped
    torch.testing.assert_close(bb.body.layer2[1].conv1.weight, r50_state["layer2.1.conv1.weight"])

    dynamic = laudnet.create_model("laud_resnet50", paradigm="spatial", num_classes=10)
    with torch.no_grad():
        dynamic.layer3[0].masker.conv.weight.fill_(0.25)
    path = save_checkpoint(tmp_path / "spatial.pt", {"model": dynamic.state_dict()}, model_name="laud_resnet50")
    bb = laud_fpn_backbone("laud_resnet50", paradigm="spatial", weights=path)
    assert torch.all(bb.body.layer3[0].masker.conv.weight == 0.25)  # the trained maskers come along

    other = laudnet.create_model("laud_regnety_400mf", paradigm="static", num_classes=10)
    path = save_checkpoint(tmp_path / "regnet.pt", {"model": other.state_dict()}, model_name="laud_regnety_400mf")
    with pytest.raises(CheckpointError, match=r"is of model 'laud_regnety_400mf', not the requested 'laud_resnet50'"):
        laud_fpn_backbone("laud_resnet50", weights=path)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"unknown detection backbone 'resnet50'; choose from: laud_resnet50, "):
        laud_fpn_backbone("resnet50")
    assert "laud_resnet101" in BACKBONES
    model = laudnet.create_model("laud_resnet50")
    with pytest.raises(ValueError, match="returned_layers must be stages among 1, 2, 3, 4"):
        LaudBackboneBody(model, returned_layers=[0, 2])
    with pytest.raises(ValueError, match=r"trainable_layers must be in 0..5"):
        LaudBackboneBody(model, trainable_layers=6)
