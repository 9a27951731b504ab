"""The detection objective: the detector's losses plus λ·(F_dyn / F_dense − t)² of the backbone, with FLOPs counted
at the size of the batch the backbone ran on."""

from __future__ import annotations

import pytest
from detection_sizes import small_kwargs

from laudnet.detection import backbone_flops_loss, collate_detection, create_detector, detection_step


@pytest.fixture(scope="module")
def batch(canvases):
    return collate_detection([canvases[0], canvases[1]])


def _detector(paradigm="layer", **kw):
    kwargs = {**small_kwargs("fasterrcnn"), **kw}
    return create_detector("fasterrcnn", "laud_regnety_400mf", paradigm, num_classes=11, **kwargs).train()


def test_flops_term_is_the_backbone_ratio_to_target(batch):
    model = _detector(target=0.3)
    loss, logs = detection_step(model, *batch, lambda_flops=2.0)
    body = model.backbone.body
    per_image, dense = body.dynamic_flops()
    per_image = per_image.detach()
    ratio = per_image.mean() / dense
    assert logs["flops_ratio"] == pytest.approx(float(ratio))
    assert logs["loss_flops"] == pytest.approx(float((ratio - 0.3) ** 2))
    assert logs["loss"] == pytest.approx(logs["loss_detection"] + 2.0 * logs["loss_flops"])
    assert logs["loss_detection"] == pytest.approx(sum(logs[k] for k in ("loss_classifier", "loss_box_reg",
                                                                         "loss_objectness", "loss_rpn_box_reg")))
    # FLOPs of the real input: the transform resized the 64×96 canvases to 64×96 (min_size 64), padded to 64×96.
    assert body._last_hw == (64, 96) and dense == pytest.approx(body.dense_flops((64, 96)))
    assert logs["backbone_gmacs_dense"] == pytest.approx(dense / 1e9)
    loss.backward()
    assert model.backbone.body.trunk_output.block3[0].masker.conv.bias.grad.abs().sum() > 0
    sample, _ = backbone_flops_loss(model, 0.3, "sample")
    assert sample.detach().item() == pytest.approx(float(((per_image / dense - 0.3) ** 2).mean()))


def test_flops_at_the_detector_input_size(batch):
    model = _detector(target=0.5, min_size=128, max_size=192)  # images upscaled to 128×192
    _, logs = detection_step(model, *batch)
    assert model.backbone.body._last_hw == (128, 192)
    assert logs["backbone_gmacs_dense"] == pytest.approx(model.backbone.body.dense_flops((128, 192)) / 1e9)


def test_static_backbone_and_bad_calls(batch):
    model = _detector("static")
    loss, logs = detection_step(model, *batch)  # no target needed
    assert logs["loss_flops"] == 0 and logs["flops_ratio"] == pytest.approx(1.0)
    assert loss.detach().item() == pytest.approx(logs["loss_detection"])
    dynamic = _detector("spatial")
    with pytest.raises(ValueError, match=r"a dynamic backbone needs a target FLOPs ratio in \(0, 1\], got None"):
        detection_step(dynamic, *batch)
    dynamic.eval()
    with pytest.raises(ValueError, match=r"needs the model in training mode"):
        detection_step(dynamic, *batch, target=0.5)
    with pytest.raises(ValueError, match="unknown FLOPs reduction 'median'"):
        backbone_flops_loss(dynamic, 0.5, "median")
