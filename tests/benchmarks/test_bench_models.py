"""benchmarks/bench_models.py end to end on the CPU (`--smoke`): every variant is built and run or records why not,
and report_models.py reads the result."""

import json
import sys

from helpers import ROOT, load_benchmark


def test_smoke_run_and_report(tmp_path, monkeypatch, capsys):
    out = tmp_path / "models.json"
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    bench = load_benchmark("bench_models")
    monkeypatch.setattr(sys, "argv", [
        "bench_models.py", "--smoke", "--models", "laud_resnet50", "--paradigms", "layer", "spatial", "--batches", "2",
        "--rates", "0.5", "--image-size", "64", "--tune", "--conditional", "--dense-whole", "--stem", "triton",
        "--out", str(out)])
    monkeypatch.setattr(bench, "DEV", bench.DEV)  # main switches it to the CPU: restored afterwards
    assert bench.main() == 0
    data = json.loads(out.read_text())
    assert data["meta"]["device"] == "cpu" and data["meta"]["args"]["stem"] == "triton"
    rows = data["results"]
    timed = {(r["kind"], r["variant"]) for r in rows if "ms" in r}
    for kind in ("layer", "spatial"):
        assert {(kind, "deployed eager"), (kind, "dense-masked whole-compile")} <= timed
    assert ("static", "laudnet folded eager") in timed and ("static", "torchvision eager (again)") in timed
    errors = [r for r in rows if "error" in r]
    assert errors and all("CUDA" in r["error"] for r in errors), errors  # only what needs a GPU failed
    assert all(r["rel_error"] < 2e-2 for r in rows if r.get("variant") == "deployed eager")
    # the predictor's ratio with eager launches (preset) and as CUDA graphs (the calibrated spec)
    assert all(r["predicted_ratio"] > 0 and 0 < r["predicted_ratio_graphed"] != r["predicted_ratio"]
               for r in rows if r.get("variant") == "deployed eager")
    report = load_benchmark("report_models").report(str(out))
    assert "laud_resnet50, batch 2" in report


def test_summary_of_the_committed_full_runs():
    """`report_models.py --summary`: one row per case and batch size from the committed whole-model runs, each
    ratio against that batch's best static time; with a calibrated spec the predictor's ratio is recomputed for
    CUDA-graph replays."""
    report = load_benchmark("report_models")
    path = ROOT / "benchmarks/results/bench_models_full_r50_h200_47df158.json"
    rows = [r for r in json.loads(path.read_text())["results"] if "ms" in r]
    best = min(r["ms"] for r in rows if r["kind"] == "static" and r["batch"] == 1)
    tuned = next(r for r in rows if r["batch"] == 1 and r["kind"] == "layer" and r["rate"] == 0.25
                 and r["variant"] == "deployed tuned cuda-graph")
    plain = report.summary([str(path)])
    line = next(x for x in plain.splitlines() if x.startswith("| layer | 0.25 |"))
    assert f"{tuned['ms']:.2f} ms (**{tuned['ms'] / best:.2f}**)" in line
    assert f"{tuned['predicted_ratio']:.2f} |" in line
    graphed = report.summary([str(path)], str(ROOT / "benchmarks/results/h100_calibrated_1e74193.yaml"))
    assert graphed.count("| layer |") == plain.count("| layer |") == 4 and graphed != plain
