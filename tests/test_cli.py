"""The `laudnet` command line: help, model list, demo on a small input, errors."""

import subprocess
import sys

import pytest

from laudnet.cli import main


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("demo", "flops", "models", "train", "eval", "viz"))


def test_models_command(capsys):
    assert main(["models", "laud_resnet*"]) == 0
    assert capsys.readouterr().out.split() == ["laud_resnet101", "laud_resnet50"]


def test_flops_prints_rates_and_flops(capsys):
    assert main(["flops", "--models", "laud_regnety_400mf", "--paradigms", "layer", "--image-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "laud_regnety_400mf layer" in out and "stage 4:" in out and "ratio" in out


def test_unknown_command_is_an_error():
    with pytest.raises(SystemExit):
        main(["frobnicate"])


def test_console_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "laudnet", "models"], capture_output=True, text=True, check=True)
    assert "laud_resnet50" in result.stdout


# ----------------------------------------------------------------------------- clear answers, as a shell user sees them


def _laudnet(*argv, timeout=120):
    return subprocess.run([sys.executable, "-m", "laudnet", *argv], capture_output=True, text=True, timeout=timeout)


def _one_line_error(result, command):
    err = result.stderr.strip()
    assert result.returncode == 2, result.stderr
    assert err.startswith(f"laudnet {command}: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["latency", "--model", "resnet50", "--paradigm", "spatial", "--granularity", "-1"], "got '-1'"),
        (["latency", "--model", "resnet50", "--paradigm", "spatial", "--granularity", "-4"], "got '-4'"),
        (["flops", "--models", "laud_regnety_400mf", "--batch", "0"], "--batch must be a positive integer, got 0"),
        (["flops", "--models", "laud_regnety_400mf", "--image-size", "0"], "--image-size must be a positive integer"),
        (["flops", "--models", "resnet9"], "unknown model 'resnet9'; choose from: "),
        (["flops", "--models", "laud_regnety_400mf", "--paradigms", "sideways"], "unknown paradigm 'sideways'"),
        (["train", "--epochs", "two"], "argument --epochs: invalid int value: 'two' (see laudnet train --help)"),
        (["train", "--paradigm", "both"], "invalid choice: 'both'"),
        (["train"], "no data chosen"),
    ],
)
def test_bad_input_is_one_line_with_status_2(argv, message):
    err = _one_line_error(_laudnet(*argv), argv[0])
    assert message in err


def test_bare_train_points_to_the_demo():
    err = _one_line_error(_laudnet("train"), "train")
    assert "--dataset" in err and "-c" in err and "laudnet demo" in err and "100 epochs" in err


def test_train_on_cuda_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    err = _one_line_error(_laudnet("train", "--dataset", "fashion-canvas", "--device", "cuda"), "train")
    assert "no CUDA GPU" in err and "--device cpu" in err


def test_argparse_errors_are_one_line_for_every_command():
    for argv in (["latency"], ["flops", "--batch", "x"], ["eval"], ["frobnicate"]):
        result = _laudnet(*argv)
        err = result.stderr.strip()
        assert result.returncode == 2 and "\n" not in err and "usage:" not in err and "--help" in err, (argv, err)


def test_eval_of_a_run_folder_lists_its_checkpoints(tmp_path):
    for name in ("last.pt", "best.pt"):
        (tmp_path / name).write_bytes(b"")
    err = _one_line_error(_laudnet("eval", str(tmp_path)), "eval")
    assert f"{tmp_path} is a run folder" in err and "best.pt, last.pt" in err and str(tmp_path / "last.pt") in err


def test_closed_pipe_ends_quietly():
    """`laudnet latency ... | head -1`: the reader goes away before the output is written."""
    proc = subprocess.Popen([sys.executable, "-m", "laudnet", "latency", "--model", "resnet50", "--blocks"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert proc.returncode == 141


def test_default_workers_fit_the_machine():
    import os

    from laudnet.train.config import TrainConfig

    assert TrainConfig().workers == min(4, os.cpu_count() or 1)


def test_flops_shows_regnety_skipping():
    """Untrained RegNetY maskers started every block open (rates 1.00/1.01); `laudnet flops` now shows skipping."""
    import re

    result = _laudnet("flops", "--models", "laud_regnety_400mf", "--image-size", "32")
    assert result.returncode == 0, result.stderr
    ratios = {m[0]: float(m[1]) for m in re.findall(r"laud_regnety_400mf (\w+) .* ratio ([\d.]+)", result.stdout)}
    assert set(ratios) == {"spatial", "channel", "layer"}, result.stdout
    assert all(0.1 < r < 0.9 for r in ratios.values()), ratios
    rates = [float(r) for line in re.findall(r"block rates \[([^\]]*)\]", result.stdout) for r in line.split()]
    assert min(rates) < 0.5 and max(rates) <= 1.05, rates
