"""Checkpoints rebuild their model with one `create_model(**model_args)` call; older checkpoints without
``model_args`` still load (from the model name, paradigm, granularity, classes and image size)."""

from __future__ import annotations

import pytest
import torch

import laudnet
from laudnet.train.build import build_model
from laudnet.train.checkpoint import load_checkpoint, save_checkpoint
from laudnet.train.cli import checkpoint_model_args, load_trained
from laudnet.train.config import TrainConfig
from laudnet.train.loop import train


def _same_output(a, b, size):
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=0, atol=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fashion_root):
    """A one-epoch spatial run with non-default granularity and the paper's maskers: (config, last.pt)."""
    cfg = TrainConfig(
        model="laud_regnety_400mf", mode="dynamic", paradigm="spatial", granularity=[2, 2, 1, 1], masker_norm=False,
        dataset="fashion-canvas", data_root=str(fashion_root), image_size=32, train_subset=16, val_subset=8,
        batch_size=8, epochs=1, lr=0.05, workers=0, threads=1, progress=False,
        output=str(tmp_path_factory.mktemp("runs")), run_name="args",
    )
    result = train(cfg, log=None)
    return cfg, result.run_dir / "last.pt"


def test_training_stores_model_args_that_rebuild_the_model(trained):
    cfg, path = trained
    state = load_checkpoint(path)
    assert state["model_args"] == {"name": "laud_regnety_400mf", "paradigm": "spatial", "granularity": [2, 2, 1, 1],
                                   "num_classes": 10, "masker_norm": False}
    assert state["model_args"] == build_model(cfg, num_classes=10).model_args
    rebuilt = laudnet.create_model(**state["model_args"])
    rebuilt.load_state_dict(state["model"], strict=True)
    model, _ = load_trained(path)
    assert model.model_args == state["model_args"]
    _same_output(model, rebuilt, 32)


def test_checkpoint_without_model_args_still_loads(trained, tmp_path):
    _, path = trained
    state = load_checkpoint(path)
    old = {k: v for k, v in state.items() if k not in ("model_args", "format", "format_version", "model_name")}
    save_checkpoint(tmp_path / "old.pt", old, model_name=state["model_name"])
    assert checkpoint_model_args(load_checkpoint(tmp_path / "old.pt")) == {
        "name": "laud_regnety_400mf", "paradigm": "spatial", "granularity": [2, 2, 1, 1], "num_classes": 10}
    model, _ = load_trained(tmp_path / "old.pt")  # masker_norm comes from the weights (the maskers adapt on load)
    new, _ = load_trained(path)
    _same_output(model, new, 32)


def test_old_vit_checkpoint_takes_its_image_size_from_the_config(tmp_path):
    pytest.importorskip("timm")
    vit = laudnet.create_model("laud_deit_tiny", paradigm="token", num_classes=3, img_size=32)
    old = {"model": vit.state_dict(), "paradigm": "token", "granularity": None, "num_classes": 3,
           "config": {"image_size": 32}}
    save_checkpoint(tmp_path / "vit.pt", old, model_name="laud_deit_tiny")
    model, _ = load_trained(tmp_path / "vit.pt")
    assert model.img_size == (32, 32) and model.model_args["img_size"] == 32
    _same_output(model, vit, 32)
