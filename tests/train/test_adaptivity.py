"""Adaptivity of the decisions: localisation lift, execution shares, per-class rates (hand-made masks), and through
`evaluate`, `laudnet eval` and `laudnet viz` on a real model."""

from __future__ import annotations

import json
import math

import adaptivity_ddp
import matplotlib.image
import pytest
import torch
from adaptivity_ddp import spatial_info
from torch.utils.data import DataLoader

from laudnet.cli import main
from laudnet.data.canvas import FashionCanvas, fashion_canvas
from laudnet.info import DynamicInfo
from laudnet.masks import mask_override
from laudnet.models import create_model
from laudnet.train.adaptivity import (
    ADAPTIVE_HIGH,
    ADAPTIVE_LOW,
    AdaptivityMeter,
    cells_overlapping_boxes,
    lift_ratio,
    patch_sizes,
)
from laudnet.train.evaluation import evaluate


def _layer(name: str, decisions: list[int]) -> DynamicInfo:
    patch = torch.tensor(decisions, dtype=torch.float32).view(-1, 1, 1, 1)
    return DynamicInfo("layer", 1.0, torch.zeros(len(decisions)), masks={"patch": patch}, name=name)


def _channel(name: str, groups: list[list[int]]) -> DynamicInfo:
    g = torch.tensor(groups, dtype=torch.float32)
    return DynamicInfo("channel", 1.0, torch.zeros(len(groups)), masks={"channel": g}, name=name)


def test_cells_overlapping_boxes_scales_to_the_image_and_ends_exclusive():
    # 4×4 output map of a 16×16 image, patch 2: each of the 2×2 cells covers 8×8 image pixels.
    boxes = torch.tensor([[0, 0, 8, 8], [7, 7, 9, 9], [8, 0, 16, 4]])
    inside = cells_overlapping_boxes(boxes, (2, 2), (4, 4), 2, (16, 16))
    assert inside[0].tolist() == [[True, False], [False, False]]  # x1 = 8 is exclusive: the right cell is outside
    assert inside[1].all()
    assert inside[2].tolist() == [[False, True], [False, False]]
    # Ho = 7 with 2 cells: S = 4 covers rows [0, 4) + [4, 7), S = 5 covers [0, 5) + [5, 7).
    box = torch.tensor([[0, 0, 5, 5]])
    assert int(cells_overlapping_boxes(box, (2, 2), (7, 7), 4, (7, 7)).sum()) == 4
    assert int(cells_overlapping_boxes(box, (2, 2), (7, 7), 5, (7, 7)).sum()) == 1


def test_lift_by_hand():
    # Image 8×8, output map 4×4, patch 2: cells of 4×4 pixels. Image 0's item is the top-left cell, image 1's the
    # bottom-right one.
    boxes = torch.tensor([[0, 0, 4, 4], [4, 4, 8, 8]])
    infos = [
        spatial_info("layer2.0", [[[1, 0], [0, 0]], [[0, 0], [0, 1]]], 4),  # only on the item
        spatial_info("layer2.1", [[[1, 1], [1, 1]], [[1, 1], [1, 1]]], 4),  # everywhere
        spatial_info("layer3.0", [[[1, 0], [0, 0]], [[0, 0], [0, 1]]], 4),  # only on the item: P(out) = 0
        spatial_info("layer4.0", [[[0, 0], [0, 0]], [[0, 0], [0, 0]]], 4),  # all skipped: 0 / 0
        # a blind constant mask (left column) over boxes left and right: 1.0
        spatial_info("layer1.0", [[[1, 0], [1, 0]], [[1, 0], [1, 0]]], 4),
    ]
    meter = AdaptivityMeter(2, [2] * len(infos))
    meter.update(infos[:4], torch.tensor([0, 1]), boxes, image_hw=(8, 8))
    stages = {s.stage: s for s in meter.result().stages}
    # s2 pooled: in 2 + 2 cells, all computed; out 6 + 6 cells, 0 + 6 computed -> 1 / 0.5 = 2.
    s2 = stages["s2"]
    assert (s2.blocks, s2.cells_in, s2.computed_in, s2.cells_out, s2.computed_out) == (2, 4, 4, 12, 6)
    assert (s2.p_in, s2.p_out, s2.lift) == (1.0, 0.5, 2.0)
    assert (stages["s3"].p_in, stages["s3"].p_out, stages["s3"].lift) == (1.0, 0.0, math.inf)
    assert (stages["s4"].p_in, stages["s4"].p_out, stages["s4"].lift) == (0.0, 0.0, None)

    blind = AdaptivityMeter(2, [2])
    blind.update(infos[4:], torch.tensor([0, 1]), torch.tensor([[0, 0, 4, 4], [4, 0, 8, 4]]), image_hw=(8, 8))
    (s1,) = blind.result().stages
    assert (s1.cells_in, s1.computed_in, s1.cells_out, s1.computed_out) == (2, 1, 6, 3)
    assert s1.lift == pytest.approx(1.0)


def test_lift_with_several_boxes_per_image_and_padding():
    # Detection batches: a 12×8 input (3×2 cells of 4×4 pixels, patch 2 on a 6×4 map), image 0 fills it, image 1 is
    # 8×8 padded below. Image 0 has two objects (top-left and bottom-right cells), image 1 none.
    cells = [[[1, 0], [1, 0], [0, 1]], [[1, 1], [0, 0], [1, 1]]]
    info = spatial_info("layer2.0", cells, 4)
    info.masks["pixel"] = info.masks["patch"].repeat_interleave(2, 2).repeat_interleave(2, 3)
    boxes = [torch.tensor([[0, 0, 4, 4], [4, 8, 8, 12]]), torch.zeros(0, 4)]
    meter = AdaptivityMeter(1, [2])
    meter.update([info], torch.zeros(2, dtype=torch.long), boxes, image_hw=(12, 8), image_sizes=[(12, 8), (8, 8)])
    (s2,) = meter.result().stages
    # In: image 0's 2 object cells, both computed. Out: image 0's 4 others (1 computed) and image 1's 4 cells inside
    # the image (2 computed); its bottom row lies in the padding and is not counted.
    assert (s2.cells_in, s2.computed_in, s2.cells_out, s2.computed_out) == (2, 2, 8, 3)
    assert s2.lift == pytest.approx(1.0 / (3 / 8))
    with pytest.raises(ValueError, match="1 box sets for a batch of 2 images"):
        meter.update([info], torch.zeros(2, dtype=torch.long), boxes[:1], image_hw=(12, 8))


def test_lift_degenerate_cases_and_json():
    # One cell covering the whole map: every box overlaps it, so no cell is outside -> P(out) and lift undefined.
    info = spatial_info("layer4.0", [[[1]], [[0]]], 2)
    meter = AdaptivityMeter(3, [2])
    meter.update([info], torch.tensor([0, 2]), torch.tensor([[0, 0, 1, 1], [3, 3, 4, 4]]), image_hw=(4, 4))
    result = meter.result()
    (s4,) = result.stages
    assert (s4.cells_in, s4.cells_out, s4.p_in, s4.p_out, s4.lift) == (2, 0, 0.5, None, None)
    assert (lift_ratio(None, 0.3), lift_ratio(0.0, 0.0), lift_ratio(0.2, 0.0), lift_ratio(0.6, 0.3)) == (
        None, None, math.inf, 2.0)
    # inf is written as "inf" (strict JSON has no infinity) and reads back with float().
    inside_only = AdaptivityMeter(1, [2])
    only = spatial_info("layer3.0", [[[1, 0], [0, 0]]], 4)
    inside_only.update([only], torch.tensor([0]), torch.tensor([[0, 0, 4, 4]]), image_hw=(8, 8))
    d = json.loads(json.dumps(inside_only.result().to_dict(), allow_nan=False))
    assert d["stages"][0]["lift"] == "inf" and float(d["stages"][0]["lift"]) == math.inf
    # Without boxes there is no lift, but the execution shares are there.
    no_boxes = AdaptivityMeter(3, [2])
    no_boxes.update([info], torch.tensor([0, 2]))
    assert no_boxes.result().stages == [] and no_boxes.result().blocks[0].shares == [0.5]


def test_patch_size_is_checked_against_the_grid():
    info = spatial_info("layer1.0", [[[1, 0], [0, 0]]], 7)  # 2×2 grid on a 7×7 map
    meter = AdaptivityMeter(1, [3])  # ceil(7 / 3) = 3 cells, not 2
    with pytest.raises(ValueError, match="patch size 3"):
        meter.update([info], torch.tensor([0]), torch.tensor([[0, 0, 5, 5]]), image_hw=(7, 7))
    meter = AdaptivityMeter(1, [5])
    meter.update([info], torch.tensor([0]), torch.tensor([[0, 0, 5, 5]]), image_hw=(7, 7))
    (s,) = meter.result().stages
    assert (s.cells_in, s.computed_in, s.cells_out, s.computed_out) == (1, 1, 3, 0)


def test_layer_shares_adaptive_fraction_and_class_rates():
    labels = torch.tensor([0] * 5 + [1] * 5)
    decisions = {
        "layer1.0": [1] * 10,  # share 1.0
        "layer1.1": [1] * 5 + [0] * 5,  # 0.5: adaptive, exactly the class-0 images
        "layer2.0": [0] * 9 + [1],  # 0.1: adaptive (the band includes its ends)
        "layer2.1": [0] * 10,  # all skipped
        "layer3.0": [1] * 9 + [0],  # 0.9: adaptive
    }
    one = AdaptivityMeter(3)
    one.update([_layer(n, d) for n, d in decisions.items()], labels)
    two = AdaptivityMeter(3)  # the same images in two batches
    for part in (slice(0, 4), slice(4, 10)):
        two.update([_layer(n, d[part]) for n, d in decisions.items()], labels[part])
    for result in (one.result(), two.result()):
        assert (result.paradigm, result.unit, result.num_images) == ("layer", "block", 10)
        assert [b.shares for b in result.blocks] == [[1.0], [0.5], [0.1], [0.0], [0.9]]
        assert (result.adaptive_units, result.total_units, result.adaptive_fraction) == (3, 5, 0.6)
        assert result.thresholds == (ADAPTIVE_LOW, ADAPTIVE_HIGH) == (0.1, 0.9)
        rates = {b.name: b.class_rates for b in result.blocks}
        assert rates["layer1.1"] == [1.0, 0.0, None]  # class 2 has no image
        assert rates["layer2.0"] == [0.0, pytest.approx(0.2), None]
        assert rates["layer2.1"] == [0.0, 0.0, None]
        assert result.stages == []


def test_channel_group_shares_and_class_rates():
    groups = [[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]]  # per image, 4 groups
    meter = AdaptivityMeter(2)
    meter.update([_channel("layer1.0", groups), _channel("layer1.1", [[1, 1]] * 4)], torch.tensor([0, 0, 1, 1]))
    result = meter.result()
    assert (result.paradigm, result.unit) == ("channel", "group")
    first, second = result.blocks
    assert first.shares == [1.0, 0.5, 0.25, 0.0] and first.adaptive == 2 and first.share == pytest.approx(0.4375)
    assert second.shares == [1.0, 1.0] and second.adaptive == 0
    assert (result.adaptive_units, result.total_units) == (2, 6)
    # per-sample group fraction 3/4, 2/4 | 1/4, 1/4 -> class means 0.625 and 0.25
    assert first.class_rates == [0.625, 0.25] and second.class_rates == [1.0, 1.0]


def test_spatial_block_share_counts_images_with_a_computed_patch():
    info = spatial_info("layer1.0", [[[0, 0], [0, 1]], [[0, 0], [0, 0]], [[1, 1], [1, 1]], [[0, 0], [0, 0]]], 4)
    meter = AdaptivityMeter(2, [2])
    meter.update([info], torch.tensor([0, 0, 1, 1]))
    (block,) = meter.result().blocks
    assert block.shares == [0.5] and block.adaptive == 1
    assert block.class_rates == [0.125, 0.5]  # mean cell fraction per class: (1/4 + 0) / 2, (1 + 0) / 2


def test_all_reduce_sums_every_count():
    boxes = torch.tensor([[0, 0, 4, 4], [4, 4, 8, 8]])
    meter = AdaptivityMeter(2, [2])
    meter.update([spatial_info("layer2.0", [[[1, 0], [0, 0]], [[1, 1], [1, 1]]], 4)], torch.tensor([0, 1]), boxes,
                 image_hw=(8, 8))
    before = meter.result()
    meter.all_reduce(lambda t: t * 2)  # two identical ranks
    after = meter.result()
    assert after.num_images == 4 and after.stages[0].cells_in == 2 * before.stages[0].cells_in
    assert after.stages[0].lift == before.stages[0].lift and after.blocks == before.blocks


def test_all_reduce_over_two_gloo_processes(tmp_path, monkeypatch):
    import socket

    import torch.multiprocessing as mp

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(adaptivity_ddp.worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    expected = adaptivity_ddp.meter_of(slice(0, 4)).result().to_dict()  # one process, all four images
    # in: 1 + 1 + 1 + 2 cells, computed 1 + 1 + 1 + 0; out: 3 + 3 + 3 + 2, computed 0 + 3 + 0 + 0
    assert expected["stages"][0]["lift"] == pytest.approx((3 / 5) / (3 / 11))
    for rank in range(2):
        assert torch.load(tmp_path / f"rank{rank}.pt") == expected


def test_static_records_measure_nothing():
    static = DynamicInfo("static", 1.0, torch.zeros(2), name="layer1.0")
    meter = AdaptivityMeter(2)
    meter.update([static], torch.tensor([0, 1]))
    assert not meter.measured and meter.result() is None


def test_evaluate_with_boxes_forced_masks(fashion_root):
    # A real model on canvas images with boxes: all-ones masks are blind (lift 1, every block executed by all images),
    # all-zeros masks compute nothing (lift undefined, shares 0).
    torch.manual_seed(0)
    model = create_model("laud_regnety_400mf", paradigm="spatial", granularity=[2, 2, 1, 1], num_classes=10)
    canvas = fashion_canvas(fashion_root, "val", canvas_size=32, num_samples=6, num_clutter=1, return_box=True)
    loader = DataLoader(canvas, batch_size=3)
    assert patch_sizes(model)[:2] == [2, 2] and patch_sizes(model)[-1] == 1
    with mask_override(model, 1):
        on = evaluate(model, loader).adaptivity
    assert on.paradigm == "spatial" and on.num_images == 6 and len(on.blocks) == 16
    assert [s.stage for s in on.stages] == ["s1", "s2", "s3", "s4"]
    # regnety_400mf: 1, 3, 6, 6 blocks on 8, 4, 2, 1 px maps -> grids 4×4, 2×2, 2×2, 1×1
    cells = [6 * n * g for n, g in ((1, 16), (3, 4), (6, 4), (6, 1))]
    assert [s.cells_in + s.cells_out for s in on.stages] == cells
    assert all(s.p_in == 1.0 and s.lift == 1.0 for s in on.stages[:3])
    assert on.stages[3].cells_out == 0 and on.stages[3].lift is None  # the one 1×1 cell always overlaps the item
    assert all(b.shares == [1.0] for b in on.blocks) and on.adaptive_fraction == 0.0
    with mask_override(model, 0):
        off = evaluate(model, loader).adaptivity
    assert all(s.computed_in == s.computed_out == 0 and s.lift is None for s in off.stages)
    assert all(b.shares == [0.0] and b.class_rates.count(0.0) == len([r for r in b.class_rates if r is not None])
               for b in off.blocks)
    # A static model has no decisions to measure.
    static = create_model("laud_regnety_400mf", paradigm="static", num_classes=10)
    assert evaluate(static, loader, max_batches=1).adaptivity is None


def _stage_cells_in(dataset: FashionCanvas, size: int, stage_grids) -> list[int]:
    """Cells overlapping the item boxes, counted pixel by pixel (independent of cells_overlapping_boxes)."""
    counts = []
    for blocks, out, patch in stage_grids:
        grid = math.ceil(out / patch)
        scale = size // out
        total = 0
        for i in range(len(dataset)):
            x0, y0, x1, y1 = dataset.sample(i).box
            item = torch.zeros(size, size, dtype=torch.bool)
            item[y0:y1, x0:x1] = True
            for r in range(grid):
                for c in range(grid):
                    rows = slice(r * patch * scale, min((r + 1) * patch, out) * scale)
                    cols = slice(c * patch * scale, min((c + 1) * patch, out) * scale)
                    total += blocks * int(item[rows, cols].any())
        counts.append(total)
    return counts


def test_eval_and_viz_report_adaptivity(tmp_path, fashion_root, capsys):
    out = tmp_path / "runs"
    argv = ["train", "--dataset", "fashion-canvas", "--data-root", str(fashion_root), "--model", "laud_regnety_400mf",
            "--mode", "dynamic", "--paradigm", "spatial", "--granularity", "2-2-1-1", "--image-size", "32",
            "--train-subset", "8", "--val-subset", "8", "-b", "8", "--epochs", "1", "--lr", "0.05", "-j", "0",
            "--no-progress", "-o", str(out), "--run-name", "spatial"]
    assert main(argv) == 0
    capsys.readouterr()
    report = tmp_path / "eval.json"
    assert main(["eval", str(out / "spatial" / "last.pt"), "--json", str(report)]) == 0
    text = capsys.readouterr().out
    assert "masks on the items: lift s1 " in text and "blocks executed by 10-90 % of the images:" in text
    a = json.loads(report.read_text())["adaptivity"]
    assert a["paradigm"] == "spatial" and a["num_images"] == 8 and a["unit"] == "block"
    assert len(a["blocks"]) == 16 and a["total_units"] == 16 and a["thresholds"] == [0.1, 0.9]
    shares = [b["shares"][0] for b in a["blocks"]]
    assert all(s * 8 == round(s * 8) and 0 <= s <= 1 for s in shares)  # shares of 8 images
    assert a["adaptive_units"] == sum(0.1 <= s <= 0.9 for s in shares)
    # The cells on the items, counted independently from the dataset's boxes; the probabilities agree with the counts.
    val = fashion_canvas(fashion_root, "val", canvas_size=32, num_samples=8, num_clutter=6, scale_range=(0.25, 0.5))
    grids = ((1, 8, 2), (3, 4, 2), (6, 2, 1), (6, 1, 1))  # (blocks, output side, patch) per stage
    assert [s["stage"] for s in a["stages"]] == ["s1", "s2", "s3", "s4"]
    assert [s["cells_in"] for s in a["stages"]] == _stage_cells_in(val, 32, grids)
    assert [s["cells_in"] + s["cells_out"] for s in a["stages"]] == [8 * 16, 8 * 12, 8 * 24, 8 * 6]
    for s in a["stages"]:
        assert s["p_in"] == pytest.approx(s["computed_in"] / s["cells_in"])
        if s["cells_out"] and s["computed_out"]:
            assert s["lift"] == pytest.approx(s["p_in"] / s["p_out"])

    viz = tmp_path / "viz"
    assert main(["viz", str(out / "spatial" / "last.pt"), "-o", str(viz), "--num-images", "2"]) == 0
    for name in ("execution_shares.png", "stage_lift.png"):
        image = matplotlib.image.imread(viz / name)
        assert image.shape[0] > 200 and image.std() > 0.01
