import csv
import importlib.util

import pytest
import torch

from laudnet.train.metrics import MetricsLogger


def rows(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_header_and_append(tmp_path):
    log = MetricsLogger(tmp_path)
    log.log(0, {"loss": 1.5, "top1": torch.tensor(0.25), "temperature": 5.0})
    log.log(1, {"loss": 1.0, "top1": 0.5, "temperature": 2.0})
    text = (tmp_path / "metrics.csv").read_text().splitlines()
    assert text[0] == "epoch,loss,top1,temperature" and len(text) == 3
    assert rows(tmp_path / "metrics.csv")[1] == {"epoch": "1", "loss": "1.0", "top1": "0.5", "temperature": "2.0"}


def test_resume_does_not_duplicate(tmp_path):
    log = MetricsLogger(tmp_path)
    for epoch in range(4):
        log.log(epoch, {"loss": float(epoch)})
    # The run is resumed from the checkpoint after epoch 1: epochs 2 and 3 are run again.
    resumed = MetricsLogger(tmp_path)
    resumed.log(2, {"loss": 20.0})
    assert [(r["epoch"], r["loss"]) for r in rows(tmp_path / "metrics.csv")] == [
        ("0", "0.0"),
        ("1", "1.0"),
        ("2", "20.0"),
    ]
    resumed.log(3, {"loss": 30.0})
    assert [r["epoch"] for r in rows(tmp_path / "metrics.csv")] == ["0", "1", "2", "3"]


def test_new_column_rewrites_header(tmp_path):
    log = MetricsLogger(tmp_path)
    log.log(0, {"loss": 1.0})
    log.log(1, {"loss": 0.5, "val_top1": 0.7})
    assert rows(tmp_path / "metrics.csv") == [
        {"epoch": "0", "loss": "1.0", "val_top1": ""},
        {"epoch": "1", "loss": "0.5", "val_top1": "0.7"},
    ]


def test_disabled_on_other_ranks(tmp_path):
    MetricsLogger(tmp_path / "run", enabled=False).log(0, {"loss": 1.0})
    assert not (tmp_path / "run").exists()


def test_bad_tensor(tmp_path):
    with pytest.raises(ValueError, match="one value"):
        MetricsLogger(tmp_path).log(0, {"x": torch.zeros(2)})


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_tensorboard_missing_warns(tmp_path):
    with pytest.warns(UserWarning, match="tensorboard package is not installed"):
        log = MetricsLogger(tmp_path, tensorboard=True)
    log.log(0, {"loss": 1.0})
    assert log.writer is None and (tmp_path / "metrics.csv").is_file()


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_tensorboard_writes_events(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=True)
    log.log(0, {"loss": 1.0})
    log.close()
    assert any((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
