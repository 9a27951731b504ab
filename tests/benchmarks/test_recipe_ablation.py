"""benchmarks/recipe_ablation.py: the sweep on the CPU (`--smoke`, in a subprocess), its resumption and its errors."""

import json

import pytest
from helpers import load_benchmark, run_benchmark


@pytest.mark.slow
def test_smoke_sweep_records_each_variant_and_resumes(fashion_root, tmp_path):
    out = tmp_path / "abl"
    args = ("--smoke", "--data-root", fashion_root, "--out", out, "--jobs", "2", "--only", "spatial/paper",
            "layer/norm+anneal")
    done = run_benchmark("recipe_ablation", *args)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((out / "recipe_ablation.json").read_text())
    runs = {r["variant"]: r for r in data["runs"]}
    assert set(runs) == {"spatial/paper", "layer/norm+anneal"}
    assert runs["spatial/paper"]["overrides"]["masker_norm"] is False
    assert runs["layer/norm+anneal"]["overrides"]["noise_schedule"] == "linear"
    # the runs were built as asked: the paper's masker has no input normalisation, the other one has
    args_yaml = (out / "spatial-paper-s0" / "args.yaml").read_text()
    assert "masker_norm: false" in args_yaml and "paradigm: spatial" in args_yaml
    assert "masker_norm: true" in (out / "layer-norm_anneal-s0" / "args.yaml").read_text()
    for r in data["runs"]:
        assert 0 <= r["top1"] <= 100 and 0 < r["flops_ratio"] < 1.2
    assert set(runs["spatial/paper"]["lift"]) == {"s1", "s2", "s3", "s4"}  # one lift (or None) per stage
    assert runs["layer/norm+anneal"]["lift"] == {} and runs["layer/norm+anneal"]["adaptive_fraction"] is not None
    assert "| spatial/paper | 1 |" in done.stdout
    assert len(runs["spatial/paper"]["val_history"]) == 1  # one validated epoch
    # a finished sweep is not trained again
    mtime = (out / "spatial-paper-s0" / "last.pt").stat().st_mtime
    again = run_benchmark("recipe_ablation", *args)
    assert again.returncode == 0 and (out / "spatial-paper-s0" / "last.pt").stat().st_mtime == mtime
    # another invocation over the same folder adds its runs to the JSON
    more = run_benchmark("recipe_ablation", *args[:-2], "spatial/paper", "--seeds", "1")
    assert more.returncode == 0, more.stderr[-2000:]
    runs = json.loads((out / "recipe_ablation.json").read_text())["runs"]
    assert sorted((r["variant"], r["seed"]) for r in runs) == [
        ("layer/norm+anneal", 0), ("spatial/paper", 0), ("spatial/paper", 1)]


def test_unknown_variant_and_report(tmp_path, capsys):
    done = run_benchmark("recipe_ablation", "--only", "spatial/magic", "--out", tmp_path)
    assert done.returncode == 2 and "unknown variant" in done.stderr.splitlines()[-1]
    module = load_benchmark("recipe_ablation")
    payload = {"static_top1": 70.0, "runs": [
        {"variant": "v", "top1": 60.0, "flops_ratio": 0.5, "adaptive_fraction": 0.5, "lift": {"2": 3.0}},
        {"variant": "v", "top1": 62.0, "flops_ratio": 0.6, "adaptive_fraction": None, "lift": {"2": None}},
    ]}
    table = module.report(payload)
    # means over seeds, missing values skipped; no seeds recorded: nothing to pair
    assert "| v | 2 | 61.00 | 60.0-62.0 | (reference) | 0.55 | 0.50 | 3.00 |" in table
    payload["runs"] = [{"variant": v, "seed": seed, "top1": top1, "flops_ratio": 0.5, "adaptive_fraction": 0.5,
                        "lift": {}} for v, seed, top1 in (("a", 0, 60.0), ("a", 1, 70.0), ("b", 1, 71.5),
                                                          ("b", 2, 90.0), ("c", 5, 1.0))]
    table = module.report(payload)
    assert "| a | 2 | 65.00 | 60.0-70.0 | (reference) |" in table
    assert "| b | 2 | 80.75 | 71.5-90.0 | +1.50 (1) |" in table  # paired on seed 1 only
    assert "| c | 1 | 1.00 | – | – |" in table
    table = module.report(payload, reference="b")  # the reference row first, the others paired with it
    assert table.splitlines()[4].startswith("| b | 2 |") and "| a | 2 | 65.00 | 60.0-70.0 | -1.50 (1) |" in table
    payload["runs"][0]["variant"] = "demo"  # the demo's recipe is the default reference
    assert "| demo | 1 | 60.00 | – | (reference) |" in module.report(payload)
    with pytest.raises(SystemExit, match="no run of the reference variant 'x'"):
        module.report(payload, reference="x")


def test_variants_file(tmp_path):
    module = load_benchmark("recipe_ablation")
    path = tmp_path / "v.yaml"
    path.write_text("demo: {paradigm: spatial}\nslow: {paradigm: layer, lr: 0.01}\nplain: {t_last: 1.0}\n")
    assert module.load_variants(path) == {"demo": ("spatial", {}), "slow": ("layer", {"lr": 0.01}),
                                          "plain": ("spatial", {"t_last": 1.0})}
    path.write_text("- a\n- b\n")
    done = run_benchmark("recipe_ablation", "--variants", path, "--out", tmp_path / "o")
    assert done.returncode == 2 and "cannot read --variants" in done.stderr.splitlines()[-1]
    shipped = module.load_variants(module.REPO / "benchmarks" / "configs" / "demo-gap-variants.yaml")
    assert shipped["demo"] == ("spatial", {}) and all(p == "spatial" for p, _ in shipped.values())


def test_report_of_several_sweeps(tmp_path):
    first = {"static_top1": 70.0, "runs": [
        {"variant": "v", "seed": 0, "top1": 60.0, "flops_ratio": 0.5, "adaptive_fraction": 0.5, "lift": {}}]}
    second = {"static_top1": 70.0, "runs": [
        {"variant": "v", "seed": 1, "top1": 64.0, "flops_ratio": 0.5, "adaptive_fraction": 0.5, "lift": {}},
        {"variant": "v", "seed": 0, "top1": 0.0, "flops_ratio": 0.5, "adaptive_fraction": 0.5, "lift": {}}]}
    paths = []
    for i, payload in enumerate((first, second)):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(payload))
    done = run_benchmark("recipe_ablation", "--report", *paths)
    assert done.returncode == 0 and "| v | 2 | 62.00 | 60.0-64.0 |" in done.stdout  # seed 0 from the first file only
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**first, "static_top1": 69.0}))
    done = run_benchmark("recipe_ablation", "--report", paths[0], other)
    assert done.returncode != 0 and "different static networks" in done.stderr


def test_oversubscribed_cpu_jobs_are_warned():
    module = load_benchmark("recipe_ablation")
    warning = module.oversubscription(2, 2, 2)  # the demo's 2 threads, two runs at once, two cores
    assert warning.startswith("recipe_ablation.py: warning: 2 jobs x 2 threads on 2 cores") and "--jobs 1" in warning
    assert module.oversubscription(1, 2, 2) is None and module.oversubscription(4, 1, 8) is None
    assert module.oversubscription(3, None, 2) is None  # threads left to torch
