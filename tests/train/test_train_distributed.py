import copy

import pytest
import torch
import torch.multiprocessing as mp
from helpers import free_port
from torch.utils.data import Dataset

from laudnet.train import distributed as d


def test_world_info_without_torchrun(no_torchrun):
    info = d.world_info_from_env()
    assert (info.rank, info.world_size, info.local_rank, info.distributed, info.is_main) == (0, 1, 0, False, True)
    assert not d.launched_by_torchrun()


def test_world_info_from_env(monkeypatch):
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = d.world_info_from_env()
    assert (info.rank, info.world_size, info.local_rank, info.distributed, info.is_main) == (5, 8, 1, True, False)
    monkeypatch.setenv("RANK", "8")
    with pytest.raises(ValueError, match="RANK=8 is outside 0..7"):
        d.world_info_from_env()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="RANK='x' is not an integer"):
        d.world_info_from_env()


def test_resolve_device():
    assert d.resolve_device("cpu") == torch.device("cpu")
    assert d.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_single_process_is_a_no_op(no_torchrun):
    info, device = d.init_distributed("cpu")
    assert info.world_size == 1 and device == torch.device("cpu") and not d.is_dist()
    x = torch.tensor([1.0, 2.0])
    out = d.all_reduce_mean(x)
    assert torch.equal(out, x) and out is not x
    assert d.is_main_process() and d.get_world_size() == 1
    d.barrier()
    d.cleanup()


class Indices(Dataset):
    def __len__(self):
        return 32

    def __getitem__(self, i):
        return torch.tensor(i), 0


def _worker(rank, world, port, out_dir):
    import os

    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    from laudnet.data import build_loader

    info, device = d.init_distributed("cpu", timeout_s=60)
    mean = d.all_reduce_mean(torch.tensor([float(rank + 1), 10.0 * rank]))
    int_mean = d.all_reduce_mean(torch.tensor(rank, dtype=torch.int64))
    total = d.all_reduce_sum(torch.tensor(rank + 1))
    loader = build_loader(Indices(), 4, train=True, seed=3)
    loader.sampler.set_epoch(1)
    first = next(iter(loader))[0]
    d.barrier()
    torch.save(
        {
            "info": (info.rank, info.world_size),
            "main": d.is_main_process(),
            "mean": mean,
            "int_mean": int_mean,
            "total": total,
            "first": first,
            "backend": torch.distributed.get_backend(),
        },
        f"{out_dir}/rank{rank}.pt",
    )
    d.cleanup()



def test_two_process_gloo(tmp_path, no_torchrun):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for rank, res in enumerate(results):
        assert res["info"] == (rank, 2) and res["main"] == (rank == 0) and res["backend"] == "gloo"
        torch.testing.assert_close(res["mean"], torch.tensor([1.5, 5.0]))
        assert res["int_mean"].item() == 0.5 and res["total"].item() == 3
    # Sharded loaders: the two ranks' first batches together are one process's first global batch of 8.
    from laudnet.data import ResumableSampler

    single = ResumableSampler(Indices(), 8, seed=3)
    single.set_epoch(1)
    together = torch.cat([r["first"] for r in results]).tolist()
    assert sorted(together) == sorted(list(single)[:8]) and len(set(together)) == 8


def test_state_digest_sees_one_bit_and_buffers(no_torchrun):
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)).to(torch.bfloat16)
    b = copy.deepcopy(a)
    assert d.state_digest(a) == d.state_digest(b)
    assert d.gather_digests(a) == [d.state_digest(a)]  # a world of one
    with torch.no_grad():
        bits = b[0].weight.view(torch.int16)
        bits[0, 0] ^= 1  # the lowest mantissa bit of one weight
    assert d.state_digest(a) != d.state_digest(b)
    c = copy.deepcopy(a)
    c[1].running_mean += 1e-3  # buffers count too
    assert d.state_digest(a) != d.state_digest(c)
