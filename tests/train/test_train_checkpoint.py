import random

import numpy as np
import pytest
import torch

from laudnet.train import checkpoint as ck
from laudnet.train.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


def make_state(value=1.0):
    model = torch.nn.Linear(3, 2)
    torch.nn.init.constant_(model.weight, value)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3, "config": {"target": 0.5}}


def test_round_trip(tmp_path):
    state = make_state()
    path = save_checkpoint(tmp_path / "sub" / "last.pt", state, model_name="laud_resnet50")
    loaded = load_checkpoint(path, expected_model="laud_resnet50")
    assert loaded["format_version"] == FORMAT_VERSION and loaded["model_name"] == "laud_resnet50"
    assert loaded["epoch"] == 3 and loaded["config"] == {"target": 0.5}
    torch.testing.assert_close(loaded["model"]["weight"], state["model"]["weight"])
    assert loaded["optimizer"]["state"][0]["momentum_buffer"] is not None
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left


def test_model_name_from_state(tmp_path):
    save_checkpoint(tmp_path / "a.pt", {"model_name": "m", "epoch": 0})
    assert load_checkpoint(tmp_path / "a.pt", "m")["epoch"] == 0
    with pytest.raises(ValueError, match="needs the model name"):
        save_checkpoint(tmp_path / "b.pt", {"epoch": 0})


def test_crash_during_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    old = make_state(1.0)
    save_checkpoint(path, old, model_name="m")
    before = path.read_bytes()

    def exploding_save(obj, f, *args, **kwargs):
        f.write(b"partial garbage")  # some bytes reach the temp file, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", exploding_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, make_state(2.0), model_name="m")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    monkeypatch.undo()
    torch.testing.assert_close(load_checkpoint(path)["model"]["weight"], old["model"]["weight"])


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint .*gone.pt does not exist"):
        load_checkpoint(tmp_path / "gone.pt")


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.02])
def test_truncated(tmp_path, keep):
    path = save_checkpoint(tmp_path / "full.pt", make_state(), model_name="m")
    raw = path.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(CheckpointError, match=r"checkpoint .*cut\.pt is (truncated|corrupt)"):
        load_checkpoint(cut)


def test_garbage(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match=r"junk\.pt"):
        load_checkpoint(path)


def test_foreign_state_dict(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"resnet\.pth is not a laudnet checkpoint .*0\.weight"):
        load_checkpoint(path)
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(CheckpointError, match="not a laudnet checkpoint .*a Tensor"):
        load_checkpoint(tmp_path / "tensor.pt")


def test_other_model(tmp_path):
    path = save_checkpoint(tmp_path / "a.pt", {"epoch": 1}, model_name="laud_resnet50")
    with pytest.raises(CheckpointError, match="of model 'laud_resnet50', not the requested 'laud_regnety_400mf'"):
        load_checkpoint(path, expected_model="laud_regnety_400mf")


def test_newer_format(tmp_path):
    path = tmp_path / "future.pt"
    torch.save({"format": ck.FORMAT, "format_version": FORMAT_VERSION + 1, "model_name": "m"}, path)
    with pytest.raises(CheckpointError, match="format version 2"):
        load_checkpoint(path)


def test_rng_state_survives_a_checkpoint(tmp_path):
    state = capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(3))
    save_checkpoint(tmp_path / "rng.pt", {"rng": state}, model_name="m")
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])
