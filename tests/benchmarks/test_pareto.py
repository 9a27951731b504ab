"""benchmarks/pareto.py: the whole flow on the CPU (`--smoke`, in a subprocess), its bad-input errors, and the pieces
the GPU run relies on (the folded torchvision network, the MAC counter, the frontier interpolation)."""

import json
import math

import pytest
import torch
import torchvision
from helpers import ROOT, load_benchmark, randomize_batchnorm, run_benchmark

import laudnet


@pytest.mark.slow
def test_smoke_run_writes_every_family(fashion_root, tmp_path):
    pytest.importorskip("torch_pruning")
    out = tmp_path / "pareto"
    smoke = ("--smoke", "--data-root", fashion_root, "--out", out, "--commit", "test", "--no-progress")
    done = run_benchmark("pareto", *smoke)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((out / "pareto.json").read_text())
    assert data["complete"]
    points = data["points"]
    assert {p["family"] for p in points} == {"static", "laud", "pruned"}
    assert {p["paradigm"] for p in points if p["family"] == "laud"} == {"spatial", "channel", "layer"}
    batches = data["meta"]["batches"]
    for p in points:
        values = [p["top1"], p["flops_mmacs"], p["flops_ratio"]] + [p[f"latency_b{b}_ms"] for b in batches]
        assert all(isinstance(v, float) and math.isfinite(v) for v in values), p
        assert p["device"] == "cpu" and p["commit"] == "test"
        if p["family"] == "laud":
            assert {p[f"form_b{b}"] for b in batches} <= {"sparse", "dense-masked"}
            assert all(set(p["forms_ms"][str(b)]) == {"sparse", "dense-masked"} for b in batches)
            assert all(p["agreement"][str(b)] == 1.0 for b in batches)  # fp32 on the CPU: the same function
    pruned = next(p for p in points if p["family"] == "pruned")
    assert abs(pruned["pruned"]["tp_flops_ratio"] - pruned["target"]) < 0.1
    assert {g["name"] for g in data["gains"]} == {p["name"] for p in points if p["family"] == "laud"}
    for name in ("pareto_latency.png", "pareto_flops.png", "pareto.md"):
        assert (out / name).stat().st_size > 0
    # a second call finds every unit done and only rewrites the report
    again = run_benchmark("pareto", *smoke)
    assert again.returncode == 0 and "== " not in again.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--prune-targets", "1.5"], "pruning ratio"),
    (["--prune-targets", "0"], "pruning ratio"),
    (["--targets", "0.5", "1.0"], "LAUD FLOPs target"),
    (["--data-root", "/nonexistent/fashion"], "data root /nonexistent/fashion does not exist"),
])
def test_bad_input_is_one_line_with_status_2(fashion_root, tmp_path, args, message):
    cmd = ["--smoke", "--data-root", fashion_root, "--out", tmp_path / "o", *args]
    done = run_benchmark("pareto", *cmd, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pareto.py: error:") and message in lines[0], done.stderr
    assert not (tmp_path / "o").exists()


def test_empty_data_root_is_an_input_error(tmp_path):
    (tmp_path / "empty").mkdir()
    done = run_benchmark("pareto", "--smoke", "--data-root", tmp_path / "empty", "--out", tmp_path / "o", timeout=120)
    assert done.returncode == 2 and "train-images-idx3-ubyte" in done.stderr


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_folded_torchvision_is_the_eval_network(arch, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    pareto = load_benchmark("pareto")
    torch.manual_seed(0)
    model = randomize_batchnorm(getattr(torchvision.models, arch)(num_classes=10)).eval()
    folded = pareto.FoldedTorchvision(model, torch.float32, stem_kernel=False)
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())


def test_mac_count_is_laudnets(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    pareto = load_benchmark("pareto")
    for name, arch in (("laud_resnet50", "resnet50"), ("laud_resnet101", "resnet101")):
        laud = laudnet.create_model(name, paradigm="static", num_classes=10)
        assert pareto.count_macs(getattr(torchvision.models, arch)(num_classes=10), 128) == \
            laud.dense_flops((128, 128))


def test_frontier_interpolation(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    pareto = load_benchmark("pareto")
    curve = [(1.0, 80.0), (2.0, 85.0), (1.5, 79.0), (4.0, 90.0)]  # (1.5, 79) is dominated
    assert pareto.frontier_at(curve, 0.5) is None
    assert pareto.frontier_at(curve, 1.5) == pytest.approx(82.5)
    assert pareto.frontier_at(curve, 3.0) == pytest.approx(87.5)
    assert pareto.frontier_at(curve, 9.0) == 90.0
