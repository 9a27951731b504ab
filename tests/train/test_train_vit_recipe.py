"""The ViT recipe (`configs/vit-canvas.yaml`) and the training pieces it builds on: commands that rebuild a config,
AdamW groups, a dynamic ViT initialised from a static checkpoint. (The benchmark that runs the recipe at several
targets: tests/benchmarks/test_train_vit_targets.py.)"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest
import torch

from laudnet.train.build import build_model, build_optimizer
from laudnet.train.config import TrainConfig, add_train_arguments, config_argv, resolve_config
from laudnet.train.demo import load_recipe

ROOT = Path(__file__).resolve().parents[2]
VIT_CANVAS = ROOT / "laudnet" / "configs" / "vit-canvas.yaml"


def _parse(argv):
    parser = add_train_arguments(argparse.ArgumentParser(prog="laudnet train"))
    return resolve_config(parser.parse_args(argv))


def test_config_argv_rebuilds_the_config():
    static, dynamic = load_recipe(VIT_CANVAS, output="/tmp/x")
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
    static, dynamic = load_recipe(VIT_CANVAS)
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
    # The default: SGD, one decayed group each.
    sgd = build_optimizer(dataclasses.replace(cfg, optimizer="sgd", decay_all=True), model, 0.1)
    assert isinstance(sgd, torch.optim.SGD) and [g["name"] for g in sgd.param_groups] == ["backbone", "masker"]


def test_vit_init_loads_the_head_and_keeps_the_teacher(tmp_path):
    """A dynamic ViT from a static ViT checkpoint takes its classifier (``head``), so it gets the static teacher;
    a 1000-class timm-style state dict loads the backbone and skips the head."""
    from laudnet.train.build import classifier_prefix, load_init, read_init_state
    from laudnet.train.checkpoint import save_checkpoint

    cfg = TrainConfig(model="laud_deit_tiny", paradigm="token+head+layer", image_size=32)
    static = build_model(dataclasses.replace(cfg, mode="static"), num_classes=10)
    path = save_checkpoint(tmp_path / "best.pt", {"model": static.state_dict()}, model_name="laud_deit_tiny")
    state, kind = read_init_state(path, "laud_deit_tiny")
    dynamic = build_model(cfg, num_classes=10)
    assert kind == "laudnet" and classifier_prefix(dynamic) == "head." and load_init(dynamic, state) is True
    torch.testing.assert_close(dynamic.head.weight, static.head.weight)
    torch.testing.assert_close(dynamic.blocks[3].mlp.fc1.weight, static.blocks[3].mlp.fc1.weight)
    imagenet = build_model(dataclasses.replace(cfg, mode="static"), num_classes=1000).state_dict()
    fresh = build_model(cfg, num_classes=10)
    head_before = fresh.head.weight.clone()
    assert load_init(fresh, imagenet) is False
    torch.testing.assert_close(fresh.head.weight, head_before)
    torch.testing.assert_close(fresh.pos_embed, imagenet["pos_embed"])
