"""The run object: a save mid-epoch and a restore into a freshly built run give back its whole position, the moving
average of the weights included; BN recalibration at the end of a resumed run."""

from __future__ import annotations

import pytest
import torch

from laudnet.train.checkpoint import CheckpointError, load_checkpoint
from laudnet.train.config import TrainConfig
from laudnet.train.run import build_run
from laudnet.train.task import ClassificationTask

CPU = torch.device("cpu")


def _run(tmp_path, root, **kw):
    values = dict(model="laud_regnety_400mf", mode="dynamic", paradigm="spatial", granularity=[2, 2, 1, 1],
                  dataset="fashion-canvas", data_root=str(root), image_size=32, train_subset=32, val_subset=8,
                  batch_size=8, epochs=2, lr=0.05, warmup_epochs=0.5, masker_lr_mult=3.0, workers=0, progress=False,
                  output=str(tmp_path))
    cfg = TrainConfig(**{**values, **kw})
    return build_run(cfg, ClassificationTask(cfg, CPU), device=CPU, run_dir=tmp_path / "run")


def _stop_after(run, steps):
    def on_step(state):
        if state.step_in_epoch == steps:
            run.stop.set = True  # what SIGTERM's handler does

    run.on_step = on_step


def _same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _same(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b


EMA = {"ema_decay": 0.9, "ema_warmup": True}


@pytest.mark.parametrize("extra", [{}, EMA], ids=["plain", "ema"])
def test_save_mid_epoch_then_restore_round_trip(tmp_path, fashion_root, extra):
    run = _run(tmp_path, fashion_root, **extra)
    _stop_after(run, 2)
    assert run.train_epoch() is False  # stopped after step 2 of 4, last.pt written
    after_save = torch.rand(3)  # the generator state saved with the checkpoint
    saved = load_checkpoint(tmp_path / "run" / "last.pt")
    assert (saved["epoch"], saved["step_in_epoch"], saved["global_step"]) == (0, 2, 2)
    assert saved["best_metric"] == "val_top1" and saved["paradigm"] == "spatial" and saved["num_classes"] == 10

    if extra:  # `model` is the average (what eval reads), `train_model` the trained weights (what a resume needs)
        _same(saved["model"], run.ema.state_dict())
        _same(saved["train_model"], run.raw_model.state_dict())
        assert not torch.equal(saved["model"]["fc.weight"], saved["train_model"]["fc.weight"])
    else:
        assert "train_model" not in saved

    other = _run(tmp_path, fashion_root, **extra)
    other.restore(tmp_path / "run" / "last.pt")
    assert torch.equal(torch.rand(3), after_save)
    _same(other.raw_model.state_dict(), run.raw_model.state_dict())
    if extra:
        _same(other.ema.state_dict(), run.ema.state_dict())
    _same(other.optimizer.state_dict(), run.optimizer.state_dict())
    assert other.scheduler.state_dict() == run.scheduler.state_dict()
    assert [g["lr"] for g in other.optimizer.param_groups] == [g["lr"] for g in run.optimizer.param_groups]
    for key in ("epoch", "step_in_epoch", "global_step", "temperature", "lr"):
        assert getattr(other.state, key) == getattr(run.state, key), key
    assert torch.equal(other.sums, run.sums) and other.sums[-1] == 16  # two steps of 8 images


@pytest.mark.parametrize("extra", [{}, EMA], ids=["plain", "ema"])
def test_restored_run_ends_like_an_uninterrupted_one(tmp_path, fashion_root, extra):
    reference = _run(tmp_path / "ref", fashion_root, **extra)
    assert reference.train_epoch()
    stopped = _run(tmp_path / "cut", fashion_root, **extra)
    _stop_after(stopped, 1)
    assert not stopped.train_epoch()
    resumed = _run(tmp_path / "cut", fashion_root, **extra)
    resumed.restore(tmp_path / "cut" / "run" / "last.pt")
    assert resumed.train_epoch()
    _same(resumed.raw_model.state_dict(), reference.raw_model.state_dict())
    if extra:  # bit-identical average; validation is of it
        _same(resumed.ema.state_dict(), reference.ema.state_dict())
        assert resumed.eval_model is resumed.ema.module
    assert torch.equal(resumed.sums, reference.sums)
    row, ref_row = resumed.finish_epoch(), reference.finish_epoch()
    assert row["train_loss"] == ref_row["train_loss"] and row["val_top1"] == ref_row["val_top1"]
    assert resumed.state.epoch == 1 and resumed.state.step_in_epoch == 0


def test_restore_refuses_another_set_up_and_reads_older_best(tmp_path, fashion_root):
    run = _run(tmp_path, fashion_root)
    run.state.epoch = 1
    run.best = 12.5
    run.save(tmp_path / "a.pt")
    saved = load_checkpoint(tmp_path / "a.pt")
    assert saved["best"] == 12.5 and saved["epoch"] == 1 and saved["step_in_epoch"] == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # atomic: no temp file left

    older = {k: v for k, v in saved.items() if k not in ("best", "best_metric")}
    older["best_top1"] = 40.0  # written before the best metric had a name
    again = _run(tmp_path, fashion_root)
    again.restore(tmp_path / "a.pt", older)
    assert again.best == 40.0 and again.state.epoch == 1

    layer = _run(tmp_path, fashion_root, paradigm="layer")
    with pytest.raises(CheckpointError, match="has paradigm 'spatial', but this run has 'layer'"):
        layer.restore(tmp_path / "a.pt")
    longer = _run(tmp_path, fashion_root, train_subset=48)
    with pytest.raises(CheckpointError, match="with 4 steps per epoch; this run has 1 and 6"):
        longer.restore(tmp_path / "a.pt")


@pytest.mark.parametrize("extra", [{"recalibrate_bn": 2}, {"recalibrate_bn": 3, **EMA}], ids=["plain", "ema"])
def test_recalibration_ends_a_resumed_run_like_an_uninterrupted_one(tmp_path, fashion_root, extra):
    reference = _run(tmp_path / "ref", fashion_root, **extra)
    done = reference.fit()
    assert done.epochs_done == 2 and not done.interrupted
    stopped = _run(tmp_path / "cut", fashion_root, **extra)
    _stop_after(stopped, 3)
    assert stopped.fit().interrupted
    resumed = _run(tmp_path / "cut", fashion_root, **extra)
    resumed.restore(tmp_path / "cut" / "run" / "last.pt")
    again = resumed.fit()
    assert again.epochs_done == 2 and again.steps_run == 5 and again.last_eval.top1 == done.last_eval.top1
    want, got = (load_checkpoint(tmp_path / name / "run" / "last.pt") for name in ("ref", "cut"))
    for key in ("model", "train_model", "optimizer", "epoch", "global_step"):
        _same(got.get(key), want.get(key))
    # The evaluated model's BN statistics are the recalibration's (reset, then `recalibrate_bn` batches); the maskers'
    # input normalisation and, with an EMA, the trained weights keep those of training.
    model = want["model"]
    assert int(model["stem.1.num_batches_tracked"]) == extra["recalibrate_bn"]
    masker = "trunk_output.block2.block2-0.masker.norm.num_batches_tracked"
    assert int(model[masker]) == 8
    if "ema_decay" in extra:
        assert int(want["train_model"]["stem.1.num_batches_tracked"]) == 8
