import pytest
import torch
from torch.utils.data import Dataset

from laudnet.data import ResumableSampler, build_loader


class Indices(Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.tensor(i), i % 3


def batches(loader):
    return [x.tolist() for x, _ in loader]


def test_order_depends_on_seed_and_epoch_only():
    a, b = build_loader(Indices(50), 8, seed=3), build_loader(Indices(50), 8, seed=3)
    a.sampler.set_epoch(2)
    b.sampler.set_epoch(2)
    assert batches(a) == batches(b)
    epoch2 = batches(a)
    a.sampler.set_epoch(3)
    assert batches(a) != epoch2
    c = build_loader(Indices(50), 8, seed=4)
    c.sampler.set_epoch(2)
    assert batches(c) != epoch2
    assert len(epoch2) == 6 and all(len(x) == 8 for x in epoch2)  # drop_last for training


def test_resume_mid_epoch_skips_seen_batches():
    loader = build_loader(Indices(50), 8, seed=1)
    loader.sampler.set_epoch(5)
    full = batches(loader)
    loader.sampler.set_epoch(5, start_batch=4)
    assert len(loader) == 2 and batches(loader) == full[4:]
    loader.sampler.set_epoch(6)  # the next epoch is whole again
    assert len(loader) == 6
    with pytest.raises(ValueError, match="start_batch 7"):
        loader.sampler.set_epoch(5, start_batch=7)


def test_eval_loader_covers_everything_in_order():
    loader = build_loader(Indices(21), 8, train=False)
    assert sum(batches(loader), []) == list(range(21))


def test_shards_make_the_same_global_batches():
    # Two ranks with batch 4 see, batch by batch, the same indices as one process with batch 8.
    data = Indices(64)
    single = ResumableSampler(data, 8, seed=9)
    ranks = [ResumableSampler(data, 4, num_replicas=2, rank=r, seed=9) for r in range(2)]
    for s in (single, *ranks):
        s.set_epoch(1)
    order = list(single)
    shards = [list(s) for s in ranks]
    for k in range(8):
        assert sorted(shards[0][4 * k : 4 * k + 4] + shards[1][4 * k : 4 * k + 4]) == sorted(order[8 * k : 8 * k + 8])


def test_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        build_loader(Indices(5), 0)
