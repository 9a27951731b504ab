"""torchvision detectors on LAUD backbones: torchvision's own detectors with every mask on, any image size, masks per
image, a training step, and one-line errors for unknown names."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from detection_sizes import small_kwargs

import laudnet
from laudnet.detection import backbone_masks, collate_detection, create_detector, detection_step, list_detectors

TORCHVISION = {
    "fasterrcnn": torchvision.models.detection.fasterrcnn_resnet50_fpn,
    "retinanet": torchvision.models.detection.retinanet_resnet50_fpn,
    "maskrcnn": torchvision.models.detection.maskrcnn_resnet50_fpn,
}


@pytest.mark.parametrize("kind", list_detectors())
def test_all_masks_on_is_torchvision_detector(kind):
    ours = create_detector(kind, "laud_resnet50", "spatial", num_classes=5, **small_kwargs(kind)).eval()
    theirs = TORCHVISION[kind](weights=None, weights_backbone=None, num_classes=5, **small_kwargs(kind)).eval()
    # One state-dict layout, maskers apart: torchvision's detection checkpoints and ours share their keys.
    theirs.load_state_dict({k: v for k, v in ours.state_dict().items() if "masker" not in k})
    with torch.no_grad():  # a detection head with random weights detects little: lower its score threshold
        for m in (ours, theirs):
            if kind == "retinanet":
                m.score_thresh = 0.0
            else:
                m.roi_heads.score_thresh = 0.0
    images = [torch.rand(3, 64, 96), torch.rand(3, 80, 64)]
    with torch.no_grad(), laudnet.mask_override(ours, 1):
        a = ours(images)
        b = theirs(images)
    assert len(a[0]["boxes"]) > 0
    for x, y in zip(a, b, strict=True):
        assert set(x) == set(y)
        for key in x:
            torch.testing.assert_close(x[key], y[key], rtol=0, atol=0)


def test_masks_per_image_of_a_batch_of_two_sizes():
    model = create_detector("fasterrcnn", "laud_regnety_400mf", "spatial", granularity="4-4-2-1", num_classes=5,
                            **small_kwargs("fasterrcnn")).eval()
    with torch.no_grad():
        out = model([torch.rand(3, 64, 96), torch.rand(3, 90, 60)])  # resized to 64×96 and 96×64, padded to 96×96
    assert len(out) == 2 and model.transform.last_image_sizes == [(64, 96), (96, 64)]
    masks = backbone_masks(model)
    stage2 = "trunk_output.block2.block2-0"  # 1/8: 8×12 and 12×8 pixels, patches of 4
    assert masks[0][stage2]["pixel"].shape == (1, 8, 12) and masks[0][stage2]["patch"].shape == (1, 2, 3)
    assert masks[1][stage2]["pixel"].shape == (1, 12, 8) and masks[1][stage2]["patch"].shape == (1, 3, 2)
    assert len(masks[0]) == len(laudnet.collect_info(model.backbone)) == 16


@pytest.mark.parametrize("kind", ["fasterrcnn", "maskrcnn"])
def test_one_training_step(kind, canvases):
    model = create_detector(kind, "laud_resnet50", "spatial", target=0.5, num_classes=canvases.num_classes,
                            **small_kwargs(kind)).train()
    images, targets = collate_detection([canvases[0], canvases[1]])
    assert all(len(t["boxes"]) for t in targets)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    masker = model.backbone.body.layer3[0].masker.conv.weight
    frozen = model.backbone.body.layer1[0].masker.conv.weight
    before, frozen_before = masker.detach().clone(), frozen.detach().clone()
    loss, logs = detection_step(model, images, targets)
    assert math.isfinite(logs["loss"]) and logs["loss"] == pytest.approx(loss.detach().item())
    assert logs["loss_flops"] == pytest.approx((logs["flops_ratio"] - 0.5) ** 2, rel=1e-4)
    if kind == "maskrcnn":
        assert "loss_mask" in logs
    loss.backward()
    maskers = [(n, p) for n, p in model.named_parameters() if "masker" in n and p.requires_grad]
    assert maskers and all(p.grad is not None for _, p in maskers), "a trainable masker got no gradient"
    assert sum(float(p.grad.abs().sum()) for _, p in maskers) > 0
    assert frozen.grad is None
    optimizer.step()
    assert not torch.equal(masker, before) and torch.equal(frozen, frozen_before)


def test_unknown_names_and_bad_arguments():
    with pytest.raises(ValueError, match=r"^unknown detector 'yolo'; choose from: fasterrcnn, retinanet, maskrcnn$"):
        create_detector("yolo")
    with pytest.raises(ValueError, match=r"^unknown detection backbone 'laud_deit_small'; choose from: laud_resnet50"):
        create_detector("fasterrcnn", backbone="laud_deit_small")
    with pytest.raises(ValueError, match=r"unknown paradigm 'token'"):
        create_detector("fasterrcnn", paradigm="token")
    with pytest.raises(ValueError, match=r"target FLOPs ratio must be in \(0, 1\], got 1.5"):
        create_detector("fasterrcnn", target=1.5)
