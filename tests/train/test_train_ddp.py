"""Two gloo processes (torchrun-style environment) train exactly like one process on the same global batch."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch
import torch.multiprocessing as mp
from helpers import free_port

from laudnet.train.checkpoint import load_checkpoint
from laudnet.train.config import TrainConfig


def _config(out, root, name, **kw):
    # Batch 1 per process: BN then normalises each image alone in both set-ups (one process with 2 accumulated
    # micro-batches of 1, or 2 processes of 1), so the two runs compute the same function. Static mode: no Gumbel
    # noise, whose draws depend on the process layout.
    values = dict(
        model="laud_regnety_400mf", mode="static", dataset="fashion-canvas", data_root=str(root), image_size=48,
        train_subset=12, val_subset=4, batch_size=1, epochs=1, lr=0.05, workers=0, progress=False, threads=1,
        output=str(out), run_name=name, device="cpu",
    )
    return TrainConfig(**{**values, **kw})


def _worker(rank, world, port, out, root):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from laudnet.train.loop import train

    result = train(_config(out, root, "ddp"), log=None)
    torch.save({"steps": result.steps_run, "global_step": result.global_step, "digests": result.replica_digests},
               f"{out}/rank{rank}.pt")




def _train_loss(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return float(next(csv.DictReader(f))["train_loss"])


def test_two_processes_match_one(tmp_path, fashion_root, no_torchrun):
    from laudnet.train.loop import train

    single = train(_config(tmp_path, fashion_root, "single", grad_accum=2), log=None)
    assert single.steps_run == 6
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path), str(fashion_root)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert all((r["steps"], r["global_step"]) == (6, 6) for r in ranks)
    # Every rank gathered the same two digests, they agree (DDP replicas in sync), and rank 0 wrote the verdict.
    assert ranks[0]["digests"] == ranks[1]["digests"] and len(set(ranks[0]["digests"])) == 1
    assert json.loads((tmp_path / "ddp" / "replicas.json").read_text()) == {
        "identical": True, "sha256": ranks[0]["digests"]}
    assert single.replica_digests is None

    want = load_checkpoint(single.run_dir / "last.pt")
    got = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert got["world_size"] == 2 and want["world_size"] == 1
    # Parameters only: DDP keeps rank 0's BN running statistics (broadcast_buffers), one process sees every image.
    names = [k for k in want["model"] if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    for key in names:
        # Gradients are summed in another order (all-reduce vs accumulation): equal up to float rounding.
        torch.testing.assert_close(got["model"][key], want["model"][key], rtol=1e-4, atol=1e-5, msg=key)
    # The runs did train: the comparison is not between two untouched models.
    from laudnet.train.build import build_model

    init = build_model(_config(tmp_path, fashion_root, "x"), 10).state_dict()
    assert max(float((want["model"][k] - init[k]).abs().max()) for k in names) > 1e-3
    assert _train_loss(tmp_path / "ddp") == pytest.approx(_train_loss(single.run_dir), rel=1e-4)
    with open(tmp_path / "ddp" / "metrics.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert float(row["train_images_per_s"]) > 0
    assert float(row["train_images_per_s_all"]) == pytest.approx(2 * float(row["train_images_per_s"]))
