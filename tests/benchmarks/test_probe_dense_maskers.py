"""benchmarks/probe_dense_maskers.py: the fixed-decisions context imposes the decisions and restores the class, and
the whole flow runs on the CPU (`--smoke`). The masker forms themselves are tested with the package
(tests/deploy/test_deploy_maskers.py)."""

import json

import pytest
import torch
from helpers import load_benchmark, run_benchmark

import laudnet
from laudnet.deploy import deploy_dense_masked
from laudnet.deploy.blocks import DeployedBlock


def test_fixed_decisions_context_imposes_and_restores():
    probe = load_benchmark("probe_dense_maskers")
    torch.manual_seed(0)
    model = laudnet.create_model("laud_resnet50", paradigm="spatial").eval()
    deployed = deploy_dense_masked(model, torch.float32)
    x = torch.randn(1, 3, 64, 64)
    before, expected = DeployedBlock.decide, probe.decisions(deployed, x)
    with pytest.raises(RuntimeError, match="inside"), probe.fixed_decisions(deployed, x):
        imposed = probe.decisions(deployed, torch.zeros_like(x))  # another input, the same decisions
        assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(imposed, expected, strict=True))
        raise RuntimeError("inside")
    assert DeployedBlock.decide is before
    assert all(b.forced_keep is None for b in deployed.blocks())


def test_smoke_run(tmp_path):
    out = tmp_path / "probe.json"
    done = run_benchmark("probe_dense_maskers", "--smoke", "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    forms = {(r.get("paradigm"), r["form"]): r for r in rows}
    assert ("static" in {r["form"] for r in rows}) and len(rows) == 1 + 3 * 3
    for paradigm in ("spatial", "channel", "layer"):
        assert forms[(paradigm, "dense-masked, torch")]["decisions_equal"] == 1.0
        fixed = forms[(paradigm, "dense-masked, fixed")]
        assert fixed["decisions_equal"] > 0.99 and fixed["max_abs_diff"] < 1e-3
        assert forms[(paradigm, "dense-masked, reduce")]["decisions_equal"] > 0.99
