"""Initialisation of a run from torchvision weights or a laudnet checkpoint, and the optimiser's groups."""

from __future__ import annotations

import pytest
import torch
import torchvision

from laudnet.train.build import build_model, build_optimizer, load_init, read_init_state
from laudnet.train.checkpoint import CheckpointError, save_checkpoint
from laudnet.train.config import TrainConfig


def _cfg(**kw):
    return TrainConfig(**{"model": "laud_regnety_400mf", "mode": "dynamic", "paradigm": "spatial", **kw})


def test_torchvision_file_with_other_classes(tmp_path):
    tv = torchvision.models.regnet_y_400mf(num_classes=1000)
    path = tmp_path / "regnet.pth"
    torch.save(tv.state_dict(), path)
    state, kind = read_init_state(path, "laud_regnety_400mf")
    assert kind == "torchvision"
    model = build_model(_cfg(), num_classes=10)
    assert load_init(model, state) is False  # 1000-class head skipped, backbone loaded
    torch.testing.assert_close(model.stem[0].weight, tv.stem[0].weight)
    same = build_model(_cfg(), num_classes=1000)
    assert load_init(same, state) is True
    torch.testing.assert_close(same.fc.weight, tv.fc.weight)


def test_laudnet_checkpoint_init(tmp_path):
    static = build_model(_cfg(mode="static"), num_classes=10)
    path = save_checkpoint(tmp_path / "best.pt", {"model": static.state_dict()}, model_name="laud_regnety_400mf")
    state, kind = read_init_state(path, "laud_regnety_400mf")
    assert kind == "laudnet"
    dynamic = build_model(_cfg(), num_classes=10)
    assert load_init(dynamic, state) is True
    torch.testing.assert_close(dynamic.fc.weight, static.fc.weight)
    with pytest.raises(CheckpointError, match="is of model 'laud_regnety_400mf', not the requested 'laud_resnet50'"):
        read_init_state(path, "laud_resnet50")


def test_masker_lr_group():
    model = build_model(_cfg(masker_lr_mult=5.0), num_classes=10)
    opt = build_optimizer(_cfg(masker_lr_mult=5.0), model, 0.02)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["backbone"]["lr"] == 0.02 and groups["masker"]["lr"] == pytest.approx(0.1)
    assert len(groups["masker"]["params"]) == len(model.masker_parameters()) > 0
    assert opt.defaults["nesterov"] and groups["masker"]["weight_decay"] == 5e-5
