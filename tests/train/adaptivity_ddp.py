"""Hand-made spatial records and a 2-process worker for tests/train/test_adaptivity.py.

A module of its own with light imports (no torchvision, no matplotlib): each spawned process imports it, and the test
module's imports would add about 4 s per process.
"""

from __future__ import annotations

import math
import os

import torch

from laudnet.info import DynamicInfo
from laudnet.train.adaptivity import AdaptivityMeter

# Four images of 8×8 on a 4×4 output map with patch 2 (2×2 cells of 4×4 pixels); each rank gets two.
CELLS = [[[1, 0], [0, 0]], [[1, 1], [1, 1]], [[0, 0], [0, 1]], [[0, 0], [0, 0]]]
BOXES = [[0, 0, 4, 4], [4, 4, 8, 8], [4, 4, 8, 8], [0, 0, 8, 4]]
LABELS = [0, 1, 0, 1]


def spatial_info(name: str, cells: list[list[list[int]]], out: int) -> DynamicInfo:
    """A spatial block record: per image a (gh, gw) 0/1 grid, its expansion on an out×out map."""
    patch = torch.tensor(cells, dtype=torch.float32)[:, None]
    s = math.ceil(out / patch.shape[-1])
    pixel = patch.repeat_interleave(s, 2).repeat_interleave(s, 3)[:, :, :out, :out]
    return DynamicInfo("spatial", 1.0, torch.zeros(len(cells)), masks={"patch": patch, "pixel": pixel}, name=name)


def meter_of(part: slice) -> AdaptivityMeter:
    meter = AdaptivityMeter(2, [2])
    meter.update([spatial_info("layer2.0", CELLS[part], 4)], torch.tensor(LABELS[part]), torch.tensor(BOXES[part]),
                 image_hw=(8, 8))
    return meter


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """Rank ``rank`` measures its two images, all-reduces with gloo and saves the result's dict."""
    from laudnet.train import distributed as dist_utils

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    dist_utils.init_distributed("cpu", timeout_s=60)
    meter = meter_of(slice(2 * rank, 2 * rank + 2))
    meter.all_reduce(dist_utils.all_reduce_sum)
    torch.save(meter.result().to_dict(), f"{out_dir}/rank{rank}.pt")
    dist_utils.cleanup()
