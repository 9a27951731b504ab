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


def _start_and_signal(argv, sig, delay, after=" steps x "):
    """Start `argv` in a new session, wait for a line holding `after`, then `delay` s later signal the whole group.

    `after` is the start line (printed just before the first batch is asked for) or ``epoch 1/`` (printed after the
    first epoch's validation and metrics, just before its checkpoint is written).
    """
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
                            start_new_session=True)
    lines = []
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if after in line:
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
    ("sig", "code", "delay", "after"),
    [
        (signal.SIGTERM, 143, 0.0, " steps x "),  # while the workers start and the first batches load
        (signal.SIGTERM, 143, 0.3, "epoch 1/"),  # in epoch 2 (or while epoch 1 is saved)
        (signal.SIGINT, 130, 1.0, " steps x "),  # Ctrl-C in epoch 1
        (signal.SIGKILL, -9, 0.0, "epoch 1/"),  # most often during the write of epoch 1's last.pt: nothing saved
        (signal.SIGKILL, -9, 0.3, "epoch 1/"),  # in epoch 2: the resume starts from epoch 1's last.pt
    ],
    ids=["sigterm-at-start", "sigterm-epoch-2", "sigint", "sigkill-at-save", "sigkill-epoch-2"],
)
def test_group_signal_saves_then_resume_matches(tmp_path, fashion_root, reference, sig, code, delay, after):
    _check_fault(tmp_path, fashion_root, reference, sig, code, delay, after)


EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130, signal.SIGKILL: -9}
FAULT_SEED = int(os.environ.get("LAUDNET_FAULT_SEED", time.time_ns() % 100_000))


@pytest.mark.parametrize("case", [0, 1])
def test_signal_at_a_random_point_resumes_to_the_same_weights(tmp_path, fashion_root, reference, case):
    """A signal drawn at random (kind, anchor line, delay) each run; LAUDNET_FAULT_SEED=<seed> replays a failure."""
    import random

    rng = random.Random(FAULT_SEED * 10 + case)
    sig = rng.choice(list(EXIT_CODES))
    after = rng.choice([" steps x ", "epoch 1/"])
    delay = round(rng.uniform(0.0, 0.8 if after == " steps x " else 0.4), 2)  # the run must still be going
    print(f"LAUDNET_FAULT_SEED={FAULT_SEED}: {signal.Signals(sig).name} {delay} s after {after.strip()!r}")
    _check_fault(tmp_path, fashion_root, reference, sig, EXIT_CODES[sig], delay, after)


def _check_fault(tmp_path, fashion_root, reference, sig, code, delay, after):
    argv = _argv(tmp_path, "run", fashion_root)
    rc, out = _start_and_signal(argv, sig, delay, after)
    name = signal.Signals(sig).name
    assert rc == code, out
    if sig != signal.SIGKILL:
        assert "Traceback" not in out and "killed by signal" not in out, out
        assert f"{name}: saved" in out and "--resume auto" in out, out
        saved = load_checkpoint(tmp_path / "run" / "last.pt")
        assert saved["global_step"] <= STEPS * EPOCHS

    done = subprocess.run([*argv, "--resume", "auto"], capture_output=True, text=True, timeout=300, env=_env())
    assert done.returncode == 0, done.stdout + done.stderr
    final = load_checkpoint(tmp_path / "run" / "last.pt")
    assert (final["global_step"], final["epoch"], final["step_in_epoch"]) == (STEPS * EPOCHS, EPOCHS, 0)
    _assert_same_weights(final["model"], reference)


def test_sigint_during_validation_finishes_it_then_saves(tmp_path, fashion_root):
    """2 training steps and 600 validation images per epoch: a Ctrl-C 1.5 s in lands in validation."""
    extra = ("--train-subset", "16", "--val-subset", "600")
    ref = subprocess.run(_argv(tmp_path, "ref", fashion_root, *extra), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    argv = _argv(tmp_path, "run", fashion_root, *extra)
    rc, out = _start_and_signal(argv, signal.SIGINT, 1.5)
    assert rc == 130 and "SIGINT: saved" in out and "Traceback" not in out, out
    done = subprocess.run([*argv, "--resume", "auto"], capture_output=True, text=True, timeout=300, env=_env())
    assert done.returncode == 0, done.stdout + done.stderr
    final = load_checkpoint(tmp_path / "run" / "last.pt")
    assert (final["global_step"], final["epoch"]) == (2 * EPOCHS, EPOCHS)
    _assert_same_weights(final["model"], load_checkpoint(tmp_path / "ref" / "last.pt")["model"])
    epochs = [line.split(",")[0] for line in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]]
    assert epochs == ["0", "1"]


# ----------------------------------------------------------------------------------------- reruns and run folders


def _small(out, name, root, *extra):
    """A 2-epoch run of 2 steps each, without workers: the fastest full run."""
    argv = _argv(out, name, root, "--train-subset", "16", "--val-subset", "8", "--workers", "0", *extra)
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env=_env())


@pytest.fixture(scope="module")
def finished(tmp_path_factory, fashion_root):
    """The output folder of a finished 2-epoch run named "done"."""
    out = tmp_path_factory.mktemp("finished")
    done = _small(out, "done", fashion_root)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def _one_line_error(result):
    err = result.stderr.strip()
    assert result.returncode == 2 and err.startswith("laudnet train: error: ") and "\n" not in err, result.stderr
    return err


def test_rerun_of_a_finished_run_is_refused(finished, fashion_root):
    before = (finished / "done" / "last.pt").stat().st_mtime_ns
    err = _one_line_error(_small(finished, "done", fashion_root, "--model", "laud_regnety_800mf"))
    assert f"{finished / 'done'} already holds a run" in err
    assert "--resume auto" in err and "--run-name" in err and "--overwrite" in err
    assert (finished / "done" / "last.pt").stat().st_mtime_ns == before


def test_resume_of_a_complete_run_says_so_and_cleans_stale_temporaries(finished, fashion_root):
    stale = finished / "done" / ".last.pt.k3x9q1.tmp"  # what a checkpoint write killed half-way leaves
    stale.write_bytes(b"PK\x03\x04 half a checkpoint")
    result = _small(finished, "done", fashion_root, "--resume", "auto")
    assert result.returncode == 0, result.stderr
    assert "already complete" in result.stdout and "nothing to do" in result.stdout
    assert f"removed {stale}" in result.stdout and not stale.exists()


def test_extending_a_finished_run_is_refused(finished, fashion_root):
    err = _one_line_error(_small(finished, "done", fashion_root, "--resume", "auto", "--epochs", "3"))
    assert "finished 2-epoch run" in err and "cannot extend it to 3 epochs" in err and "--init" in err


def test_overwrite_and_resume_auto_without_a_checkpoint(tmp_path, fashion_root):
    fresh = _small(tmp_path, "new", fashion_root, "--resume", "auto")
    assert fresh.returncode == 0, fresh.stderr
    assert "--resume auto: no checkpoint" in fresh.stdout and "starting fresh" in fresh.stdout
    (tmp_path / "new" / "metrics.csv").write_text("epoch,train_loss\n7,1.0\n")  # a row only the old run had
    again = _small(tmp_path, "new", fashion_root, "--overwrite")
    assert again.returncode == 0, again.stderr
    assert "--overwrite: removed last.pt, best.pt, metrics.csv" in again.stdout
    epochs = [line.split(",")[0] for line in (tmp_path / "new" / "metrics.csv").read_text().splitlines()[1:]]
    assert epochs == ["0", "1"]
