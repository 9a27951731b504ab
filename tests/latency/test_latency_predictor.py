"""Whole-model predictions: the paper's numbers in compat mode, monotonicity, bad input, the default model's fixes."""

import json

import pytest

from laudnet.latency import predict_model
from laudnet.latency.blocks import channel_block
from laudnet.latency.geometry import get_geometry
from laudnet.latency.hardware import load_hardware
from laudnet.latency.ops import get_op_model

# Facts from the official simulator (per image, activation rate 0.5), as the issue lists them.
STATIC_PAPER = [("resnet101", "v100", 1.677), ("resnet101", "tx2", 32.24), ("resnet50", "v100", 0.908),
                ("resnet50", "tx2", 17.23)]
RATIOS_PAPER = [("layer", None, 0.586, 0.02), ("channel", "1-1-1-1", 0.592, 0.03), ("spatial", "8-4-7-1", 0.779, 0.02),
                ("spatial", "4-4-2-1", 0.858, 0.02), ("spatial", "1-1-1-1", 1.324, 0.02)]


@pytest.mark.parametrize("model,hw,expected", STATIC_PAPER)
def test_compat_static_latency_matches_paper(model, hw, expected):
    p = predict_model(model, "static", hardware=hw, compat="paper")
    assert p.batch == (128 if hw == "v100" else 1)
    assert p.static_ms == pytest.approx(expected, rel=0.02)
    assert p.other_ms == 0  # compat: residual stages only


@pytest.mark.parametrize("paradigm,granularity,expected,tol", RATIOS_PAPER)
def test_compat_resnet50_ratios_match_paper(paradigm, granularity, expected, tol):
    p = predict_model("resnet50", paradigm, 0.5, granularity, hardware="v100", batch=128, compat="paper")
    assert p.ratio == pytest.approx(expected, rel=tol)


def test_compat_other_published_numbers():
    # The spec's FLAG 21 note: with the uniform rate applied to all 33 blocks, ResNet-101 layer skipping at 0.5 on
    # V100 has ratio 0.5625 (the official script, hard-coding ResNet-50's block list, gives 0.317).
    assert predict_model("resnet101", "layer", 0.5, hardware="v100", compat="paper").ratio == pytest.approx(0.5625,
                                                                                                            rel=0.01)
    # Static RegNetY on TX2 as read from the paper's figure (3.6 ms and 5.4 ms; two significant digits).
    assert predict_model("regnety_400mf", "static", hardware="tx2", compat="paper").static_ms == pytest.approx(
        3.6, rel=0.03)
    assert predict_model("regnety_800mf", "static", hardware="tx2", compat="paper").static_ms == pytest.approx(
        5.4, rel=0.03)


@pytest.mark.parametrize("compat", [None, "paper"])
@pytest.mark.parametrize("paradigm,granularity", [("layer", None), ("channel", "2-2-2-2"), ("spatial", "4-4-2-1"),
                                                  ("spatial", "1-1-1-1")])
def test_monotone_in_density(compat, paradigm, granularity):
    for hw in ("v100", "tx2"):
        lat = [predict_model("resnet50", paradigm, d / 10, granularity, hardware=hw, compat=compat).dynamic_ms
               for d in range(11)]
        assert lat == sorted(lat), (hw, lat)


@pytest.mark.parametrize("compat", [None, "paper"])
def test_monotone_in_batch(compat):
    for paradigm, gran in (("static", None), ("layer", None), ("spatial", "4-4-2-1"), ("channel", "1")):
        totals = [predict_model("resnet50", paradigm, 0.5, gran, hardware="v100", batch=b, compat=compat).dynamic_ms * b
                  for b in (1, 2, 8, 32, 128)]
        assert totals == sorted(totals), (paradigm, totals)


def test_per_block_densities():
    n = get_geometry("resnet101").num_blocks
    uniform = predict_model("resnet101", "layer", 0.4, hardware="tx2")
    listed = predict_model("resnet101", "layer", per_block_densities=[0.4] * n, hardware="tx2")
    assert listed.dynamic_ms == pytest.approx(uniform.dynamic_ms)
    varied = [0.2] * 10 + [0.9] * (n - 10)
    p = predict_model("resnet101", "layer", varied, hardware="tx2")
    assert [b.density for b in p.blocks] == varied
    assert len(p.blocks) == n == 33


def test_prediction_schema():
    p = predict_model("regnety_800mf", "channel", 0.5, "2", hardware="h100", batch=64)
    d = json.loads(json.dumps(p.to_dict()))
    assert {"static_ms", "dynamic_ms", "ratio", "blocks", "stages", "hardware", "precision", "batch"} <= set(d)
    assert d["precision"] == "bf16" and d["batch"] == 64 and len(d["blocks"]) == 14
    assert {"stage", "index", "density", "static_ms", "dynamic_ms", "ratio"} <= set(d["blocks"][0])
    assert d["dynamic_ms"] == pytest.approx(sum(b["dynamic_ms"] for b in d["blocks"]) + d["other_ms"])


def test_default_mode_fixes():
    compat = predict_model("resnet50", "static", hardware="v100", compat="paper")
    fixed = predict_model("resnet50", "static", hardware="v100")
    assert fixed.other_ms > 0  # fix: FLAG 20 (stem, pooling, classifier)
    # fix: FLAG 20, the stage-1 projection (64 -> 256) is costed
    assert fixed.blocks[0].static_ms > compat.blocks[0].static_ms
    # fix: FLAG 18, coarser channel groups cost more (load imbalance), all else equal, where the blocks are not run
    # by laudnet's compacting channel kernels (RegNetY: grouped 3x3 with SE)
    op = get_op_model(load_hardware("v100"), 128)
    b = next(b for b in get_geometry("regnety_800mf").blocks() if b.width % 16 == 0)
    assert channel_block(op, b, 16, 0.5).latency > channel_block(op, b, 1, 0.5).latency
    # engine: the compacted channel kernels of a plain bottleneck have no load imbalance; G reaches the masker and
    # conv2's weight gather (runs of G channels per load), so there coarser groups are faster, up to a sector
    op16 = get_op_model(load_hardware("h100"), 128)
    r50 = next(b for b in get_geometry("resnet50").blocks() if b.width == 256 and b.index == 1)
    g = [channel_block(op16, r50, gs, 0.5).latency for gs in (1, 2, 4, 8, 16)]
    assert g == sorted(g, reverse=True) and g[0] > 1.2 * g[-1]
    # tensor cores: bf16 is faster than fp32 on the same device
    bf16 = predict_model("resnet50", "static", hardware="h100")
    assert bf16.static_ms < predict_model("resnet50", "static", hardware="h100", precision="fp32").static_ms


def test_regnet_compat_and_default_run():
    for compat in (None, "paper"):
        for par, g in (("spatial", "4-4-2-1"), ("channel", "1"), ("layer", None)):
            p = predict_model("regnety_400mf", par, 0.5, g, hardware="tx2", compat=compat)
            assert 0.1 < p.ratio < 2.0


@pytest.mark.parametrize("kwargs,message", [
    ({"model_name": "vgg16"}, "unknown model"),
    ({"hardware": "k80"}, "unknown hardware"),
    ({"density": 1.5}, r"\[0, 1\]"),
    ({"density": [0.5] * 5}, "16 blocks"),
    ({"paradigm": "spatial", "granularity": "3-4-2-1"}, "does not divide the stage size 56"),
    ({"paradigm": "spatial", "granularity": "-1"}, "got '-1'"),
    ({"paradigm": "channel", "granularity": "3"}, "does not divide the bottleneck width 64"),
    ({"paradigm": "channel", "granularity": "1-2"}, "one positive integer or 4 of them"),
    ({"paradigm": "token"}, "unknown paradigm"),
    ({"compat": "lasnet"}, "unknown compat"),
    ({"batch": 0}, "batch"),
])
def test_bad_input_is_a_clear_error(kwargs, message):
    args = {"model_name": "resnet50", "paradigm": "layer", "density": 0.5, "hardware": "v100", **kwargs}
    with pytest.raises(ValueError, match=message):
        predict_model(**args)


def test_granularity_only_for_spatial_and_channel():
    with pytest.raises(ValueError, match="'layer' takes no granularity"):
        predict_model("resnet50", "layer", 0.5, "4-4-2-1")


def test_graphed_predictions_use_the_graph_launch_time():
    from dataclasses import replace

    spec = replace(load_hardware("h100"), graph_launch_time=1.2e-6)
    eager = predict_model("resnet50", "layer", density=0.5, hardware=spec, batch=1)
    graphed = predict_model("resnet50", "layer", density=0.5, hardware=spec, batch=1, graphed=True)
    assert graphed.graphed and not eager.graphed and graphed.to_dict()["graphed"] is True
    # Batch 1 is launch-bound: per-kernel launches of ~1 us instead of the eager launch time cut both networks.
    assert graphed.static_ms < 0.7 * eager.static_ms and graphed.dynamic_ms < 0.7 * eager.dynamic_ms
    # A kernel's launch is a fixed cost: with a zero graph launch time the latency only drops further.
    free = predict_model("resnet50", "layer", density=0.5, hardware=replace(spec, graph_launch_time=0.0), batch=1,
                         graphed=True)
    assert free.dynamic_ms < graphed.dynamic_ms
    with pytest.raises(ValueError, match="graph_launch_time"):
        predict_model("resnet50", "layer", hardware="h100", graphed=True)  # a datasheet preset has none
    with pytest.raises(ValueError, match="compat"):
        predict_model("resnet50", "layer", hardware=spec, graphed=True, compat="paper")
