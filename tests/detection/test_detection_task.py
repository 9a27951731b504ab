"""`laudnet train --task detection|instance` end to end through the command line, then `laudnet eval` and `laudnet
viz` on the result; a generated COCO folder; init from a detection checkpoint; two gloo processes."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.multiprocessing as mp
from helpers import check_png, csv_rows, free_port

from laudnet.cli import main
from laudnet.detection import task as task_module
from laudnet.train.checkpoint import load_checkpoint, save_checkpoint
from laudnet.train.config import TrainConfig

# pycocotools 2.0 decoding masks under numpy 2 (its own code, harmless)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# A tiny Faster R-CNN on 64×96 canvases: few sampled proposals and detections keep a CPU step near 0.3 s.
SMALL = ["--model", "laud_regnety_400mf", "--granularity", "2-2-1-1", "--min-size", "64", "--max-size", "96",
         "--roi-batch-size", "64", "--detections-per-image", "10", "-b", "2", "--epochs", "1", "--lr", "0.01",
         "-j", "0", "--threads", "1", "--no-progress"]
CANVAS = ["--dataset", "fashion-canvas-det", "--canvas-height", "64", "--canvas-width", "96", "--train-subset", "8",
          "--val-subset", "4"]




def test_detection_epoch_eval_viz(tmp_path, fashion_root, capsys):
    out = tmp_path / "runs"
    argv = ["train", "--task", "detection", *CANVAS, "--data-root", str(fashion_root), *SMALL, "-o", str(out),
            "--run-name", "det"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "fasterrcnn on laud_regnety_400mf spatial 2-2-1-1 t=0.5 on fashion-canvas-det (8 train / 4 val" in text
    assert "| val box AP " in text and "done: " in text and "best val box AP" in text
    run = out / "det"
    assert {"args.yaml", "metrics.csv", "last.pt", "best.pt"} <= {p.name for p in run.iterdir()}
    (row,) = csv_rows(run / "metrics.csv")
    for key in ("train_loss", "loss_detection", "loss_flops", "flops_ratio", "loss_classifier", "loss_box_reg",
                "loss_objectness", "loss_rpn_box_reg", "temperature", "lr", "val_box_ap", "val_box_ap50",
                "val_flops_ratio", "val_dense_gmacs", "val_dynamic_gmacs"):
        assert row[key] != "", key
    assert float(row["loss_flops"]) > 0  # λ·(F_dyn / F_dense − t)² of the backbone
    state = load_checkpoint(run / "last.pt", "laud_regnety_400mf")
    assert (state["epoch"], state["global_step"], state["task"], state["detector"]) == (1, 4, "detection", "fasterrcnn")
    assert state["best_metric"] == "val_box_ap" and state["num_classes"] == 11
    args = state["model_args"]
    assert (args["kind"], args["backbone"], args["paradigm"], args["granularity"]) == (
        "fasterrcnn", "laud_regnety_400mf", "spatial", [2, 2, 1, 1])
    assert (args["min_size"], args["max_size"], state["config"]["target"]) == (64, 96, 0.5) and "target" not in args

    report = tmp_path / "eval.json"
    assert main(["eval", str(run / "last.pt"), "--json", str(report)]) == 0
    text = capsys.readouterr().out
    for word in ("AP50", "AP75", "AP_S", "AP_M", "AP_L", "  box ", "backbone FLOPs per image", "ratio", "s4.5",
                 "adaptivity (spatial, 4 images)", "masks on the items: lift s1"):
        assert word in text, word
    result = json.loads(report.read_text())
    assert (result["task"], result["detector"], result["model"], result["images"], result["target"]) == (
        "detection", "fasterrcnn", "laud_regnety_400mf", 4, 0.5)
    assert set(result["bbox"]) == {"AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L"} and "segm" not in result
    assert len(result["block_rates"]) == 16 and [s["stage"] for s in result["adaptivity"]["stages"]] == [
        "s1", "s2", "s3", "s4"]
    # The run's own validation (sharded loader, batches of 3) gave the same numbers as eval (batches of 4).
    assert float(row["val_box_ap"]) == pytest.approx(100 * result["bbox"]["AP"], abs=1e-6)
    assert float(row["val_flops_ratio"]) == pytest.approx(result["backbone"]["flops_ratio"], rel=1e-5)

    viz = tmp_path / "viz"
    assert main(["viz", str(run / "last.pt"), "-o", str(viz), "--num-images", "2", "--score-threshold", "0"]) == 0
    for name in ("detections.png", "activation_rates.png", "execution_shares.png", "stage_lift.png"):
        check_png(viz / name)


def write_coco(root, fashion_root, *, masks=True, train=6, val=4):
    """A COCO data root from fashion-canvas-det: root/{train,val}/*.png and root/annotations/instances_*.json."""
    from laudnet.detection import fashion_canvas_det

    (root / "annotations").mkdir(parents=True)
    for split, count in (("train", train), ("val", val)):
        ds = fashion_canvas_det(fashion_root, split, height=64, width=96, num_samples=count)
        folder, path = ds.export(root / f"export-{split}")
        folder.rename(root / split)
        data = json.loads(path.read_text())
        if not masks:
            for ann in data["annotations"]:
                del ann["segmentation"]
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def test_instance_segmentation_on_a_coco_folder(tmp_path, fashion_root, capsys):
    data = write_coco(tmp_path / "coco", fashion_root)
    out = tmp_path / "runs"
    argv = ["train", "--task", "instance", "--dataset", "coco", "--data-root", str(data), *SMALL, "--mode", "static",
            "-o", str(out)]
    assert main(argv) == 0
    run = out / "maskrcnn-laud_regnety_400mf-static-coco"  # the default run name: detector, model, mode, data
    (row,) = csv_rows(run / "metrics.csv")
    assert row["loss_mask"] != "" and row["val_mask_ap"] != "" and float(row["loss_flops"]) == 0
    state = load_checkpoint(run / "best.pt")
    assert (state["task"], state["best_metric"], state["model_args"]["kind"]) == ("instance", "val_mask_ap", "maskrcnn")
    capsys.readouterr()
    assert main(["eval", str(run / "last.pt")]) == 0
    text = capsys.readouterr().out
    assert "  box " in text and "  mask " in text and "ratio 1.000" in text and "adaptivity" not in text
    result = json.loads((run / "last.pt.eval.json").read_text())
    assert result["images"] == 4 and result["adaptivity"] is None and set(result["segm"]) == set(result["bbox"])
    assert float(row["val_mask_ap"]) == pytest.approx(100 * result["segm"]["AP"], abs=1e-6)


def test_init_from_a_detection_checkpoint(tmp_path, fashion_root):
    """Static detection training, then dynamic fine-tuning from it: backbone, FPN and heads load, maskers are new."""
    from laudnet.detection.task import build_detector
    from laudnet.train.checkpoint import save_checkpoint
    from laudnet.train.config import TrainConfig

    def cfg(**kw):
        return TrainConfig(task="detection", dataset="fashion-canvas-det", model="laud_regnety_400mf",
                           min_size=64, max_size=96, **kw)

    static, _ = build_detector(cfg(mode="static"), 11)
    path = save_checkpoint(tmp_path / "static.pt", {"model": static.state_dict(), "task": "detection", "epoch": 1},
                           model_name="laud_regnety_400mf")
    dynamic, note = build_detector(cfg(mode="dynamic", paradigm="layer", init=str(path)), 11)
    assert note == f"init from detection checkpoint {path}, fresh: maskers"
    own = dynamic.state_dict()
    assert all(torch.equal(own[k], v) for k, v in static.state_dict().items())
    # Another class count: the box predictor starts afresh, the rest loads.
    _, note = build_detector(cfg(mode="static", init=str(path)), 5)
    assert note.endswith("fresh: roi_heads.box_predictor")
    from laudnet.train.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="of model 'laud_regnety_400mf', not the requested 'laud_regnety_800mf'"):
        build_detector(TrainConfig(task="detection", dataset="coco", model="laud_regnety_800mf", init=str(path)), 11)


# ------------------------------------------------------------------------------------------------- two processes


def _worker(rank, world, port, out, root):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from laudnet.train.config import TrainConfig
    from laudnet.train.loop import train

    cfg = TrainConfig(task="detection", dataset="fashion-canvas-det", data_root=root, model="laud_regnety_400mf",
                      paradigm="layer", canvas_height=64, canvas_width=96, min_size=64, max_size=96, roi_batch_size=64,
                      detections_per_image=10, train_subset=4, val_subset=5, batch_size=1, epochs=1, lr=0.01,
                      workers=0, progress=False, device="cpu", output=out, run_name="ddp")
    result = train(cfg, log=None)
    torch.save({"steps": result.steps_run, "digests": result.replica_digests}, f"{out}/rank{rank}.pt")



def test_two_processes(tmp_path, fashion_root, monkeypatch, capsys):
    """2 gloo processes: replicas stay identical, and the validation of the sharded set (5 images: one is padded
    onto both shards) equals `laudnet eval` of the checkpoint in one process."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path), str(fashion_root)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert all(r["steps"] == 2 for r in ranks) and len(set(ranks[0]["digests"])) == 1
    assert json.loads((tmp_path / "ddp" / "replicas.json").read_text())["identical"] is True
    (row,) = csv_rows(tmp_path / "ddp" / "metrics.csv")
    assert main(["eval", str(tmp_path / "ddp" / "last.pt"), "--json", str(tmp_path / "eval.json")]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["images"] == 5
    assert float(row["val_box_ap"]) == pytest.approx(100 * result["bbox"]["AP"], abs=1e-6)
    assert float(row["val_flops_ratio"]) == pytest.approx(result["backbone"]["flops_ratio"], rel=1e-5)


def test_retinanet_layer_skipping_epoch(tmp_path, fashion_root, capsys):
    out = tmp_path / "runs"
    argv = ["train", "--task", "detection", "--detector", "retinanet", *CANVAS, "--data-root", str(fashion_root),
            *SMALL, "--paradigm", "layer", "--train-subset", "4", "--val-subset", "2", "-o", str(out)]
    assert main(argv) == 0
    assert "retinanet on laud_regnety_400mf layer t=0.5" in capsys.readouterr().out
    (row,) = csv_rows(out / "retinanet-laud_regnety_400mf-layer-fashion-canvas-det" / "metrics.csv")
    assert row["loss_classification"] != "" and row["loss_bbox_regression"] != "" and row["val_box_ap"] != ""


def test_step_follows_the_target_warmup(monkeypatch):
    """`DetectionTask.step` hands `detection_step` the FLOPs target of the (fractional) epoch: 1 at the start of a
    target warm-up, `target` after it."""
    seen = []

    def fake_step(model, images, targets, target, lambda_flops, flops_loss, module):
        seen.append(target)
        logs = {k: torch.tensor(0.0) for k in ("loss", "loss_detection", "loss_flops", "flops_ratio",
                                              *task_module.DETECTOR_LOSSES["fasterrcnn"])}
        return torch.tensor(0.0), logs

    monkeypatch.setattr(task_module, "detection_step", fake_step)
    cfg = TrainConfig(task="detection", dataset="fashion-canvas-det", epochs=4, target=0.4, target_warmup=0.5)
    task = task_module.DetectionTask(cfg, torch.device("cpu"))
    batch = ([torch.zeros(3, 8, 8)], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}])
    for epoch in (0, 1, 2, 3.5):
        task.step(None, None, batch, epoch=epoch)
    assert seen == pytest.approx([1.0, 0.7, 0.4, 0.4])


def test_resume_may_change_the_flops_target_not_the_architecture(tmp_path, fashion_root, capsys):
    """The FLOPs target is a training setting: a resume with another one continues (and records it); a resume with
    another granularity is refused in one line."""
    def train(*extra):
        return main(["train", "--task", "detection", *CANVAS, "--data-root", str(fashion_root), *SMALL, "-o",
                     str(tmp_path), "--run-name", "det", "--val-subset", "2", *extra])

    assert train() == 0
    path = tmp_path / "det" / "last.pt"
    state = load_checkpoint(path)
    state.update(epoch=0, step_in_epoch=2, global_step=2)  # as a save in the middle of the epoch leaves it
    save_checkpoint(path, state)
    capsys.readouterr()
    assert train("--target", "0.4", "--resume", "auto") == 0
    assert f"resumed from {path}: epoch 0, step 2/4" in capsys.readouterr().out
    resumed = load_checkpoint(path)
    assert resumed["config"]["target"] == 0.4 and resumed["global_step"] == 4

    save_checkpoint(path, state)
    capsys.readouterr()
    assert train("--granularity", "1-1-1-1", "--resume", "auto") != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "granularity" in err[0] and "Traceback" not in err[0], err
