"""`laudnet train` takes a ViT and its paradigms by config switch only, then `laudnet eval` reads the result."""

from __future__ import annotations

import json

from laudnet.cli import main


def test_vit_trains_and_evaluates(tmp_path, fashion_root, capsys):
    out = tmp_path / "runs"
    argv = ["train", "-m", "laud_deit_tiny", "--mode", "dynamic", "--paradigm", "token+head+layer",
            "--dataset", "fashion-canvas", "--data-root", str(fashion_root), "--image-size", "32",
            "--train-subset", "32", "--val-subset", "16", "--epochs", "1", "--batch-size", "8", "--workers", "0",
            "--kd-alpha", "0", "-o", str(out), "--run-name", "vit"]
    assert main(argv) == 0
    report = tmp_path / "eval.json"
    assert main(["eval", str(out / "vit" / "last.pt"), "--data-root", str(fashion_root), "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert 0 <= result["top1"] <= 100 and result["flops_ratio"] > 0
    assert len(result["block_names"]) == 12  # DeiT-Ti has 12 dynamic blocks
