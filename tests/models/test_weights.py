"""Loading torchvision state dicts: files, wrappers, and every way a state dict can fail to fit."""

import pytest
import torch
import torchvision

import laudnet


@pytest.fixture(scope="module")
def r50_state():
    return torchvision.models.resnet50(num_classes=10).state_dict()


def test_load_from_file_and_ddp_prefix(tmp_path, r50_state):
    path = tmp_path / "r50.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in r50_state.items()}}, path)
    model = laudnet.create_model("laud_resnet50", paradigm="channel", num_classes=10)
    laudnet.load_torchvision_weights(model, path)
    torch.testing.assert_close(model.layer3[2].conv2.weight, r50_state["layer3.2.conv2.weight"])


def test_exclude_head_for_other_classes(r50_state):
    model = laudnet.create_model("laud_resnet50", paradigm="layer", num_classes=3)
    with pytest.raises(ValueError, match=r"shape mismatches: fc.weight: \(10, 2048\) vs model \(3, 2048\)"):
        laudnet.load_torchvision_weights(model, r50_state)
    laudnet.load_torchvision_weights(model, r50_state, exclude_head=True)
    torch.testing.assert_close(model.conv1.weight, r50_state["conv1.weight"])


def test_wrong_architecture(r50_state):
    model = laudnet.create_model("laud_resnet101", num_classes=10)
    with pytest.raises(ValueError, match="missing backbone keys: layer3.6"):
        laudnet.load_torchvision_weights(model, r50_state)
    model = laudnet.create_model("laud_regnety_400mf", num_classes=10)
    with pytest.raises(ValueError, match="unexpected keys"):
        laudnet.load_torchvision_weights(model, r50_state)


def test_missing_and_corrupt_files(tmp_path):
    model = laudnet.create_model("laud_resnet50")
    with pytest.raises(FileNotFoundError, match="weights file not found: .*nope.pth"):
        laudnet.load_torchvision_weights(model, tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="cannot read weights file .*bad.pth"):
        laudnet.load_torchvision_weights(model, bad)
    odd = tmp_path / "odd.pth"
    torch.save({"epoch": 3}, odd)
    with pytest.raises(ValueError, match="does not hold a state dict of tensors"):
        laudnet.load_torchvision_weights(model, odd)
