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
