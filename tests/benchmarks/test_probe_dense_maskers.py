"""benchmarks/probe_dense_maskers.py: the reduction forms of the maskers decide as the shipped ones, the context
restores the classes, and the whole flow runs on the CPU (`--smoke`)."""

import json

import pytest
import torch
from helpers import load_benchmark, run_benchmark

import laudnet
from laudnet.deploy import deploy_dense_masked
from laudnet.deploy.blocks import ChannelBlock, LayerBlock, SpatialBlock


def _deployed(paradigm: str):
    torch.manual_seed(0)
    model = laudnet.create_model("laud_resnet50", paradigm=paradigm).eval()
    for name, p in model.named_parameters():
        if "masker" in name and p.dim() > 1:
            torch.nn.init.normal_(p, std=0.5)
    return deploy_dense_masked(model, torch.float32)


@pytest.mark.parametrize("paradigm", ["spatial", "channel", "layer"])
def test_reduce_forms_decide_as_the_shipped_maskers(paradigm):
    probe = load_benchmark("probe_dense_maskers")
    deployed = _deployed(paradigm)
    torch.manual_seed(1)
    rates = []
    for block in deployed.blocks():
        x = torch.randn(3, block.conv1.in_channels, 13, 11).relu()  # a non-square map the patches do not divide
        shipped = type(block)._masker(block, x)
        reduced = probe.REDUCE[type(block)](block, x)
        assert reduced.shape == shipped.shape and reduced.dtype == torch.bool
        assert (reduced == shipped).float().mean() > 0.99  # equal but for ties at the threshold (rounding order)
        rates.append(shipped.float().mean())
    assert 0 < sum(rates) / len(rates) < 1  # the random maskers do decide, both ways


def test_maskers_context_restores_the_classes():
    probe = load_benchmark("probe_dense_maskers")
    deployed = _deployed("spatial")
    x = torch.randn(1, 3, 64, 64)
    before = {cls: cls._masker for cls in (SpatialBlock, LayerBlock, ChannelBlock)}
    with pytest.raises(RuntimeError, match="inside"), probe.maskers("fixed", deployed, x):
        assert all(b.forced_keep is not None for b in deployed.blocks())
        raise RuntimeError("inside")
    assert {cls: cls._masker for cls in before} == before
    assert all(b.forced_keep is None for b in deployed.blocks())


def test_smoke_run(tmp_path):
    out = tmp_path / "probe.json"
    done = run_benchmark("probe_dense_maskers", "--smoke", "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    forms = {(r.get("paradigm"), r["form"]): r for r in rows}
    assert ("static" in {r["form"] for r in rows}) and len(rows) == 1 + 3 * 3
    for paradigm in ("spatial", "channel", "layer"):
        fixed = forms[(paradigm, "dense-masked, fixed")]
        assert fixed["decisions_equal"] == 1.0 and fixed["max_abs_diff"] == 0.0
        assert forms[(paradigm, "dense-masked, reduce")]["decisions_equal"] > 0.99
