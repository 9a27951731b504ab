"""Faults as they happen on clusters, tested as they happen: a real `laudnet train` subprocess in its own process group.

A signal to the group (what `timeout`, Slurm, Kubernetes and Ctrl-C send) reaches the DataLoader workers too; the run
must still save `last.pt`, exit 128 + the signal, and `--resume auto` must end with the weights of an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from laudnet.train.checkpoint import load_checkpoint

STEPS = 12  # per epoch: 96 images in batches of 8
EPOCHS = 2


def _argv(out, name, root, *extra):
    return [sys.executable, "-m", "laudnet", "train", "--model", "laud_regnety_400mf", "--granularity", "2-2-1-1",
            "--dataset", "fashion-canvas", "--data-root", str(root), "--image-size", "32", "--train-subset", "96",
            "--val-subset", "16", "-b", "8", "--epochs", str(EPOCHS), "--lr", "0.05", "--workers", "2",
            "--threads", "1", "--no-progress", "-o", str(out), "--run-name", name, *extra]


def _env():
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, fashion_root):
    """The weights of an uninterrupted run (2 epochs of 12 steps, 2 workers)."""
    out = tmp_path_factory.mktemp("faults-ref")
    done = subprocess.run(_argv(out, "ref", fashion_root), capture_output=True, text=True, timeout=300, env=_env())
    assert done.returncode == 0, done.stdout + done.stderr
    return load_checkpoint(out / "ref" / "last.pt")["model"]


def _start_and_signal(argv, sig, delay):
    """Start `argv` in a new session, wait until training has begun, then `delay` s later signal the whole group."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
                            start_new_session=True)
    lines = []
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if " steps x " in line:  # the start line, printed just before the first batch is asked for
            break
    time.sleep(delay)
    os.killpg(proc.pid, sig)
    rest, _ = proc.communicate(timeout=180)
    return proc.returncode, "".join(lines) + rest


def _assert_same_weights(got, want):
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize(
    ("sig", "code", "delay"),
    [
        (signal.SIGTERM, 143, 0.0),  # while the workers start and the first batches load
        (signal.SIGTERM, 143, 2.5),  # later: in epoch 1 or 2, or in validation
        (signal.SIGINT, 130, 1.0),  # Ctrl-C
    ],
)
def test_group_signal_saves_then_resume_matches(tmp_path, fashion_root, reference, sig, code, delay):
    argv = _argv(tmp_path, "run", fashion_root)
    rc, out = _start_and_signal(argv, sig, delay)
    name = signal.Signals(sig).name
    assert rc == code, out
    assert "Traceback" not in out and "killed by signal" not in out, out
    assert f"{name}: saved" in out and "--resume auto" in out, out
    saved = load_checkpoint(tmp_path / "run" / "last.pt")
    assert saved["global_step"] <= STEPS * EPOCHS

    done = subprocess.run([*argv, "--resume", "auto"], capture_output=True, text=True, timeout=300, env=_env())
    assert done.returncode == 0, done.stdout + done.stderr
    final = load_checkpoint(tmp_path / "run" / "last.pt")
    assert (final["global_step"], final["epoch"], final["step_in_epoch"]) == (STEPS * EPOCHS, EPOCHS, 0)
    _assert_same_weights(final["model"], reference)
