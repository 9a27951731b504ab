"""`laudnet latency`, `laudnet granularity`, `laudnet calibrate` and `compare_blocks`."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from laudnet.cli import main
from laudnet.latency import predict_model
from laudnet.latency.calibrate import compare_blocks

ROOT = Path(__file__).resolve().parents[2]


def test_latency_text(capsys):
    assert main(["latency", "--model", "laud_resnet101", "--paradigm", "layer", "--density", "0.5", "--hardware",
                 "v100", "--batch", "128"]) == 0
    out = capsys.readouterr().out
    assert "ratio" in out and "resnet101" in out and "stem, pool, fc" in out


def test_latency_json(capsys):
    assert main(["latency", "--model", "resnet101", "--paradigm", "spatial", "--granularity", "4-4-2-1", "--hardware",
                 "v100", "--compat", "paper", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert {"static_ms", "dynamic_ms", "ratio", "blocks"} <= set(d)
    assert len(d["blocks"]) == 33 and d["granularity"] == [4, 4, 2, 1]
    assert d["static_ms"] == pytest.approx(1.677, rel=0.02)
    assert d["ratio"] == pytest.approx(d["dynamic_ms"] / d["static_ms"])


def test_latency_per_block_densities_file(tmp_path, capsys):
    path = tmp_path / "rates.json"
    path.write_text(json.dumps({"per_block_densities": [0.3] * 16}))
    assert main(["latency", "--model", "resnet50", "--densities", str(path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [b["density"] for b in d["blocks"]] == [0.3] * 16


@pytest.mark.parametrize("argv,message", [
    (["--model", "resnet50", "--hardware", "k80"], "unknown hardware"),
    (["--model", "resnet50", "--density", "-0.1"], r"\[0, 1\]"),
    (["--model", "resnet50", "--paradigm", "spatial", "--granularity", "5-4-2-1"], "does not divide"),
    (["--model", "resnet50", "--densities", "missing.json"], "not found"),
])
def test_latency_bad_input(argv, message, capsys):
    assert main(["latency", *argv]) == 2
    assert pytest.importorskip("re").search(message, capsys.readouterr().err)


def test_latency_is_fast_and_torch_free():
    code = ("import sys, time; t = time.time(); from laudnet.cli import main; "
            "main(['latency', '--model', 'resnet101', '--paradigm', 'channel', '--granularity', '2-2-2-2', "
            "'--hardware', 'tx2']); assert 'torch' not in sys.modules, 'torch imported'; "
            "print('elapsed', time.time() - t)")
    start = time.time()
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    assert time.time() - start < 10  # about a second on a workstation; generous for a loaded CI machine


def test_granularity_writes_plots_and_table(tmp_path, capsys):
    assert main(["granularity", "--model", "regnety_400mf", "--hardware", "tx2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Recommended" in out and "--granularity" in out
    pngs = sorted(tmp_path.glob("*.png"))
    assert len(pngs) == 4 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert (tmp_path / "regnety_400mf_tx2_granularity.md").read_text().startswith("# granularity analysis")
    rows = (tmp_path / "regnety_400mf_tx2_granularity.csv").read_text().splitlines()
    assert rows[0].startswith("model,hardware") and len(rows) > 100


def test_granularity_recommendation_rule():
    from laudnet.latency.granularity import recommend, spatial_choices, sweep

    report = sweep("resnet50", "v100", compat="paper", rates=(0.3, 0.5, 0.7))
    rec = recommend(report, 0.5, tolerance=0.05)
    for row in rec:
        curves = report.stage_curves(row["stage"], "spatial")[:-1]  # S = stage size is never recommended
        assert curves[-1].granularity < report.stage_curves(row["stage"], "spatial")[-1].granularity
        best = min(c.ratio_at(0.5) for c in curves)
        assert row["spatial_ratio"] <= best * 1.05
        finer = [c for c in curves if c.granularity < row["S"]]
        assert all(c.ratio_at(0.5) > best * 1.05 for c in finer)
    assert spatial_choices(14) == [1, 2, 7, 14]


def test_calibrate_cpu_writes_usable_spec(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "local.json"
    assert main(["calibrate", "--device", "cpu", "--out", str(out)]) == 0
    assert "copy bandwidth" in capsys.readouterr().out
    spec = json.loads(out.read_text())
    assert spec["n_pes"] >= 1 and spec["mem_bandwidth"] > 0 and spec["launch_time"] > 0
    assert main(["latency", "--model", "resnet50", "--hardware", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hardware"] == "local-cpu"


def _synthetic(factor_by_case):
    rows = []
    for (paradigm, gran, stage, index, batch), factor in factor_by_case.items():
        p = predict_model("resnet50", paradigm, 0.5, gran, hardware="v100", batch=batch)
        blk = [b for b in p.blocks if b.stage == stage and b.index == index][0]
        rows.append({"model": "resnet50", "stage": stage, "index": index, "paradigm": paradigm,
                     "granularity": int(gran.split("-")[stage]) if gran else None, "density": 0.5, "batch": batch,
                     "measured_ms": blk.dynamic_ms * batch / factor})
    return rows


def test_compare_blocks_reports_median_and_worst_error():
    # measured = predicted / factor, so |predicted - measured| / measured = |factor - 1|: errors 0.1, 0.2 and 0
    cases = {("layer", None, 2, 1, 128): 1.1, ("spatial", "4-4-2-1", 1, 0, 64): 0.8,
             ("channel", "2-2-2-2", 3, 2, 1): 1.0}
    res = compare_blocks(_synthetic(cases), "v100")
    assert res["n"] == 3
    assert res["median_rel_error"] == pytest.approx(0.1)
    assert res["worst_rel_error"] == pytest.approx(0.2)
    assert res["worst"]["paradigm"] == "spatial"
    geometry_form = {"in_channels": 256, "out_channels": 256, "width": 64, "in_size": 56, "stride": 1,
                     "paradigm": "static", "batch": 8, "measured_ms": 1.0}
    assert compare_blocks([geometry_form], "v100")["rows"][0]["predicted_ms"] > 0


@pytest.mark.parametrize("bad,message", [
    ({"measured_ms": 0}, "measured_ms"),
    ({"paradigm": "token"}, "unknown paradigm"),
    ({"density": 2}, r"\[0, 1\]"),
    ({"stage": 9}, "no block"),
    ({"paradigm": "spatial", "granularity": 5}, "does not divide"),
])
def test_compare_blocks_bad_input(bad, message):
    m = {"model": "resnet50", "stage": 0, "index": 0, "paradigm": "layer", "density": 0.5, "batch": 1,
         "measured_ms": 1.0, **bad}
    with pytest.raises(ValueError, match=message):
        compare_blocks([m], "v100")
    with pytest.raises(ValueError, match="at least one"):
        compare_blocks([], "v100")


def test_calibrate_compare_against_a_preset(tmp_path, capsys):
    path = tmp_path / "measured.json"
    path.write_text(json.dumps(_synthetic({("layer", None, 2, 1, 1): 1.25, ("static", None, 0, 0, 1): 1.0})))
    assert main(["calibrate", "--hardware", "v100", "--compare", str(path)]) == 0
    out = capsys.readouterr().out
    assert "median error 12.5%" in out and "worst 25.0%" in out
    assert main(["calibrate", "--hardware", "v100"]) == 2


def test_densities_from_laudnet_eval_and_demo_reports(tmp_path, capsys):
    import json

    rates = [0.3 + 0.02 * i for i in range(16)]  # laud_resnet50 has 16 blocks
    eval_json = tmp_path / "last.eval.json"
    eval_json.write_text(json.dumps({"top1": 50.0, "block_names": [f"b{i}" for i in range(16)], "block_rates": rates}))
    demo_json = tmp_path / "report.json"
    demo_json.write_text(json.dumps({"top1": 50.0, "block_rates": {f"b{i}": r for i, r in enumerate(rates)}}))
    outs = []
    for path in (eval_json, demo_json):
        assert main(["latency", "--model", "laud_resnet50", "--paradigm", "layer", "--densities", str(path),
                     "--hardware", "v100", "--json"]) == 0
        outs.append(json.loads(capsys.readouterr().out))
    assert outs[0]["dynamic_ms"] == outs[1]["dynamic_ms"]
    assert [b["density"] for b in outs[0]["blocks"]] == pytest.approx(rates)


def test_latency_graphed_with_a_calibrated_spec(capsys):
    spec = str(Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "h100_calibrated_1e74193.yaml")
    argv = ["latency", "--model", "resnet50", "--paradigm", "layer", "--hardware", spec, "--batch", "1"]
    assert main([*argv, "--json"]) == 0
    eager = json.loads(capsys.readouterr().out)
    assert main([*argv, "--graphed"]) == 0
    assert "CUDA graph" in capsys.readouterr().out
    assert main([*argv, "--graphed", "--json"]) == 0
    graphed = json.loads(capsys.readouterr().out)
    assert graphed["graphed"] and not eager["graphed"] and graphed["static_ms"] < eager["static_ms"]
    assert main(["latency", "--model", "resnet50", "--hardware", "h100", "--graphed"]) == 2
    assert "graph_launch_time" in capsys.readouterr().err
