"""A run stopped by SIGTERM mid-epoch and resumed takes exactly the steps of an uninterrupted run and loses nothing."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from helpers import csv_rows

from laudnet.train.checkpoint import load_checkpoint
from laudnet.train.config import TrainConfig
from laudnet.train.loop import train


def _config(out, root, name, **kw):
    values = dict(
        model="laud_regnety_400mf", mode="dynamic", paradigm="spatial", granularity=[2, 2, 1, 1],
        dataset="fashion-canvas", data_root=str(root), image_size=32, train_subset=40, val_subset=8, batch_size=8,
        epochs=2, lr=0.05, workers=0, progress=False, output=str(out), run_name=name,
    )
    return TrainConfig(**{**values, **kw})


@pytest.fixture(scope="module")
def reference(tmp_path_factory, fashion_root):
    """The uninterrupted run: 2 epochs of 5 steps."""
    torch.set_num_threads(1)
    return train(_config(tmp_path_factory.mktemp("reference"), fashion_root, "reference"), log=None)


@pytest.mark.parametrize("kill_at", [3, 7])  # mid epoch 0, mid epoch 1 (5 steps per epoch)
def test_sigterm_mid_epoch_then_resume(tmp_path, fashion_root, reference, kill_at):
    assert (reference.steps_run, reference.epochs_done, reference.interrupted) == (10, 2, False)

    steps = []

    def kill(state):
        steps.append((state.epoch, state.step_in_epoch))
        if state.global_step == kill_at:
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal, handled by the loop's handler

    first = train(_config(tmp_path, fashion_root, "killed"), on_step=kill, log=None)
    assert first.interrupted and first.steps_run == kill_at
    saved = load_checkpoint(first.run_dir / "last.pt")
    assert (saved["epoch"], saved["step_in_epoch"]) == divmod(kill_at, 5)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed again

    second = train(_config(tmp_path, fashion_root, "killed", resume="auto"), on_step=kill, log=None)
    assert not second.interrupted
    assert first.steps_run + second.steps_run == 10 and second.global_step == 10 and second.epochs_done == 2
    assert steps == [(e, s) for e in range(2) for s in range(1, 6)]  # every step once, in order

    # Same data order, RNG (Gumbel noise) and optimiser state: the resumed run ends with the same weights.
    want = load_checkpoint(reference.run_dir / "last.pt")["model"]
    got = load_checkpoint(second.run_dir / "last.pt")["model"]
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)
    rows, ref_rows = csv_rows(second.run_dir / "metrics.csv"), csv_rows(reference.run_dir / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["0", "1"]
    for row, ref in zip(rows, ref_rows, strict=True):
        for key in ("train_loss", "flops_ratio", "train_top1", "val_top1"):
            assert float(row[key]) == pytest.approx(float(ref[key]), rel=1e-4, abs=1e-6), key


def test_resume_of_a_finished_run_does_nothing(tmp_path, fashion_root):
    cfg = _config(tmp_path, fashion_root, "done", epochs=1)
    train(cfg, log=None)
    again = train(_config(tmp_path, fashion_root, "done", epochs=1, resume="auto"), log=None)
    assert again.steps_run == 0 and again.epochs_done == 1 and not again.interrupted


def test_cli_sigterm_from_outside_then_resume(tmp_path, fashion_root):
    """`laudnet train` in a subprocess, terminated by another process: exit 143, then --resume auto finishes it."""
    import subprocess
    import sys
    import time

    run = tmp_path / "cli"
    argv = [sys.executable, "-m", "laudnet", "train", "--model", "laud_regnety_400mf", "--paradigm", "layer",
            "--dataset", "fashion-canvas", "--data-root", str(fashion_root), "--image-size", "32", "--train-subset",
            "80", "--val-subset", "8", "-b", "4", "--epochs", "3", "--lr", "0.05", "-j", "0", "--threads", "1",
            "--no-progress", "-o", str(tmp_path), "--run-name", "cli"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (run / "metrics.csv").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # during epoch 2, or while epoch 1 is being saved
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out
    assert "SIGTERM: s" in out and "--resume auto" in out
    stopped = load_checkpoint(run / "last.pt")
    assert 20 <= stopped["global_step"] < 60

    done = subprocess.run([*argv, "--resume", "auto"], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    final = load_checkpoint(run / "last.pt")
    assert (final["global_step"], final["epoch"], final["step_in_epoch"]) == (60, 3, 0)
    assert [r["epoch"] for r in csv_rows(run / "metrics.csv")] == ["0", "1", "2"]
