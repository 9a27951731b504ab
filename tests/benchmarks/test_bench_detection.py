"""benchmarks/bench_detection.py end to end on the CPU (`--smoke`): the static detector, every paradigm at an imposed
rate (both backbone forms, the faster kept), and a trained checkpoint's maskers deciding on fashion-canvas-det."""

import json

import torch
from helpers import run_benchmark

import laudnet
from laudnet.train.checkpoint import save_checkpoint


def test_smoke_run(tmp_path, fashion_root):
    model = laudnet.create_model("laud_resnet50", paradigm="spatial", num_classes=10)
    with torch.no_grad():  # maskers that skip part of the work
        for name, p in model.named_parameters():
            if "masker" in name and p.dim() > 1:
                p.normal_(0, 0.5)
    ckpt = save_checkpoint(tmp_path / "spatial.pt", {"model": model.state_dict(), "model_args": model.model_args},
                           model_name="laud_resnet50")
    out = tmp_path / "det.json"
    done = run_benchmark("bench_detection", "--smoke", "--paradigms", "spatial", "channel", "layer", "--checkpoint",
                         ckpt, "--data-root", fashion_root, "--heads-bf16", "--commit", "abc1234", "--out", out,
                         timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["meta"]["device"] == "cpu" and result["meta"]["commit"] == "abc1234"
    rows = {r["kind"]: r for r in result["rows"]}
    assert set(rows) == {"static", "spatial", "channel", "layer", "trained"}
    assert not [r for r in rows.values() if "error" in r or "skipped" in r]
    assert rows["static"]["size"] == [64, 96] and rows["static"]["batch"] == 2
    for kind in ("spatial", "channel", "layer"):
        r = rows[kind]
        assert r["rate"] == 0.25 and set(r["forms_ms"]) == {"sparse", "dense-masked"}
        assert r["form"] == min(r["forms_ms"], key=r["forms_ms"].get) and r["backbone_ms"] == r["forms_ms"][r["form"]]
        assert 0 < r["flops_ratio"] < 1 and max(r["rel_error"].values()) < 0.05  # bf16 against the fp32 body
        assert {"backbone_ratio", "detector_ratio", "detector_bf16_heads_ratio"} <= set(r)
    trained = rows["trained"]
    assert trained["paradigm"] == "spatial" and trained["images"] == "fashion-canvas-det"
    assert set(trained["forms_ms"]) == {"sparse", "dense-masked"} and trained["rel_error"] < 0.05
    assert len(trained["block_rates"]) == 16 and 0 < trained["flops_ratio"] <= 1.05
    assert "| 64x96 | 2 | spatial | 0.25 |" in done.stdout  # the summary table


def test_smoke_budget_records_skipped_cases(tmp_path):
    out = tmp_path / "det.json"
    done = run_benchmark("bench_detection", "--smoke", "--paradigms", "layer", "--budget-s", "0", "--out", out,
                         timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["kind"], r["skipped"]) for r in rows] == [("static", "budget"), ("layer", "budget")]
    assert "2 case(s) skipped or failed" in done.stdout


def test_smoke_with_a_detection_checkpoint(tmp_path):
    """A checkpoint of `laudnet train --task detection` sets the run's detector, backbone and classes; every detector
    of the run takes its weights."""
    from laudnet.detection import create_detector

    det = create_detector("retinanet", "laud_regnety_400mf", "layer", num_classes=5, min_size=64, max_size=96)
    ckpt = save_checkpoint(tmp_path / "det.pt", {"model": det.state_dict(), "model_args": det.model_args,
                                                 "task": "detection"}, model_name="laud_regnety_400mf")
    out = tmp_path / "det.json"
    done = run_benchmark("bench_detection", "--smoke", "--paradigms", "spatial", "--checkpoint", ckpt, "--out", out,
                         timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    args = result["meta"]["args"]
    assert (args["detector"], args["backbone"], args["num_classes"]) == ("retinanet", "laud_regnety_400mf", 5)
    rows = {r["kind"]: r for r in result["rows"]}
    assert set(rows) == {"static", "spatial", "trained"} and not [r for r in rows.values() if "error" in r]
    assert rows["trained"]["paradigm"] == "layer" and rows["trained"]["images"] == "random"
