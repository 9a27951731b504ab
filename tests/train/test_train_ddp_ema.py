"""Two gloo processes with the EMA of the weights and BN recalibration: every rank ends with the same evaluated
model, the one last.pt holds."""

from __future__ import annotations

import os

import torch
import torch.multiprocessing as mp
from helpers import free_port

from laudnet.train.checkpoint import load_checkpoint
from laudnet.train.config import TrainConfig


def _worker(rank, world, port, out, root):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from pathlib import Path

    from laudnet.train import distributed as dist_utils
    from laudnet.train.run import build_run
    from laudnet.train.task import ClassificationTask

    torch.set_num_threads(1)
    cfg = TrainConfig(
        model="laud_regnety_400mf", mode="dynamic", paradigm="spatial", granularity=[2, 2, 1, 1],
        dataset="fashion-canvas", data_root=str(root), image_size=32, train_subset=32, val_subset=8, batch_size=4,
        epochs=2, lr=0.05, workers=0, progress=False, output=str(out), ema_decay=0.8, recalibrate_bn=2,
    )
    info, device = dist_utils.init_distributed("cpu", timeout_s=120)
    try:
        run = build_run(cfg, ClassificationTask(cfg, device, say=lambda _m: None), device=device,
                        run_dir=Path(out) / "run", world=info.world_size, rank=info.rank)
        result = run.fit()
        params = {n: p.detach().clone() for n, p in run.ema.module.named_parameters()}
        torch.save({"ema": dist_utils.state_digest(run.ema.module), "params": params,
                    "raw": dist_utils.state_digest(run.raw_model), "top1": result.last_eval.top1,
                    "tracked": int(run.ema.module.state_dict()["stem.1.num_batches_tracked"])},
                   f"{out}/rank{rank}.pt")
    finally:
        dist_utils.cleanup()




def test_two_processes_evaluate_one_averaged_model(tmp_path, fashion_root, no_torchrun):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path), str(fashion_root)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # The averages' parameters are bit-identical without any communication, their BN statistics after the
    # recalibration (averaged over the ranks); so is the trained model (its statistics broadcast from rank 0).
    assert ranks[0]["ema"] == ranks[1]["ema"] and ranks[0]["raw"] == ranks[1]["raw"]
    assert ranks[0]["top1"] == ranks[1]["top1"] and ranks[0]["tracked"] == 2
    saved = load_checkpoint(tmp_path / "run" / "last.pt")
    for name, value in ranks[0]["params"].items():
        assert torch.equal(saved["model"][name], value), name
    assert not torch.equal(saved["model"]["fc.weight"], saved["train_model"]["fc.weight"])
