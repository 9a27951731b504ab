"""`benchmarks/train_vit_targets.py` and what it builds on: the ViT recipe, AdamW groups, commands that rebuild a
config, the plan, its time fit, and the whole pipeline in its CPU smoke mode."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import shlex
import sys
from pathlib import Path

import matplotlib.image
import pytest
import torch
import yaml

from laudnet.train.config import TrainConfig, add_train_arguments, config_argv, resolve_config
from laudnet.train.demo import load_demo_config
from laudnet.train.loop import build_model, build_optimizer

ROOT = Path(__file__).resolve().parents[2]
VIT_CANVAS = ROOT / "laudnet" / "configs" / "vit-canvas.yaml"


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


# ------------------------------------------------------------------------------------------------- config pieces


def test_config_argv_rebuilds_the_config():
    static, dynamic = load_demo_config(VIT_CANVAS, output="/tmp/x")
    cases = [TrainConfig(), static, dynamic,
             TrainConfig(granularity=[4, 4, 2, 1], amp=False, lr=0.3, min_lr=1e-7, init="w.pth", target=0.25)]
    for cfg in cases:
        assert _parse(config_argv(cfg)) == cfg
    assert config_argv(TrainConfig()) == []
    argv = config_argv(dynamic)
    assert argv[argv.index("--paradigm") + 1] == "token+head+layer" and "--no-decay-all" in argv
    with pytest.raises(ValueError, match="device is None but defaults to 'auto'"):
        config_argv(TrainConfig(device=None))


def test_vit_canvas_recipe():
    static, dynamic = load_demo_config(VIT_CANVAS)
    assert (static.mode, dynamic.mode) == ("static", "dynamic")
    assert static.model == dynamic.model == "laud_deit_small" and static.image_size % 16 == 0
    assert static.optimizer == dynamic.optimizer == "adamw" and not static.decay_all
    assert dynamic.paradigm == "token+head+layer" and dynamic.masker_lr_mult > 1
    assert static.train_subset and dynamic.train_subset and static.workers == 14


def test_adamw_groups_exempt_biases_norms_and_embeddings():
    cfg = TrainConfig(model="laud_deit_tiny", paradigm="token+head+layer", image_size=32, optimizer="adamw",
                      decay_all=False, weight_decay=0.05, masker_lr_mult=10.0)
    model = build_model(cfg, num_classes=10)
    opt = build_optimizer(cfg, model, 1e-3)
    assert isinstance(opt, torch.optim.AdamW)
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"backbone", "backbone_no_decay", "masker", "masker_no_decay"}
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    named = dict(model.named_parameters())
    for name in ("pos_embed", "cls_token", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias", "head.bias"):
        assert id(named[name]) in ids["backbone_no_decay"], name
    assert id(named["blocks.0.attn.qkv.weight"]) in ids["backbone"]
    assert id(named["blocks.0.token_masker.fc.bias"]) in ids["masker_no_decay"]
    assert id(named["blocks.0.token_masker.fc.weight"]) in ids["masker"]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(named)
    assert groups["backbone"]["weight_decay"] == 0.05 and groups["backbone_no_decay"]["weight_decay"] == 0.0
    assert groups["masker"]["lr"] == pytest.approx(1e-2) and groups["masker_no_decay"]["lr"] == pytest.approx(1e-2)
    # The spec's default: SGD, one decayed group each.
    sgd = build_optimizer(dataclasses.replace(cfg, optimizer="sgd", decay_all=True), model, 0.1)
    assert isinstance(sgd, torch.optim.SGD) and [g["name"] for g in sgd.param_groups] == ["backbone", "masker"]


# ------------------------------------------------------------------------------------------------------- the plan


def test_run_specs(bench):
    assert bench.parse_run_spec("head+token@0.3") == ("token+head", 0.3)
    for bad, message in (("token", "PARADIGM@TARGET"), ("token@x", "not a number"), ("token@1.5", r"\(0, 1\]"),
                         ("spatial@0.5", "unknown ViT paradigm"), ("static@0.5", "not 'static'")):
        with pytest.raises(ValueError, match=message):
            bench.parse_run_spec(bad)


def test_plan_and_schedule(bench):
    static, dynamic = load_demo_config(VIT_CANVAS, output="/runs")
    jobs = bench.plan_jobs(static, dynamic, ["token+head+layer@0.3", "token@0.5"], "token+head+layer@0.5")
    assert [j.name for j in jobs] == ["static", "scratch-token-head-layer-t0.5", "dynamic-token-head-layer-t0.3",
                                      "dynamic-token-t0.5"]
    assert [j.needs_static for j in jobs] == [False, False, True, True]
    assert all(j.cfg.init == "/runs/static/best.pt" for j in jobs[2:]) and jobs[1].cfg.init is None
    assert jobs[2].cfg.run_name == jobs[2].name and jobs[2].cfg.target == 0.3 and jobs[3].cfg.paradigm == "token"
    scratch = jobs[1].cfg  # the static run's length and lr, the dynamic section's masker settings
    assert (scratch.mode, scratch.epochs, scratch.lr) == ("dynamic", static.epochs, static.lr)
    assert scratch.masker_lr_mult == dynamic.masker_lr_mult
    with pytest.raises(ValueError, match="repeat"):
        bench.plan_jobs(static, dynamic, ["token@0.5", "token@0.5"], None)

    half = bench.scaled(static, 0.5)
    assert half.train_subset % static.batch_size == 0 and abs(half.train_subset - static.train_subset / 2) < 256
    assert bench.scaled(static, 1e-9).train_subset == static.batch_size  # at least one batch

    # Two slots: the static and the scratch run side by side, the dynamic runs after the static one.
    sched = bench.predict_schedule([10.0, 4.0, 5.0, 5.0], [False, False, True, True], 2)
    assert sched == [(0, 0.0, 10.0), (1, 0.0, 4.0), (1, 10.0, 15.0), (0, 10.0, 15.0)]

    rates = bench.Rates(static=1000.0, dynamic=1000.0, startup_s=10.0)
    factor, total = bench.fit_scale(jobs, rates, 2, 500.0, 1000, 5.0)
    assert bench.SCALE_RANGE[0] < factor < bench.SCALE_RANGE[1] and 490.0 < total <= 500.0  # lengths in batches
    slower, _ = bench.fit_scale(jobs, dataclasses.replace(rates, static=500.0), 2, 500.0, 1000, 5.0)
    assert slower < factor
    assert bench.fit_scale(jobs, rates, 2, 1.0, 1000, 5.0)[0] == bench.SCALE_RANGE[0]


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


@pytest.mark.slow  # ~40 s on 2 idle cores: 10 processes, each importing torch and timm
def test_smoke_pipeline(bench, tmp_path, fashion_root):
    """Probe, time fit, static run, three dynamic runs on two CPU slots (one waits for a free slot), evaluations,
    and the outputs; every recorded command rebuilds the config its run wrote."""
    out = tmp_path / "out"
    argv = ["--smoke", "--data-root", str(fashion_root), "--out", str(out), "--runs-dir", str(tmp_path / "runs"),
            "--no-scratch", "--runs", "token+head+layer@0.3", "token+head+layer@0.6", "token@0.5",
            "--commit", "abc123"]
    assert bench.main(argv) == 0
    report = json.loads((out / "train_vit_targets.json").read_text())
    meta, plan, runs = report["meta"], report["plan"], report["runs"]
    assert meta["commit"] == "abc123" and meta["smoke"] and meta["model"] == "laud_deit_tiny"
    assert plan["rates"]["static_images_per_s"] > 0 and plan["rates"]["startup_s"] > 0
    assert bench.SCALE_RANGE[0] <= plan["scale"] <= bench.SCALE_RANGE[1]
    assert [r["name"] for r in runs] == ["static", "dynamic-token-head-layer-t0.3", "dynamic-token-head-layer-t0.6",
                                         "dynamic-token-t0.5"]
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
    assert {r["slot"] for r in runs} == {"cpu0", "cpu1"}
    table = (out / "train_vit_targets.md").read_text()
    assert "| token+head+layer t=0.3 | static (teacher) |" in table and "laudnet eval" in table
    assert matplotlib.image.imread(out / "train_vit_targets.png").shape[0] > 100
    assert "done in" in (out / "train_vit_targets.log").read_text()
