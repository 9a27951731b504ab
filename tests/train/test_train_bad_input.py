"""Bad input ends `laudnet train/eval` with one clear line and exit status 2, before any training."""

from __future__ import annotations

import time

import pytest
import torch

from laudnet.cli import main
from laudnet.train.checkpoint import save_checkpoint


def _run(argv, capsys):
    capsys.readouterr()
    start = time.perf_counter()
    code = main(argv)
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err.strip()
    return code, err, elapsed


@pytest.fixture
def base(tmp_path, fashion_root):
    return ["train", "--model", "laud_regnety_400mf", "--dataset", "fashion-canvas", "--data-root", str(fashion_root),
            "--image-size", "32", "--train-subset", "16", "--val-subset", "8", "-b", "4", "--epochs", "1", "-j", "0",
            "-o", str(tmp_path / "runs"), "--run-name", "r", "--no-progress"]


def _foreign_checkpoint(path):
    return save_checkpoint(path, {"model": {"w": torch.zeros(1)}, "epoch": 0}, model_name="laud_resnet50")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--data-root", "/nonexistent/fashion"], "data root /nonexistent/fashion does not exist"),
        (["--dataset", "cifar10"], "unknown dataset 'cifar10'"),
        (["--model", "resnet9"], "unknown model 'resnet9'"),
        (["--target", "1.5"], "target must be in (0, 1], got 1.5"),
        (["--target", "0"], "target must be in (0, 1], got 0"),
    ],
)
def test_bad_flag(base, capsys, extra, message):
    code, err, elapsed = _run([*base, *extra], capsys)
    assert code == 2 and err.startswith("laudnet train: error: ") and message in err and "\n" not in err
    assert elapsed < 20


def test_empty_data_root(base, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err, _ = _run([*base, "--data-root", str(empty)], capsys)
    assert code == 2 and f"data root {empty} is empty" in err and "\n" not in err


def test_data_root_without_the_files(base, tmp_path, capsys):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("no images here")
    code, err, _ = _run([*base, "--data-root", str(tmp_path / "other")], capsys)
    assert code == 2 and "train-images-idx3-ubyte" in err and "\n" not in err


def test_unknown_config_key(base, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("epochs: 1\nlambda_flop: 5\n")
    code, err, _ = _run([*base, "-c", str(config)], capsys)
    assert code == 2 and "unknown config key 'lambda_flop'" in err and "did you mean 'lambda_flops'" in err
    assert "\n" not in err


def test_checkpoint_of_another_model(base, tmp_path, capsys):
    foreign = _foreign_checkpoint(tmp_path / "resnet.pt")
    for flag in ("--resume", "--init"):
        code, err, _ = _run([*base, flag, str(foreign)], capsys)
        assert code == 2 and "is of model 'laud_resnet50', not the requested 'laud_regnety_400mf'" in err, flag
        assert "\n" not in err
    assert not (tmp_path / "runs" / "r" / "args.yaml").exists()  # nothing was started
    code, err, _ = _run(["eval", str(foreign), "--model", "laud_regnety_400mf"], capsys)
    assert code == 2 and err.startswith("laudnet eval: error: ") and "laud_resnet50" in err


def test_broken_checkpoints(tmp_path, capsys):
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(b"PK\x03\x04 not really a zip")
    code, err, _ = _run(["eval", str(truncated)], capsys)
    assert code == 2 and str(truncated) in err and "\n" not in err
    code, err, _ = _run(["eval", str(tmp_path / "missing.pt")], capsys)
    assert code == 2 and "does not exist" in err
    code, err, _ = _run(["viz", str(tmp_path / "missing.pt")], capsys)
    assert code == 2 and err.startswith("laudnet viz: error: ")


# ------------------------------------------------------------------------------------------ corrupt images (real files)


@pytest.fixture
def folder_with_a_truncated_jpeg(tmp_path):
    """An image folder of 3 classes (8 train and 2 val PNGs each) plus one truncated JPEG in train/ and one in val/."""
    import io

    from PIL import Image

    root = tmp_path / "images"
    g = torch.Generator().manual_seed(0)
    for split, per_class in (("train", 8), ("val", 2)):
        for c, name in enumerate(("circle", "square", "stripes")):
            (root / split / name).mkdir(parents=True)
            for k in range(per_class):
                img = (torch.rand(40, 40, 3, generator=g) * 60).to(torch.uint8)
                img[:, :, c] += 150
                Image.fromarray(img.numpy()).save(root / split / name / f"{k}.png")
    buf = io.BytesIO()
    Image.fromarray((torch.rand(64, 64, 3, generator=g) * 255).to(torch.uint8).numpy()).save(buf, "JPEG")
    bad = [root / "train" / "square" / "broken.jpg", root / "val" / "circle" / "broken.jpg"]
    for path in bad:
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # a download cut half-way
    return root, bad


def _train_subprocess(root, out, *extra):
    import subprocess
    import sys

    argv = [sys.executable, "-m", "laudnet", "train", "--model", "laud_regnety_400mf", "--dataset", "imagefolder",
            "--data-root", str(root), "--image-size", "32", "-b", "8", "--epochs", "1", "--workers", "2",
            "--threads", "1", "--no-progress", "-o", str(out), "--run-name", "r", *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def test_truncated_jpeg_is_skipped_by_name_and_counted(folder_with_a_truncated_jpeg, tmp_path):
    root, bad = folder_with_a_truncated_jpeg
    result = _train_subprocess(root, tmp_path / "runs")
    assert result.returncode == 0, result.stderr
    for path in bad:
        assert f"skipping unreadable image {path}" in result.stderr
    assert "Traceback" not in result.stderr
    assert "skipped 2 unreadable images" in result.stdout  # one train, one val image, each read once in the epoch

    import subprocess
    import sys

    ev = subprocess.run([sys.executable, "-m", "laudnet", "eval", str(tmp_path / "runs" / "r" / "last.pt")],
                        capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr
    assert f"skipping unreadable image {bad[1]}" in ev.stderr and "(6 images)" in ev.stdout


def test_truncated_jpeg_is_an_error_by_name_on_request(folder_with_a_truncated_jpeg, tmp_path):
    root, bad = folder_with_a_truncated_jpeg
    # Also a regression test of a hang: the workers ignore SIGTERM, with which multiprocessing stops them at exit.
    result = _train_subprocess(root, tmp_path / "runs", "--on-bad-image", "error")
    err = result.stderr.strip()
    assert result.returncode == 2 and err.startswith("laudnet train: error: unreadable image "), result.stderr
    assert "\n" not in err and str(bad[0]) in err and "--on-bad-image skip" in err
