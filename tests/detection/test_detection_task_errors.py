"""Bad input to `laudnet train --task detection|instance` ends with one line `laudnet train: error: ...` and exit
status 2 (before any training, but for an undecodable image met when read); `--on-bad-image skip` trains on."""

from __future__ import annotations

import json
import shutil

import pytest
from test_detection_task import SMALL, write_coco

from laudnet.cli import main
from laudnet.train.checkpoint import save_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory, fashion_root):
    return write_coco(tmp_path_factory.mktemp("coco") / "root", fashion_root)


@pytest.fixture
def coco(tmp_path, coco_root):
    """A copy of the generated COCO root, for a test to damage."""
    return shutil.copytree(coco_root, tmp_path / "coco")


def _train(capsys, *argv):
    capsys.readouterr()
    code = main(["train", *SMALL, "--run-name", "r", *argv])
    return code, capsys.readouterr()


def _error(capsys, *argv):
    code, out = _train(capsys, *argv)
    err = out.err.strip().splitlines()[-1] if out.err.strip() else ""
    assert code == 2 and err.startswith("laudnet train: error: "), out.err
    return err


def _canvas(fashion_root, tmp_path):
    return ["--task", "detection", "--dataset", "fashion-canvas-det", "--data-root", str(fashion_root),
            "--canvas-height", "64", "--canvas-width", "96", "--train-subset", "4", "--val-subset", "2",
            "-o", str(tmp_path / "runs")]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--detector", "yolo"], "unknown detector 'yolo'; choose from: fasterrcnn, retinanet, maskrcnn"),
        (["--model", "laud_deit_small"], "unknown detection backbone 'laud_deit_small'; choose from: laud_resnet50"),
        (["--model", "resnet9"], "unknown detection backbone 'resnet9'"),
        (["--task", "instance", "--detector", "retinanet"], "--task instance needs masks, which only maskrcnn"),
        (["--dataset", "fashion-canvas"], "dataset 'fashion-canvas' is a classification set; --task detection takes "
                                          "one of: fashion-canvas-det, coco"),
        (["--min-size", "100"], "min_size (100) must not exceed max_size (96)"),
    ],
)
def test_bad_option(fashion_root, tmp_path, capsys, extra, message):
    assert message in _error(capsys, *_canvas(fashion_root, tmp_path), *extra)


def test_classification_checkpoint_of_another_backbone(fashion_root, tmp_path, capsys):
    other = save_checkpoint(tmp_path / "r50.pt", {"model": {}, "epoch": 1}, model_name="laud_resnet50")
    err = _error(capsys, *_canvas(fashion_root, tmp_path), "--init", str(other))
    assert f"checkpoint {other} is of model 'laud_resnet50', not the requested 'laud_regnety_400mf'" in err


def test_classification_dataset_refuses_a_detection_set(tmp_path, capsys):
    err = _error(capsys, "--dataset", "coco", "-o", str(tmp_path))
    assert "dataset 'coco' is a detection set: train it with --task detection or --task instance" in err


def _coco_args(root, tmp_path, task="detection"):
    return ["--task", task, "--dataset", "coco", "--data-root", str(root), "-o", str(tmp_path / "runs")]


def _edit(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_coco_annotation_of_an_unknown_image(coco, tmp_path, capsys):
    path = coco / "annotations" / "instances_train.json"
    _edit(path, lambda d: d["annotations"][0].update(image_id=99))
    assert f"{path}: annotation 1 refers to unknown image id 99" in _error(capsys, *_coco_args(coco, tmp_path))


def test_coco_malformed_box(coco, tmp_path, capsys):
    path = coco / "annotations" / "instances_val.json"
    _edit(path, lambda d: d["annotations"][1].update(bbox=[3, 4, -5, 6]))
    err = _error(capsys, *_coco_args(coco, tmp_path))
    assert f"{path}: annotation 2 of image 1 has a malformed bbox [3, 4, -5, 6]" in err


def test_coco_missing_split_and_empty_image_folder(coco, tmp_path, capsys):
    shutil.rmtree(coco / "val")
    err = _error(capsys, *_coco_args(coco, tmp_path))
    assert f"coco data root {coco} has no val split: expected {coco / 'val'}/ with" in err
    for image in (coco / "train").iterdir():
        image.unlink()
    assert f"image folder {coco / 'train'} holds no images" in _error(capsys, *_coco_args(coco, tmp_path))


def test_instance_segmentation_needs_masks(tmp_path, fashion_root, capsys):
    boxes_only = write_coco(tmp_path / "boxes", fashion_root, masks=False, train=2, val=2)
    err = _error(capsys, *_coco_args(boxes_only, tmp_path, "instance"))
    assert "--task instance needs instance masks, but annotation 1 of image 1 in " in err
    assert "has no segmentation: train boxes only with --task detection" in err


def test_undecodable_image_error_or_skip(coco, tmp_path, capsys):
    bad = coco / "train" / "000002.png"
    bad.write_bytes(bad.read_bytes()[:60])  # a truncated PNG
    err = _error(capsys, *_coco_args(coco, tmp_path), "--on-bad-image", "error")
    assert f"unreadable image {bad}" in err and "--on-bad-image skip" in err
    code, out = _train(capsys, *_coco_args(coco, tmp_path), "--on-bad-image", "skip", "--overwrite")
    assert code == 0, out.err
    assert "| skipped 1 unreadable images" in out.out
