"""benchmarks/bench_fastest.py end to end on the CPU (`--smoke`): a CNN and a ViT, every paradigm decided."""

import json
import sys

import pytest
from helpers import ROOT, load_benchmark

import laudnet


@pytest.mark.parametrize(("model", "paradigms", "image"), [("laud_resnet50", ["layer", "channel", "spatial"], 64),
                                                         ("laud_deit_tiny", ["token", "head", "layer"], 64)])
def test_smoke_run(tmp_path, monkeypatch, model, paradigms, image):
    if laudnet.model_info(model).is_vit:
        pytest.importorskip("timm")
    out = tmp_path / "fastest.json"
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    bench = load_benchmark("bench_fastest")
    monkeypatch.setattr(sys, "argv", ["bench_fastest.py", "--smoke", "--model", model, "--paradigms", *paradigms,
                                      "--batches", "2", "--image-size", str(image), "--out", str(out)])
    monkeypatch.setattr(bench, "DEV", bench.DEV)  # main switches it to the CPU: restored afterwards
    assert bench.main() == 0
    rows = json.loads(out.read_text())["rows"]
    decided = {r["kind"]: r for r in rows if "form" in r}
    assert set(decided) == set(paradigms)
    for r in decided.values():
        assert r["form"] in ("sparse", "dense-masked") and set(r["times_ms"]) == {"sparse", "dense-masked"}
        assert not r["errors"]
    static_errors = [r["error"] for r in rows if r["kind"] == "static" and "error" in r]
    assert all("CUDA" in e for e in static_errors)  # only the CUDA-graph static forms fail on the CPU
