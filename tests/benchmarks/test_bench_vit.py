"""benchmarks/bench_vit.py: the CPU smoke run end to end (results file and report), and its exact decisions."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import laudnet

pytest.importorskip("timm")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_vit.py"


def _load():
    if "bench_vit" not in sys.modules:  # registered before running: its dataclass looks its module up
        spec = importlib.util.spec_from_file_location("bench_vit", SCRIPT)
        sys.modules["bench_vit"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["bench_vit"])
    return sys.modules["bench_vit"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out), "--commit", "abc123"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = subprocess.run([sys.executable, str(SCRIPT), "--report", str(out)], env=env, capture_output=True,
                            text=True, timeout=60)
    assert report.returncode == 0, report.stderr[-3000:]
    return json.loads(out.read_text()), report.stdout


def test_smoke_results(smoke):
    data, _ = smoke
    meta, rows = data["meta"], data["results"]
    assert meta["commit"] == "abc123" and meta["torch"] == torch.__version__ and meta["timm"] and meta["dtype"]
    assert not [r for r in rows if "error" in r], [r["error"] for r in rows if "error" in r]
    bench = _load()
    n, patches, heads, depth = 10, 9, 3, 4  # laud_deit_tiny, 4 blocks, 48 px: 3×3 patches and the class token
    for batch in (3, 1):
        rs = [r for r in rows if r["batch"] == batch]
        static = {r["variant"] for r in rs if r["kind"] == "static"}
        assert {"timm eager", "laudnet static eager", "laudnet static cuda-graph"} <= static
        assert next(r for r in rs if r["variant"] == "fp32 check")["rel_error"] < 1e-5
        cases = [r for r in rs if r["variant"] == "case"]
        assert len(cases) == (5 if batch == 3 else 4)  # the spread case needs several samples
        for case in cases:
            timed = {r["variant"] for r in rs if r.get("case") == case["case"] and "ms" in r}
            assert set(bench.VARIANTS) | {"fixed-ratio eager"} <= timed
            assert 0 < case["flops_ratio"] < 1
            assert all(err < 1e-4 for err in case["rel_error"].values()), case["rel_error"]
            base = next(r for r in rs if r.get("case") == case["case"] and r["variant"] == "fixed-ratio eager")
            assert abs(base["baseline_flops_ratio"] - case["flops_ratio"]) < 0.1  # 9 patches: coarse steps
            rates, got = case["rates"], case["measured_rates"]
            if rates["token"]:
                assert got["token"] == pytest.approx((bench.n_keep(rates["token"], patches) + 1) / n, abs=1e-4)
            if rates["head"]:
                assert got["head"] == pytest.approx(round(rates["head"] * heads) / heads, abs=1e-4)
            if rates["layer"]:
                executed = (got["attn"] + got["mlp"]) / 2
                slots = 2 * depth if batch == 1 else batch  # batch 1: sub-blocks chosen over the network
                expected = round(rates["layer"] * slots) / slots
                assert executed == pytest.approx(expected, abs=1e-4)


def test_smoke_report(smoke):
    data, text = smoke
    assert "**laud_deit_tiny, batch 3**" in text and "**laud_deit_tiny, batch 1**" in text
    for case in {r["case"] for r in data["results"] if r["variant"] == "case"}:
        assert f"| {case} |" in text


def test_exact_decisions_at_224():
    """DeiT-S geometry: exactly the requested counts per sample and block; the spread keeps the mean."""
    bench = _load()
    model = laudnet.create_model("laud_deit_tiny", paradigm="token+head+layer", depth=2)
    gen = torch.Generator().manual_seed(0)
    for case, batch in ((bench.Case("token+head+layer", token=0.3, head=0.67, layer=0.75), 8),
                        (bench.Case("token", token=0.5, spread=0.25), 9)):
        for tokens, heads, layers in bench.exact_decisions(model, case, batch, gen):
            assert tokens[:, 0].all() and tokens.shape == (batch, 197)
            counts = tokens[:, 1:].sum(1)
            if case.spread:
                assert counts.float().mean() == bench.n_keep(0.5, 196) and counts.max() > counts.min()
                assert heads is None and layers is None
            else:
                assert (counts == 59).all()  # ⌈0.3 · 196⌉
                assert (heads.sum(1) == 2).all()
                assert (layers.sum(0) == 6).all()
    with pytest.raises(ValueError, match="spread"):
        bench.exact_decisions(model, bench.Case("token", token=0.9, spread=0.5), 4, gen)
