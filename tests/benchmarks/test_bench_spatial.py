"""benchmarks/bench_spatial.py on the CPU (`--smoke`, in a subprocess: tiny shapes under the Triton interpreter): every
kernel path agrees with the dense block, the results file has each section, and `--report` renders it."""

import json

from helpers import run_benchmark


def test_smoke_run_and_report(tmp_path):
    out = tmp_path / "smoke.json"
    run = run_benchmark("bench_spatial", "--smoke", "--batch", 2, "--stages", 3, "--out", out, "--commit", "abc123",
                        timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]  # 1: a kernel path disagreed
    data = json.loads(out.read_text())
    assert data["device"] == "cpu (smoke)" and data["commit"] == "abc123" and data["batch"] == 2
    assert data["static"] and data["spatial"] and data["layer"] and data["checks"]
    assert {r["stage"] for r in data["spatial"]} == {3}
    report = run_benchmark("bench_spatial", "--report", out, timeout=120)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "| stage | S | rate |" in report.stdout
