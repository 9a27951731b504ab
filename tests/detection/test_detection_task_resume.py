"""A real `laudnet train --task detection` subprocess in its own process group, stopped by SIGTERM to the group in
the middle of an epoch (the DataLoader worker gets it too), saves `last.pt`, exits 143, and `--resume auto` ends with
the weights of an uninterrupted run (the approach of tests/train/test_train_faults.py, one signal case)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch

from laudnet.train.checkpoint import load_checkpoint

STEPS = 4  # per epoch: 8 canvases in batches of 2
EPOCHS = 2


def _argv(out, name, root):
    # Dynamic (spatial) training: the Gumbel noise and the detectors' proposal sampling draw from the RNGs that a
    # resume must restore.
    return [sys.executable, "-m", "laudnet", "train", "--task", "detection", "--dataset", "fashion-canvas-det",
            "--data-root", str(root), "--canvas-height", "64", "--canvas-width", "96", "--train-subset", "8",
            "--val-subset", "2", "--model", "laud_regnety_400mf", "--granularity", "2-2-1-1", "--min-size", "64",
            "--max-size", "96", "--roi-batch-size", "64", "--detections-per-image", "10", "-b", "2", "--epochs",
            str(EPOCHS), "--lr", "0.01", "--workers", "1", "--threads", "1", "--no-progress", "-o", str(out),
            "--run-name", name]


def _env():
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def test_sigterm_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, fashion_root):
    ref = subprocess.run(_argv(tmp_path, "ref", fashion_root), capture_output=True, text=True, timeout=300,
                         env=_env())
    assert ref.returncode == 0, ref.stdout + ref.stderr
    want = load_checkpoint(tmp_path / "ref" / "last.pt")

    argv = _argv(tmp_path, "run", fashion_root)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
                            start_new_session=True)
    lines, deadline = [], time.time() + 120
    while time.time() < deadline:  # the start line comes just before the first batch is asked for
        line = proc.stdout.readline()
        lines.append(line)
        if not line or " steps x " in line:
            break
    time.sleep(1.2)  # a few steps of 0.3-0.5 s into epoch 1
    os.killpg(proc.pid, signal.SIGTERM)
    rest, _ = proc.communicate(timeout=180)
    out = "".join(lines) + rest
    assert proc.returncode == 143, out
    assert "SIGTERM: saved" in out and "--resume auto" in out and "Traceback" not in out, out
    saved = load_checkpoint(tmp_path / "run" / "last.pt")
    assert 0 < saved["step_in_epoch"] < STEPS and saved["global_step"] < STEPS * EPOCHS, out

    done = subprocess.run([*argv, "--resume", "auto"], capture_output=True, text=True, timeout=300, env=_env())
    assert done.returncode == 0, done.stdout + done.stderr
    position = f"epoch {saved['epoch']}, step {saved['step_in_epoch']}/{STEPS}"
    assert f"resumed from {tmp_path / 'run' / 'last.pt'}: {position}" in done.stdout
    got = load_checkpoint(tmp_path / "run" / "last.pt")
    assert (got["global_step"], got["epoch"], got["step_in_epoch"]) == (STEPS * EPOCHS, EPOCHS, 0)
    assert got["model"].keys() == want["model"].keys()
    for key, value in want["model"].items():
        torch.testing.assert_close(got["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert got["best"] == want["best"]
