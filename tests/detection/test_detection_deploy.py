"""The deployed backbone inside torchvision's detectors (`laudnet.detection.deploy_detector`): on padded, non-square
detection batches the deployed detector detects what the training-form detector detects (eval, fp32), with the
same per-block decisions; the body's features match stage by stage; the forms, the options and the errors."""

from __future__ import annotations

import pytest
import torch
from detection_sizes import small_kwargs
from torchvision.ops import FrozenBatchNorm2d

import laudnet
from laudnet.detection import (
    AutocastModule,
    DeployedBody,
    body_classifier,
    create_detector,
    deploy_backbone,
    deploy_detector,
)


def _detector(kind: str, paradigm: str, backbone: str = "laud_resnet50", granularity=None) -> torch.nn.Module:
    """An eval detector whose maskers skip part of the work (random masker weights), whose frozen BNs are not the
    identity, which keeps every detection (score threshold 0) and whose padded batches are 64×128."""
    kw = dict(small_kwargs(kind), min_size=64, max_size=128)
    torch.manual_seed(0)  # the same random detector in every run
    model = create_detector(kind, backbone, paradigm, granularity, num_classes=5, **kw)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.backbone.body.modules():
            if isinstance(m, FrozenBatchNorm2d | torch.nn.modules.batchnorm._BatchNorm):  # masker norms included
                n = m.running_mean.numel()
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(n, generator=g) - 0.5)
        for name, p in model.backbone.body.named_parameters():
            if "masker" in name and p.dim() > 1:
                p.normal_(0, 0.5, generator=g)
    if kind == "retinanet":
        model.score_thresh = 0.0
    else:
        model.roi_heads.score_thresh = 0.0
    return model.eval()


def _images() -> list[torch.Tensor]:
    """Three landscape images of different sizes and contrasts: resized to 64×120, 64×91 and 64×115, padded to
    64×128 (every stage map non-square, 16×32 down to 2×4)."""
    g = torch.Generator().manual_seed(2)
    return [torch.rand(3, h, w, generator=g) * c for (h, w), c in (((64, 120), 1.0), ((70, 100), 0.4),
                                                                     ((50, 90), 2.0))]


def _decision_rates(detector) -> list[float]:
    """Each block's share of executed decisions (patch cells, channel groups or samples) in the last forward."""
    rates = []
    for info in laudnet.collect_info(detector.backbone):
        mask = info.masks["channel"] if info.paradigm == "channel" else info.masks["patch"]
        rates.append(float(mask.float().mean()))
    return rates


def _assert_same_detections(ours: list[dict], theirs: list[dict]) -> None:
    """The same detections, as sets: a random detector's proposals and scores have near ties that the folded BNs'
    rounding can order differently (a neighbouring proposal kept by NMS, two labels of equal score swapped), so each
    expected detection needs a counterpart of its label, corners within 0.5 pixel (not IoU: many random boxes are
    thinner than a pixel) and a score within 0.01 (a neighbouring proposal pools slightly other features), for all
    but one or 5 % of them per image; the counterparts' masks agree."""
    assert len(ours) == len(theirs) and sum(len(b["boxes"]) for b in theirs) > 0
    for a, b in zip(ours, theirs, strict=True):
        assert set(a) == set(b)
        n = len(b["boxes"])
        assert abs(len(a["boxes"]) - n) <= max(1, n // 20)
        corners = (b["boxes"][:, None] - a["boxes"][None]).abs().amax(-1)
        close = (corners <= 0.5) & (b["labels"][:, None] == a["labels"][None])
        close &= (b["scores"][:, None] - a["scores"][None]).abs() <= 0.01
        matched = close.any(1)
        assert int((~matched).sum()) <= max(1, n // 20), f"{int((~matched).sum())} of {n} without a counterpart"
        if "masks" in b:
            j = close.float().argmax(1)[matched]
            assert (a["masks"][j] - b["masks"][matched]).abs().mean() < 1e-3


@pytest.mark.parametrize(("paradigm", "form"), [("spatial", "sparse"), ("channel", "sparse"), ("layer", "sparse"),
                                                ("spatial", "dense-masked"), ("layer", "dense-masked")])
def test_deployed_detector_detects_as_the_detector(paradigm, form):
    granularity = "4-3-3-1" if paradigm == "spatial" else None  # S=3: partial border cells on 8×16 and 4×8 maps
    detector = _detector("fasterrcnn", paradigm, granularity=granularity)
    images = _images()
    deployed = deploy_detector(detector, torch.float32, form=form)
    assert isinstance(deployed.backbone.body, DeployedBody) and deployed.backbone.body.form == form
    assert deployed.backbone.fpn is not detector.backbone.fpn  # a copy: the detector is left as it was
    assert isinstance(detector.backbone.body, laudnet.detection.LaudBackboneBody)
    with torch.no_grad():
        expected = detector(images)
        out = deployed(images)
    assert detector.transform.last_image_sizes == [(64, 120), (64, 91), (64, 115)]
    _assert_same_detections(out, expected)
    # Same decisions on the padded 64×128 batch, and not all-or-nothing ones.
    rates = _decision_rates(detector)
    assert deployed.backbone.body.activation_rates() == pytest.approx(rates, abs=1e-6)
    assert any(0 < r < 1 for r in rates)


@pytest.mark.parametrize("kind", ["retinanet", "maskrcnn"])
def test_other_detectors(kind):
    detector = _detector(kind, "spatial")
    images = _images()[:2]
    deployed = deploy_detector(detector, torch.float32)
    with torch.no_grad():
        _assert_same_detections(deployed(images), detector(images))


def test_regnet_backbone_and_static_detector():
    for detector in (_detector("fasterrcnn", "layer", "laud_regnety_400mf"), _detector("fasterrcnn", "static")):
        images = _images()
        deployed = deploy_detector(detector, torch.float32, form="dense-masked")
        with torch.no_grad():
            _assert_same_detections(deployed(images), detector(images))


@pytest.mark.parametrize("paradigm", ["spatial", "channel", "layer"])
def test_body_features_stage_by_stage(paradigm):
    """Every returned stage output (no later block overwrites one in place), at a size S and 32 do not divide."""
    body = _detector("fasterrcnn", paradigm).backbone.body
    x = torch.randn(2, 3, 72, 104)
    with torch.no_grad():
        expected = body(x)
        out = deploy_backbone(body, torch.float32)(x)
    assert list(out) == list(expected) == ["0", "1", "2", "3"]
    for k in out:
        assert out[k].dtype == torch.float32
        assert ((out[k] - expected[k]).norm() / expected[k].norm()).item() < 1e-5


@pytest.mark.parametrize("paradigm", ["static", "spatial"])
def test_dense_masked_body_is_one_graph(paradigm):
    """What a GPU compiles whole (``torch.compile(dynamic=False)``; a static body so is the strongest static form):
    the dense-masked body, returned stages and autocast guard included, traces as one graph."""
    body = deploy_backbone(_detector("fasterrcnn", paradigm).backbone.body, torch.float32, form="dense-masked")
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        explained = torch._dynamo.explain(body.features)(x)
    torch._dynamo.reset()
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons


def test_body_classifier_unfreezes_batch_norm():
    body = _detector("fasterrcnn", "spatial").backbone.body
    model = body_classifier(body)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert not model.training and model.paradigm == "spatial" and list(model.granularity) == list(body.granularity)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = model.forward_features(x), body(x)["3"]
    assert ((a - b).norm() / b.norm()).item() < 1e-5  # FrozenBatchNorm2d vs batch_norm: rounding only
    body.model_args = None
    with pytest.raises(ValueError, match="does not record the model"):
        body_classifier(body)


def test_fastest_times_both_forms_on_real_batches():
    detector = _detector("fasterrcnn", "spatial")
    images = _images()
    calls = []

    def timer(fn, device, repeats):  # every call runs what it times; each measurement is faster than the last
        calls.append(repeats)
        fn()
        return 1.0 / len(calls)

    deployed = deploy_detector(detector, torch.float32, form="fastest", example=images, timer=timer, repeats=4)
    body = deployed.backbone.body
    assert calls == [3] * 32 + [4, 4]  # tuning: 16 blocks x 2 paths (half the repeats, at least 3), then the forms
    assert set(body.times_ms) == {"sparse", "dense-masked"} and not body.errors
    assert body.form == "dense-masked"  # timed last, hence "faster"
    with torch.no_grad():
        _assert_same_detections(deployed(images), detector(images))


def test_heads_autocast():
    detector = _detector("fasterrcnn", "spatial")
    deployed = deploy_detector(detector, torch.float32, heads_autocast=torch.bfloat16)
    assert isinstance(deployed.backbone.fpn, AutocastModule) and isinstance(deployed.roi_heads.box_head,
                                                                           AutocastModule)
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        y = AutocastModule(conv)(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref = conv(x)
    assert y.dtype == torch.float32 and ref.dtype == torch.bfloat16
    torch.testing.assert_close(y, ref.float())
    with torch.no_grad():
        out = deployed(_images())
    assert all(o["boxes"].dtype == torch.float32 and len(o["boxes"]) == 10 for o in out)


def test_bad_calls():
    detector = _detector("fasterrcnn", "spatial")
    with pytest.raises(ValueError, match="form must be one of"):
        deploy_detector(detector, torch.float32, form="fast")
    with pytest.raises(ValueError, match="pass example"):
        deploy_detector(detector, torch.float32, form="fastest")
    with pytest.raises(ValueError, match="graphed=True replays CUDA graphs"):
        deploy_detector(detector, torch.float32, graphed=True)
    with pytest.raises(ValueError, match="compile must be True, False or one of"):
        deploy_detector(detector, torch.float32, compile="max-autotune")
    with pytest.raises(ValueError, match="padded batch"):
        deploy_backbone(detector.backbone.body, torch.float32, example=torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="eval mode"):
        deploy_detector(detector.train(), torch.float32)
    tv = __import__("torchvision").models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                                                          num_classes=5).eval()
    with pytest.raises(TypeError, match="LAUD backbone"):
        deploy_detector(tv, torch.float32)


def _impose_eval_decisions(detector, paradigm: str):
    """A `setup` giving the deployed blocks the decisions the detector's body took in its last forward."""
    infos = laudnet.collect_info(detector.backbone)

    def impose(deployed):
        for block, info in zip(deployed.blocks(), infos, strict=True):
            keep = info.masks["channel"] if paradigm == "channel" else info.masks["patch"][:, 0]
            block.forced_keep = (keep.reshape(-1) if paradigm == "layer" else keep) > 0.5
    return impose


@pytest.mark.gpu
@pytest.mark.parametrize("paradigm", ["spatial", "channel", "layer"])
def test_deployed_detector_bf16_graphed_on_gpu(paradigm):
    """On a GPU (Triton kernels, compiled dense parts, CUDA graphs; bf16), both forms: with the eval body's decisions
    imposed (bf16 rounding can flip a borderline decision), the deployed body's features match the fp32 body's on a
    padded batch, replayed from one graph per input shape; the detector runs end to end."""
    detector = _detector("fasterrcnn", paradigm).cuda()
    images = [im.cuda() for im in _images()]
    batch = detector.transform(images)[0].tensors
    with torch.no_grad():
        expected = detector.backbone.body(batch)
    impose = _impose_eval_decisions(detector, paradigm)
    for form in ("sparse", "dense-masked"):
        deployed = deploy_detector(detector, torch.bfloat16, form=form, example=images, setup=impose, repeats=3)
        body = deployed.backbone.body
        with torch.no_grad():
            out = body(batch)
            again = body(batch)
        assert len(body._graphs) == 1
        for k in expected:
            assert ((out[k] - expected[k]).norm() / expected[k].norm()).item() < 3e-2, (form, k)
            torch.testing.assert_close(again[k], out[k])
        with torch.no_grad():
            results = deployed(images)
        assert len(results) == 3 and all(r["boxes"].dtype == torch.float32 for r in results)


@pytest.mark.gpu
def test_fastest_on_gpu_keeps_the_faster_form_and_graphs_each_shape():
    detector = _detector("fasterrcnn", "spatial").cuda()
    images = [im.cuda() for im in _images()]
    deployed = deploy_detector(detector, torch.bfloat16, form="fastest", example=images, repeats=5)
    body = deployed.backbone.body
    assert set(body.times_ms) == {"sparse", "dense-masked"} and not body.errors
    assert body.form == min(body.times_ms, key=body.times_ms.get)
    with torch.no_grad():
        deployed(images)
        deployed([torch.rand(3, 96, 64, device="cuda")])  # another padded size: a second graph
    assert sorted(k[0] for k in body._graphs) == [(1, 3, 96, 64), (3, 3, 64, 128)]
