"""`laudnet demo`: the shipped config loads; a tiny version of the demo writes its report and plots."""

from __future__ import annotations

import json

import matplotlib.image
import pytest

from laudnet.cli import main
from laudnet.train.demo import DEFAULT_CONFIG, load_recipe


def test_shipped_demo_config():
    static, dynamic = load_recipe(DEFAULT_CONFIG, output="somewhere")
    assert static.mode == "static" and dynamic.mode == "dynamic" and dynamic.paradigm == "spatial"
    assert dynamic.dataset == "fashion-canvas" and dynamic.model == "laud_regnety_400mf"
    assert static.output == dynamic.output == "somewhere"
    assert (static.run_name, dynamic.run_name) == ("static", "dynamic")


def test_demo_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: laud_regnety_400mf\ndynamic:\n  epoch: 3\n")
    with pytest.raises(ValueError, match=r"unknown config key 'epoch' in .*bad.yaml \(dynamic:\) \(did you mean"):
        load_recipe(bad)
    bad.write_text("model: laud_regnety_400mf\n")
    with pytest.raises(ValueError, match="must be a mapping with a 'dynamic:' section"):
        load_recipe(bad)


def test_tiny_demo(tmp_path, fashion_root, capsys):
    config = tmp_path / "demo.yaml"
    config.write_text(
        f"model: laud_regnety_400mf\ndataset: fashion-canvas\ndata_root: {fashion_root}\nimage_size: 32\n"
        "train_subset: 32\nval_subset: 16\nbatch_size: 8\nworkers: 0\nthreads: 1\nprogress: false\n"
        "static:\n  epochs: 1\n  lr: 0.05\ndynamic:\n  paradigm: spatial\n  granularity: 2-2-1-1\n  target: 0.6\n"
        "  epochs: 1\n  lr: 0.05\n"
    )
    out = tmp_path / "demo"
    assert main(["demo", "-c", str(config), "-o", str(out), "--num-images", "2"]) == 0
    text = capsys.readouterr().out
    assert "== demo result" in text and "dynamic network: top-1" in text
    report = json.loads((out / "report.json").read_text())
    assert report["target"] == 0.6 and 0 <= report["top1"] <= 100 and 0 < report["flops_ratio"] <= 1.05
    assert report["static_top1"] is not None and report["val_images"] == 16 and len(report["block_rates"]) == 16
    adaptivity = report["adaptivity"]
    assert adaptivity["num_images"] == 16 and [s["stage"] for s in adaptivity["stages"]] == ["s1", "s2", "s3", "s4"]
    assert [s["cells_in"] + s["cells_out"] for s in adaptivity["stages"]] == [16 * 16, 16 * 12, 16 * 24, 16 * 6]
    assert "masks on the items: lift s1 " in text
    for name in ("activation_rates.png", "masks.png"):
        assert matplotlib.image.imread(out / name).shape[0] > 100
    # The dynamic run was initialised from the static one, which was its teacher.
    args = (out / "dynamic" / "args.yaml").read_text()
    assert f"init: {out / 'static' / 'best.pt'}" in args
