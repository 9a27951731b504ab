"""One epoch end to end through the command line, then `laudnet eval` and `laudnet viz` on the result."""

from __future__ import annotations

import json

import pytest
from helpers import check_png, csv_rows

from laudnet.cli import main
from laudnet.train.checkpoint import load_checkpoint


def test_fashion_canvas_epoch_eval_viz(tmp_path, fashion_root, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(
        "model: laud_regnety_400mf\nmode: dynamic\nparadigm: spatial\ngranularity: 2-2-1-1\n"
        "dataset: fashion-canvas\nimage_size: 32\ntrain_subset: 48\nval_subset: 24\nbatch_size: 8\n"
        "epochs: 1\nlr: 0.05\nworkers: 0\nprogress: true\n"
    )
    out = tmp_path / "runs"
    argv = ["train", "-c", str(config), "--data-root", str(fashion_root), "-o", str(out), "--run-name", "canvas"]
    assert main(argv) == 0
    run = out / "canvas"
    assert {"args.yaml", "metrics.csv", "last.pt", "best.pt"} <= {p.name for p in run.iterdir()}
    rows = csv_rows(run / "metrics.csv")
    assert len(rows) == 1 and rows[0]["epoch"] == "0"
    for key in ("train_loss", "loss_cls", "loss_flops", "loss_bounds", "loss_distill", "train_top1", "flops_ratio",
                "temperature", "lr", "val_top1", "val_top5", "val_flops_ratio"):
        assert rows[0][key] != "", key
    state = load_checkpoint(run / "last.pt", "laud_regnety_400mf")
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 0, 6)
    assert state["paradigm"] == "spatial" and state["granularity"] == [2, 2, 1, 1]
    capsys.readouterr()

    report = tmp_path / "eval.json"
    assert main(["eval", str(run / "last.pt"), "--json", str(report)]) == 0
    text = capsys.readouterr().out
    assert "top-1" in text and "ratio" in text and "s4.5" in text
    result = json.loads(report.read_text())
    assert result["num_samples"] == 24 and 0 <= result["top1"] <= result["top5"] <= 100
    assert len(result["block_rates"]) == 16 and all(0 <= r <= 1.2 for r in result["block_rates"])
    assert result["dynamic_flops"] < result["dense_flops"] * 1.05 and result["paradigm"] == "spatial"
    # The run's own validation of the same images gave the same numbers.
    assert float(rows[0]["val_top1"]) == pytest.approx(result["top1"])
    assert float(rows[0]["val_flops_ratio"]) == pytest.approx(result["flops_ratio"], rel=1e-5)

    viz = tmp_path / "viz"
    assert main(["viz", str(run / "last.pt"), "-o", str(viz), "--num-images", "3", "--val-subset", "16"]) == 0
    check_png(viz / "activation_rates.png")
    check_png(viz / "masks.png")


def test_image_folder_static_then_dynamic_eval_viz(tmp_path, image_folder, capsys):
    out = tmp_path / "runs"
    common = ["--dataset", "imagefolder", "--data-root", str(image_folder), "--model", "laud_regnety_400mf",
              "--image-size", "32", "-b", "6", "--epochs", "1", "--lr", "0.05", "-j", "0", "-o", str(out),
              "--no-progress"]
    assert main(["train", *common, "--mode", "static", "--run-name", "static"]) == 0
    static = out / "static" / "best.pt"
    assert load_checkpoint(static)["paradigm"] == "static"
    # Dynamic fine-tuning from our static checkpoint: the frozen static network is the teacher (KD term > 0).
    argv = ["train", *common, "--mode", "dynamic", "--paradigm", "channel", "--granularity", "8",
            "--init", str(static), "--run-name", "channel"]
    assert main(argv) == 0
    rows = csv_rows(out / "channel" / "metrics.csv")
    assert float(rows[0]["loss_distill"]) > 0 and float(rows[0]["loss_flops"]) > 0
    capsys.readouterr()

    assert main(["eval", str(out / "channel" / "last.pt")]) == 0
    result = json.loads((out / "channel" / "last.pt.eval.json").read_text())
    assert result["num_samples"] == 12 and result["paradigm"] == "channel" and len(result["block_rates"]) == 16

    viz = tmp_path / "viz"
    argv = ["viz", str(static), str(out / "channel" / "last.pt"), "-o", str(viz), "--labels", "static", "channel"]
    assert main(argv) == 0
    assert "no spatial model" in capsys.readouterr().out
    check_png(viz / "activation_rates.png")
    assert not (viz / "masks.png").exists()
