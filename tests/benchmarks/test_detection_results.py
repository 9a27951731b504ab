"""benchmarks/detection_results.py: the whole flow on the CPU (`--smoke`, in subprocesses) stopped after two units and
finished by a second call that redoes none of them; its bad-input errors; the goal's verdict."""

import json
import math

import pytest
from helpers import ROOT, load_benchmark, run_benchmark


@pytest.mark.slow
def test_smoke_run_resumes_and_writes_every_point(fashion_root, tmp_path):
    out = tmp_path / "det"
    smoke = ("--smoke", "--data-root", fashion_root, "--out", out, "--commit", "test", "--no-progress",
             "--paradigms", "spatial", "layer")
    first = run_benchmark("detection_results", *smoke, "--stop-after-units", "2", timeout=200)
    assert first.returncode == 3, first.stdout[-3000:] + first.stderr[-3000:]
    data = json.loads((out / "detection_results.json").read_text())
    assert not data["complete"] and [p["name"] for p in data["points"]] == ["maskrcnn-static"]
    assert data["goal"]["status"] == "open"
    done = run_benchmark("detection_results", *smoke, timeout=200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "== backbone" not in done.stdout and "== maskrcnn-static:" not in done.stdout  # not redone
    assert "== maskrcnn-spatial-t0.5" in done.stdout and "== timing maskrcnn-static" in done.stdout
    data = json.loads((out / "detection_results.json").read_text())
    assert data["complete"] and not data["errors"]
    points = {p["name"]: p for p in data["points"]}
    assert list(points) == ["maskrcnn-static", "maskrcnn-spatial-t0.5", "maskrcnn-layer-t0.5"]
    for p in points.values():
        values = [p["box_ap"], p["mask_ap"], p["flops_ratio"]]
        lat = p["latency"]["64x96"]
        values += [lat["backbone_ms"], lat["detector_ms"], lat["backbone_ratio"], lat["detector_ratio"]]
        assert all(isinstance(v, float) and math.isfinite(v) for v in values), p
        assert p["device"] == "cpu" and p["commit"] == "test"
        if p["paradigm"] != "static":
            assert lat["form"] in ("sparse", "dense-masked") and p["adaptivity"]["paradigm"] == p["paradigm"]
            assert p["goal"] in (True, False) and set(p["goal_checks"]) == {"box", "mask", "latency"}
    assert data["goal"]["status"] in ("met", "missed")
    table = (out / "detection_results.md").read_text()
    assert "| maskrcnn-layer-t0.5 |" in table and "The goal is" in table
    assert "fashion-canvas-det 64 px" in (out / "readme_table.md").read_text()
    units = json.loads((out / "units.json").read_text())
    assert {"backbone", "maskrcnn-static", "timing maskrcnn-layer-t0.5"} <= set(units)


@pytest.mark.parametrize(("args", "message"), [
    (["--sizes", "100x96"], "multiples of 32"),
    (["--sizes", "800"], "a size is HxW"),
    (["--data-root", "/nonexistent/fashion"], "data root /nonexistent/fashion does not exist"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
])
def test_bad_input_is_one_line_with_status_2(fashion_root, tmp_path, args, message):
    done = run_benchmark("detection_results", "--smoke", "--data-root", fashion_root, "--out", tmp_path / "o", *args,
                         timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("detection_results.py: error:") and message in lines[0], done.stderr
    assert not (tmp_path / "o").exists()


def test_goal_verdict(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    dr = load_benchmark("detection_results")

    def point(name, detector, paradigm, box, mask, ratio):
        return dict(name=name, detector=detector, paradigm=paradigm, box_ap=box, mask_ap=mask,
                    latency={"800x1216": {"backbone_ratio": ratio}})

    static = point("m-static", "maskrcnn", "static", 40.0, 35.0, 1.0)
    near = point("m-layer", "maskrcnn", "layer", 39.2, 34.1, 0.68)
    slow = point("m-spatial", "maskrcnn", "spatial", 40.5, 35.5, 0.9)
    assert dr.goal([static, near, slow], "800x1216")["met_by"] == ["m-layer"]
    assert slow["goal"] is False and slow["goal_checks"]["latency"] is False
    assert near["box_ap_delta"] == pytest.approx(-0.8)
    low_mask = point("m-channel", "maskrcnn", "channel", 39.5, 33.9, 0.5)
    assert dr.goal([static, low_mask], "800x1216")["status"] == "missed"
    untimed = point("m-layer", "maskrcnn", "layer", 39.5, 34.5, None)
    assert dr.goal([static, untimed], "800x1216")["status"] == "open"
    # without Mask R-CNN, Faster R-CNN's box AP decides
    fs, fl = point("f-static", "fasterrcnn", "static", 30.0, None, 1.0), point("f-layer", "fasterrcnn", "layer", 29.5,
                                                                                None, 0.6)
    assert dr.goal([fs, fl], "800x1216")["status"] == "met"
