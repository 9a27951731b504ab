"""`benchmarks/train_vit_targets.py`: the plan, its time fit, the runner's queueing, bad input, and the whole pipeline
in its CPU smoke mode. (The ViT recipe and the training pieces it builds on: tests/train/test_train_vit_recipe.py.)"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import shlex
import sys
import time
from pathlib import Path

import matplotlib.image
import pytest
import yaml
from helpers import write_fashion_mnist

from laudnet.train.config import add_train_arguments, resolve_config
from laudnet.train.demo import load_recipe

ROOT = Path(__file__).resolve().parents[2]
VIT_CANVAS = ROOT / "laudnet" / "configs" / "vit-canvas.yaml"


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory):
    """The four Fashion-MNIST files: 200 train and 100 test generated items (as tests/train/conftest.py makes)."""
    return write_fashion_mnist(tmp_path_factory.mktemp("fashion"), train=200, test=100)


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_vit_targets", ROOT / "benchmarks" / "train_vit_targets.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module's annotations through sys.modules
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def _parse(argv):
    parser = add_train_arguments(argparse.ArgumentParser(prog="laudnet train"))
    return resolve_config(parser.parse_args(argv))


# ------------------------------------------------------------------------------------------------------- the plan


def test_run_specs(bench):
    assert bench.parse_run_spec("head+token@0.3") == ("token+head", 0.3)
    for bad, message in (("token", "PARADIGM@TARGET"), ("token@x", "not a number"), ("token@1.5", r"\(0, 1\]"),
                         ("spatial@0.5", "unknown ViT paradigm"), ("static@0.5", "not 'static'")):
        with pytest.raises(ValueError, match=message):
            bench.parse_run_spec(bad)


def test_plan_and_schedule(bench):
    static, dynamic = load_recipe(VIT_CANVAS, output="/runs")
    jobs = bench.plan_jobs(static, dynamic, ["token+head+layer@0.3", "token@0.5"], "token+head+layer@0.5")
    assert [j.name for j in jobs] == ["static", "dynamic-token-head-layer-t0.3", "dynamic-token-t0.5",
                                      "scratch-token-head-layer-t0.5"]
    assert [j.needs_static for j in jobs] == [False, True, True, False]
    assert all(j.cfg.init == "/runs/static/best.pt" for j in jobs[1:3]) and jobs[3].cfg.init is None
    assert jobs[1].cfg.run_name == jobs[1].name and jobs[1].cfg.target == 0.3 and jobs[2].cfg.paradigm == "token"
    scratch = jobs[3].cfg  # the static run's length and lr, the dynamic section's masker settings
    assert (scratch.mode, scratch.epochs, scratch.lr) == ("dynamic", static.epochs, static.lr)
    assert scratch.masker_lr_mult == dynamic.masker_lr_mult
    with pytest.raises(ValueError, match="repeat"):
        bench.plan_jobs(static, dynamic, ["token@0.5", "token@0.5"], None)

    half = bench.scaled(static, 0.5)
    assert half.train_subset % static.batch_size == 0 and abs(half.train_subset - static.train_subset / 2) < 256
    assert bench.scaled(static, 1e-9).train_subset == static.batch_size  # at least one batch

    # Two slots: the scratch run (last in the list) beside the static one, the dynamic runs after the static one.
    needs = [False, True, True, True, False]
    sched = bench.predict_schedule([10.0, 5.0, 5.0, 5.0, 4.0], needs, 2)
    assert sched == [(0, 0.0, 10.0), (0, 10.0, 15.0), (1, 10.0, 15.0), (0, 15.0, 20.0), (1, 0.0, 4.0)]
    # One slot: the scratch run waits for the others.
    assert bench.predict_schedule([10.0, 5.0, 4.0], [False, True, False], 1) == [
        (0, 0.0, 10.0), (0, 10.0, 15.0), (0, 15.0, 19.0)]

    rates = bench.Rates(static=1000.0, dynamic=1000.0, startup_s=10.0)
    factor, total = bench.fit_scale(jobs, rates, 2, 500.0, 1000, 5.0)
    assert bench.SCALE_RANGE[0] < factor < bench.SCALE_RANGE[1] and 490.0 < total <= 500.0  # lengths in batches
    slower, _ = bench.fit_scale(jobs, dataclasses.replace(rates, static=500.0), 2, 500.0, 1000, 5.0)
    assert slower < factor
    assert bench.fit_scale(jobs, rates, 2, 1.0, 1000, 5.0)[0] == bench.SCALE_RANGE[0]


_FAKE_TRAIN = """
import pathlib, signal, sys, time
run, seconds, rc = pathlib.Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
def stop(*_):  # as laudnet train does on SIGTERM: save last.pt, exit 143
    (run / "last.pt").write_text("x")
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
run.mkdir(parents=True, exist_ok=True)
time.sleep(seconds)
if rc == 0:
    (run / "last.pt").write_text("x")
sys.exit(rc)
"""


def _fake_plan(bench, tmp_path, monkeypatch, seconds: dict[str, float], rcs: dict[str, int]):
    """The plan's jobs with `laudnet train`/`eval` replaced by tiny scripts that sleep and exit as told."""
    monkeypatch.setattr(bench, "train_argv", lambda job: [
        sys.executable, "-c", _FAKE_TRAIN, str(job.run_dir), str(seconds.get(job.kind, 0.3)),
        str(rcs.get(job.kind, 0))])
    monkeypatch.setattr(bench, "eval_argv", lambda job, extra: [
        sys.executable, "-c", "import sys; open(sys.argv[1], 'w').write('{}')", str(job.run_dir / "eval.json")])
    static, dynamic = load_recipe(VIT_CANVAS, output=str(tmp_path / "runs"))
    jobs = bench.plan_jobs(static, dynamic, ["token@0.3", "token@0.5", "token@0.7", "head@0.5"], "token@0.5")
    runner = bench.Runner(["cpu0", "cpu1"], tmp_path / "logs", lambda msg: None, None, [])
    return jobs, runner


def test_runner_schedule(bench, tmp_path, monkeypatch):
    """Two slots, six jobs: the static and the scratch run first, the four dynamic ones after the static run, never
    more than one training per slot, each training followed by its evaluation."""
    jobs, runner = _fake_plan(bench, tmp_path, monkeypatch, {"static": 0.6, "scratch": 0.3, "dynamic": 0.3}, {})
    bench.run_plan(jobs, runner, lambda: None)
    assert [j.result["status"] for j in jobs] == ["ok"] * 6
    trains = [p for p in runner.procs if p.what == "train"]
    assert [p.job.name for p in trains[:2]] == ["static", "scratch-token-t0.5"]
    static_end = trains[0].start + jobs[0].result["train_wall_s"]
    assert all(p.start >= static_end - 0.05 for p in trains if p.job.kind == "dynamic")
    for slot in ("cpu0", "cpu1"):
        spans = sorted((p.start, p.start + p.job.result["train_wall_s"]) for p in trains if p.slot == slot)
        assert all(a[1] <= b[0] + 0.05 for a, b in zip(spans, spans[1:], strict=False))
    assert len([p for p in runner.procs if p.what == "eval"]) == 6


def test_runner_static_failure_and_deadline(bench, tmp_path, monkeypatch):
    jobs, runner = _fake_plan(bench, tmp_path / "a", monkeypatch, {}, {"static": 1})
    bench.run_plan(jobs, runner, lambda: None)
    assert jobs[0].result["status"] == "training failed (exit 1)" and jobs[-1].result["status"] == "ok"
    assert all(j.result["status"] == "skipped: the static run failed" for j in jobs[1:-1])
    # At the deadline, the running trainings get SIGTERM, save last.pt and are evaluated; the rest never start.
    jobs, runner = _fake_plan(bench, tmp_path / "b", monkeypatch, {"static": 30.0, "scratch": 30.0}, {})
    runner.deadline = time.monotonic() + 1.5
    bench.run_plan(jobs, runner, lambda: None)
    assert jobs[0].result["status"] == "interrupted" and jobs[0].result["train_returncode"] == 143
    assert jobs[-1].result["status"] == "interrupted" and jobs[0].result["train_wall_s"] < 10
    assert all(j.result["status"].startswith("skipped: deadline") for j in jobs[1:-1])


def test_bad_input(bench, tmp_path, capsys):
    assert bench.main(["--data-root", str(tmp_path / "nothing"), "--out", str(tmp_path / "o"), "--smoke"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert bench.main(["--data-root", str(tmp_path), "--out", str(tmp_path / "o"), "--smoke"]) == 2
    assert "train-images-idx3-ubyte[.gz] not found" in capsys.readouterr().err


def test_bad_model_fails_before_any_run(bench, tmp_path, fashion_root, capsys):
    out = tmp_path / "o"
    argv = ["--data-root", str(fashion_root), "--out", str(out), "--smoke", "--model", "laud_deit_huge"]
    assert bench.main(argv) == 2
    assert "unknown model 'laud_deit_huge'" in capsys.readouterr().err and not (out / "train_vit_targets.json").exists()
    assert bench.main([*argv[:-2], "--runs", "token@2"]) == 2
    assert "target must be in (0, 1]" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ the smoke mode


@pytest.mark.slow  # ~40 s on 2 idle cores: 8 processes, each importing torch and timm
def test_smoke_pipeline(bench, tmp_path, fashion_root):
    """Probe, time fit, the static run, two dynamic runs from it side by side on two CPU slots, evaluations, and the
    outputs; every recorded command rebuilds the config its run wrote. (`test_runner_*` cover the queueing.)"""
    out = tmp_path / "out"
    argv = ["--smoke", "--data-root", str(fashion_root), "--out", str(out), "--runs-dir", str(tmp_path / "runs"),
            "--no-scratch", "--runs", "token+head+layer@0.3", "token@0.5",
            "--commit", "abc123"]
    assert bench.main(argv) == 0
    report = json.loads((out / "train_vit_targets.json").read_text())
    meta, plan, runs = report["meta"], report["plan"], report["runs"]
    assert meta["commit"] == "abc123" and meta["smoke"] and meta["model"] == "laud_deit_tiny"
    assert plan["rates"]["static_images_per_s"] > 0 and plan["rates"]["startup_s"] > 0
    assert bench.SCALE_RANGE[0] <= plan["scale"] <= bench.SCALE_RANGE[1]
    assert [r["name"] for r in runs] == ["static", "dynamic-token-head-layer-t0.3", "dynamic-token-t0.5"]
    for r in runs:
        assert r["status"] == "ok", r
        assert 0 <= r["eval"]["top1"] <= 100 and r["eval"]["num_samples"] == 16 and r["train_wall_s"] > 0
        if r["kind"] == "static":
            assert r["eval"]["flops_ratio"] == pytest.approx(1.0)
        else:
            assert 0 < r["eval"]["flops_ratio"] < 1.1
        # The recorded command rebuilds exactly the config the run wrote.
        argv = shlex.split(r["train_command"])
        assert argv[0] == "CUDA_VISIBLE_DEVICES=" and argv[2:5] == ["-m", "laudnet", "train"]
        written = yaml.safe_load((Path(meta["runs_dir"]) / r["name"] / "args.yaml").read_text())
        assert dataclasses.asdict(_parse(argv[5:])) == written
    assert runs[1]["init"] == str(Path(meta["runs_dir"]) / "static" / "best.pt")
    for r in runs[1:]:  # initialised from the static network, classifier included, which is also the teacher
        log = Path(r["train_log"]).read_text()
        assert "init from laudnet weights" in log and "re-initialised" not in log and "no distillation" not in log
        assert float(yaml.safe_load((Path(meta["runs_dir"]) / r["name"] / "args.yaml").read_text())["kd_alpha"]) > 0
    assert {r["slot"] for r in runs} == {"cpu0", "cpu1"}
    table = (out / "train_vit_targets.md").read_text()
    assert "| token+head+layer t=0.3 | static (teacher) |" in table and "laudnet eval" in table
    assert matplotlib.image.imread(out / "train_vit_targets.png").shape[0] > 100
    assert "done in" in (out / "train_vit_targets.log").read_text()
