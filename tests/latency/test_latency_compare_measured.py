"""`benchmarks/compare_predictor.py`: the committed H100 block measurements convert into well-formed `compare_blocks`
input, the committed measurement list is what the conversion gives, and the predictor runs on it (CPU, no torch)."""

import copy
import importlib.util
import json
import math
from pathlib import Path

import pytest

from laudnet.cli import main
from laudnet.latency.calibrate import compare_blocks
from laudnet.latency.geometry import get_geometry

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"


def _load_script():
    spec = importlib.util.spec_from_file_location("compare_predictor", ROOT / "benchmarks" / "compare_predictor.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cp = _load_script()


@pytest.fixture(scope="module")
def raw():
    spatial = json.loads(cp.SPATIAL_FILE.read_text())
    runs = [(p.name, json.loads(p.read_text())) for p in cp.CHANNEL_FILES]
    return spatial, runs


@pytest.fixture(scope="module")
def converted(raw):
    spatial, runs = raw
    return cp.build_measurements(spatial, runs, cp.SPATIAL_FILE.name)


def test_conversion_is_well_formed(converted):
    measurements, skipped = converted
    blocks = {(b.stage, b.index): b for b in get_geometry("resnet50").blocks()}
    counts = {}
    for m in measurements:
        counts[m["paradigm"]] = counts.get(m["paradigm"], 0) + 1
        assert m["batch"] == 128 and m["precision"] == "bf16"
        assert math.isfinite(m["measured_ms"]) and 0.01 < m["measured_ms"] < 5.0  # whole-batch block times, ms
        assert 0.0 < m["density"] <= 1.0
        assert m["variant"] == cp.PRIMARY[m["paradigm"]]
        b = blocks[(m["stage"], m["index"])]  # the geometry is that of the ResNet-50 block it names
        assert (m["in_channels"], m["out_channels"], m["width"], m["in_size"], m["stride"], m["projection"]) == \
            (b.in_channels, b.out_channels, b.width, b.in_size, b.stride, b.projection)
        if m["paradigm"] in ("spatial", "channel"):
            assert isinstance(m["granularity"], int) and m["granularity"] >= 1
        else:
            assert m["granularity"] is None
        if m["paradigm"] == "spatial":
            assert m["in_size"] % m["granularity"] == 0
        if m["paradigm"] == "static":
            assert m["density"] == 1.0
    # 3 non-first + 2 first blocks static; 48 spatial cases less the 4 with S=4 on 14x14; 12 layer cases; channel:
    # 61 cases of run 1 and 24 of run 2, 18 of them in both
    assert counts == {"static": 5, "spatial": 44, "layer": 12, "channel": 67}
    assert len({cp._case_key(m) for m in measurements}) == len(measurements)
    assert [(s["granularity"], s["block"]) for s in skipped] == [(4, "resnet50 stage 2 block 1")] * 4
    assert all("does not divide" in s["reason"] for s in skipped)


def test_conversion_takes_the_documented_variants(raw, converted):
    spatial, runs = raw
    measurements, _ = converted
    by_key = {cp._case_key(m): m for m in measurements}
    row = next(r for r in spatial["spatial"] if r["stage"] == 1 and r["S"] == 4 and r["rate"] == 0.5)
    m = by_key[("resnet50 stage 0 block 1", "spatial", 4, 0.5)]
    assert m["measured_ms"] == row["syncfree_graph_ms"] and m["density"] == row["pixel_rate"]
    lay = next(r for r in spatial["layer"] if r["stage"] == 3 and r["rate"] == 0.25)
    assert by_key[("resnet50 stage 2 block 1", "layer", None, 0.25)]["measured_ms"] == lay["as_spatial_graph_ms"]
    # a channel case timed in both runs comes from run 2 (final tiles); one timed only in run 1 from run 1
    run1, run2 = (dict(runs)[p.name] for p in cp.CHANNEL_FILES)
    both = by_key[("resnet50 stage 2 block 1", "channel", 8, 0.5)]
    r2 = next(r for r in run2["blocks"] if r["block"] == "s3" and r["group_size"] == 8 and r["rate"] == 0.5)
    assert both["source"] == cp.CHANNEL_FILES[1].name and both["measured_ms"] == r2["dynamic_graph_ms"]
    only1 = by_key[("resnet50 stage 1 block 0", "channel", 32, 0.25)]
    r1 = next(r for r in run1["blocks"] if r["block"] == "s2_first" and r["group_size"] == 32 and r["rate"] == 0.25)
    assert only1["source"] == cp.CHANNEL_FILES[0].name and only1["measured_ms"] == r1["dynamic_graph_ms"]
    # static non-first blocks come from the spatial file's CUDA-graph cuDNN time
    static = by_key[("resnet50 stage 0 block 1", "static", None, 1.0)]
    assert static["measured_ms"] == spatial["static"][0]["graph_ms"]


def test_committed_measurement_file_is_current(converted):
    measurements, _ = converted
    committed = json.loads((RESULTS / cp.MEASUREMENTS_FILE).read_text())
    assert committed == measurements


@pytest.mark.parametrize("hw", ["h100", str(RESULTS / "h100_calibrated_1e74193.yaml")])
def test_compare_blocks_runs_and_cli_prints_the_same(converted, hw, tmp_path, capsys):
    measurements, _ = converted
    res = compare_blocks(measurements, hw)
    assert res["n"] == len(measurements)
    assert all(math.isfinite(r["predicted_ms"]) and r["predicted_ms"] > 0 for r in res["rows"])
    assert 0 < res["median_rel_error"] <= res["worst_rel_error"]
    summary = cp.summarize(res)
    assert sum(s["n"] for p, s in summary.items() if p != "all") == res["n"]
    assert summary["all"]["median_rel_error"] == res["median_rel_error"]
    path = tmp_path / "measured.json"
    path.write_text(json.dumps(measurements))
    assert main(["calibrate", "--hardware", hw, "--compare", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"n={res['n']}  median error {res['median_rel_error']:.1%}  worst {res['worst_rel_error']:.1%}" in out
    report = json.loads((RESULTS / f"{cp.REPORT_STEM}.json").read_text())["results"][Path(hw).name]
    assert report["median_rel_error"] == pytest.approx(res["median_rel_error"])
    assert report["worst_rel_error"] == pytest.approx(res["worst_rel_error"])


def test_script_writes_the_report(tmp_path):
    assert cp.main(["--out-dir", str(tmp_path), "--hardware", "h100"]) == 0
    md = (tmp_path / f"{cp.REPORT_STEM}.md").read_text()
    assert "## Error per paradigm" in md and "| h100 | spatial | 44 |" in md and "## Skipped measured cases" in md
    assert "## Spatial blocks op by op (`h100`" in md
    assert "| before: median | before: worst |" in md and "before ms" in md
    assert len(json.loads((tmp_path / cp.MEASUREMENTS_FILE).read_text())) == 128
    assert cp.main(["--out-dir", str(tmp_path), "--hardware", "h100", "--no-before"]) == 0
    assert "| h100 | spatial | 44 |" in (tmp_path / f"{cp.REPORT_STEM}.md").read_text()


def test_before_columns_come_from_the_earlier_report(converted):
    measurements, _ = converted
    before = cp.load_before(cp.BEFORE_FILE)
    res = cp.compare(measurements, ["h100"], before)["h100"]
    earlier = json.loads(cp.BEFORE_FILE.read_text())["results"]["h100"]
    old = {(r["block"], r["paradigm"], r["granularity"], r["rate"], r["variant"]): r["predicted_ms"]
           for r in earlier["rows"]}
    for r in res["rows"]:
        if r["paradigm"] != "layer":  # the layer variant changed (its earlier prediction is in the alternatives)
            assert r["before_ms"] == old[(r["block"], r["paradigm"], r["granularity"], r["rate"], r["variant"])]
    s = res["by_paradigm"]
    earlier_spatial = earlier["by_paradigm"]["spatial"]["median_rel_error"]
    assert s["spatial"]["before_median_rel_error"] == pytest.approx(earlier_spatial)
    # the engine composition is the point of the change: it must be closer to the engine's measured times
    for p in ("spatial", "layer", "channel", "all"):
        assert s[p]["median_rel_error"] < s[p]["before_median_rel_error"]


def test_spatial_breakdown_covers_the_timed_kernels(raw, converted):
    spatial, _ = raw
    measurements, _ = converted
    rows = cp.spatial_breakdown(spatial, measurements, "h100")
    # 16 kernel breakdowns were timed; the 4 with S=4 on 14x14 are not expressible to the predictor
    assert len(rows) == 12 and {r["S"] for r in rows} == {4, 7}
    for r in rows:
        assert all(v > 0 for k, v in r.items() if k.startswith(("pred_", "meas_")) and k != "meas_index_build_ms")
        m = next(m for m in measurements if m["block"] == r["block"] and m["paradigm"] == "spatial"
                 and m["granularity"] == r["S"] and m["density"] == r["density"])
        pred = compare_blocks([m], "h100")["rows"][0]["predicted_ms"]
        # the masker is shown for scale but not timed, so not predicted for the block either
        assert m["masker"] is False and m["spatial_conv1"] == "sparse" and m["graphed"] is True
        assert sum(v for k, v in r.items() if k.startswith("pred_") and k != "pred_masker_ms") == pytest.approx(pred)


def test_bad_benchmark_files_are_refused(raw):
    spatial, runs = raw
    fp32 = {**spatial, "dtype": "float32"}
    with pytest.raises(ValueError, match="bf16"):
        cp.spatial_file_measurements(fp32, "x.json")
    with pytest.raises(ValueError, match="not a bench_spatial result"):
        cp.spatial_file_measurements({"batch": 128}, "x.json")
    odd = copy.deepcopy(runs[0][1])
    odd["blocks"][0]["cin"] = 1000
    with pytest.raises(ValueError, match="no ResNet-50 bottleneck"):
        cp.channel_file_measurements(odd, "odd.json")
    broken = copy.deepcopy(runs[0][1])
    broken["blocks"][0]["dynamic_graph_ms"] = 0.0
    with pytest.raises(ValueError, match="not a positive time"):
        cp.channel_file_measurements(broken, "broken.json")
    with pytest.raises(FileNotFoundError, match="not found"):
        cp.main(["--spatial", "missing.json"])
