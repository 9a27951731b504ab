"""Resumable, shardable sampling: one code path for a single process and for DDP.

Data order is a pure function of ``(seed, epoch)``: the permutation is torch's ``randperm`` seeded with ``seed + epoch``
(as in :class:`~torch.utils.data.DistributedSampler`), padded to a multiple of the world size and sharded
``rank::world_size``. Global batch ``k`` of a run with ``W`` processes of batch ``b`` is therefore the same set of
indices as batch ``k`` of one process with batch ``W·b``.

Resuming mid-epoch: save ``epoch`` and the number of batches already consumed in it (``batches_done``); on resume call
``sampler.set_epoch(epoch, start_batch=batches_done)``. The sampler regenerates the epoch's permutation and skips the
first ``batches_done · batch_size`` indices of this rank's shard, so the run continues with exactly the batches it
had not seen. The next ``set_epoch(epoch + 1)`` starts from the beginning again.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    """A :class:`DistributedSampler` that can start an epoch part-way (see the module docstring).

    Args:
        dataset: the dataset.
        batch_size: per-process batch size, used to turn a batch position into a sample position.
        num_replicas: world size (1 without DDP).
        rank: this process's rank.
        shuffle: reshuffle every epoch from ``seed + epoch``.
        seed: the data-order seed.
        drop_last: drop the tail that does not divide evenly among ranks (instead of padding it by repetition).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batch_size = batch_size
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's order and skip its first ``start_batch`` batches (0 = the whole epoch)."""
        if start_batch < 0 or start_batch * self.batch_size > self.num_samples:
            raise ValueError(
                f"start_batch {start_batch} is outside this epoch (0..{self.num_samples // self.batch_size} batches "
                f"of {self.batch_size})"
            )
        super().set_epoch(epoch)
        self.start_batch = start_batch

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start_batch * self.batch_size :])

    def __len__(self) -> int:
        return self.num_samples - self.start_batch * self.batch_size
