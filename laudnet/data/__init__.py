"""Datasets and loaders for training: ImageNet-style folders, Fashion-MNIST and ``fashion-canvas``.

``build_dataset(name, ...)`` builds any of them by name; ``build_loader(...)`` wraps one in a DataLoader whose sampler
is sharded under DDP and resumable mid-epoch (see :mod:`laudnet.data.sampler` for how to restore data order). The
detection sets (``fashion-canvas-det``, ``coco``) are named here and built by `laudnet.detection.task`.
"""

from __future__ import annotations

import atexit
import os
import signal
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, default_collate

from laudnet.data.canvas import FashionCanvas as FashionCanvas
from laudnet.data.canvas import fashion_canvas as fashion_canvas
from laudnet.data.fashion import CLASSES as FASHION_CLASSES
from laudnet.data.fashion import FashionMNIST as FashionMNIST
from laudnet.data.idx import read_idx as read_idx
from laudnet.data.idx import write_idx as write_idx
from laudnet.data.sampler import ResumableSampler as ResumableSampler

# torchvision (about 1-6 s to import) is only loaded when image folders are used: `laudnet.data.folder` is imported
# lazily here and in build_dataset(), so config validation and DDP workers stay light.
_LAZY = {"ImageFolderDataset": "laudnet.data.folder", "build_transforms": "laudnet.data.folder"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Canonical names; aliases map onto them.
DATASETS = ("imagefolder", "fashion-mnist", "fashion-canvas")
_ALIASES = {"imagenet": "imagefolder"}
# The sets of `laudnet train --task detection|instance` (built by `laudnet.detection.task`).
DETECTION_DATASETS = ("fashion-canvas-det", "coco")


def canonical_name(name: str, task: str = "classification") -> str:
    """The canonical dataset name for ``name`` (resolving aliases), or a ValueError listing the choices.

    Args:
        name: the dataset name.
        task: ``classification`` (image folders, Fashion-MNIST, fashion-canvas) or ``detection`` / ``instance``
            (`DETECTION_DATASETS`); a set of the other kind is refused naming the ``--task`` it needs.
    """
    key = _ALIASES.get(name, name)
    if task != "classification":
        if key not in DETECTION_DATASETS:
            kind = " is a classification set" if key in DATASETS else ""
            raise ValueError(f"{'dataset ' + repr(name) + kind if kind else 'unknown detection dataset ' + repr(name)}"
                             f"; --task {task} takes one of: {', '.join(DETECTION_DATASETS)}")
        return key
    if key in DETECTION_DATASETS:
        raise ValueError(f"dataset {name!r} is a detection set: train it with --task detection or --task instance")
    if key not in DATASETS:
        choices = ", ".join([*DATASETS, *(f"{a} (= {t})" for a, t in _ALIASES.items())])
        raise ValueError(f"unknown dataset {name!r}; choose from: {choices} (detection, with --task detection: "
                         f"{', '.join(DETECTION_DATASETS)})")
    return key


def build_dataset(
    name: str, root: str | os.PathLike | None = None, split: str = "train", image_size: int = 224, **kw
) -> Dataset:
    """Build a dataset by name.

    Args:
        name: ``imagefolder`` (alias ``imagenet``), ``fashion-mnist`` or ``fashion-canvas``.
        root: data folder; required for ``imagefolder``; default for the Fashion ones: the Debian package's folder.
        split: ``train``, ``val`` or ``test`` (``val`` and ``test`` both mean Fashion-MNIST's test set).
        image_size: output side (the canvas side for ``fashion-canvas``).
        **kw: dataset options: ``num_samples`` for all; ``download`` for the Fashion ones; ``train_transforms`` for
            ``imagefolder``; ``num_clutter``, ``scale_range``, ``fragment_range``, ``seed``, ``normalize``,
            ``return_box`` for ``fashion-canvas``.

    Returns:
        A map-style dataset giving ``(image, label)`` with 3-channel normalised float images.
    """
    key = canonical_name(name)
    if key == "imagefolder":
        if root is None:
            raise ValueError(f"dataset {name!r} needs a data root (root/train/<class>/..., root/val/<class>/...)")
        from laudnet.data.folder import ImageFolderDataset

        return ImageFolderDataset(root, split, image_size, **kw)
    if key == "fashion-mnist":
        return FashionMNIST(root, split, image_size, **kw)
    return fashion_canvas(root, split, canvas_size=image_size, **kw)


def num_classes(name: str, root: str | os.PathLike | None = None) -> int:
    """Number of classes of dataset ``name`` (read from the train folder for ``imagefolder``)."""
    key = canonical_name(name)
    if key == "imagefolder":
        if root is None:
            raise ValueError(f"dataset {name!r} needs a data root to count its classes")
        from laudnet.data.folder import class_names

        return len(class_names(root))
    return len(FASHION_CLASSES)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: workers ignore SIGTERM and SIGINT and leave the stopping to the main process.

    ``timeout``, Slurm, Kubernetes and Ctrl-C signal the whole process group. Workers that died of it first made the
    main process fail with ``DataLoader worker (pid ...) is killed by signal: Terminated`` before it could save; now
    the main process saves, then shuts its workers down (they also exit on their own if the main process dies).
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# Loaders with worker processes, shut down at exit (see _shutdown_workers_at_exit).
_LOADERS_WITH_WORKERS: weakref.WeakSet[DataLoader] = weakref.WeakSet()
_AT_EXIT_REGISTERED = False


def _shutdown_workers_at_exit() -> None:
    # multiprocessing's own exit handler stops daemonic children with SIGTERM and then joins them; workers ignore
    # SIGTERM, so a loader still alive at exit (an error left it in a traceback cycle) would hang the process there.
    # Registered after multiprocessing's handler, this one runs first (atexit is LIFO) and stops them the normal way.
    for loader in list(_LOADERS_WITH_WORKERS):
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()


def collate_skipping_bad(samples: list):
    """``default_collate`` of the samples that are not ``None`` (unreadable images a dataset chose to skip).

    Raises:
        ValueError: every sample of the batch was skipped.
    """
    kept = [s for s in samples if s is not None]
    if not kept:
        raise ValueError(f"all {len(samples)} images of a batch are unreadable (see the warnings naming them)")
    return default_collate(kept)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool = True,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool | None = None,
    pin_memory: bool = False,
    collate_fn: Callable[[list], Any] | None = None,
) -> DataLoader:
    """A DataLoader with a :class:`ResumableSampler`, sharded when a process group is initialised.

    Call ``loader.sampler.set_epoch(epoch)`` before each epoch (``set_epoch(epoch, start_batch=k)`` to resume after
    ``k`` batches); the order depends only on ``seed`` and ``epoch``.

    Args:
        dataset: the dataset; samples that are ``None`` (skipped unreadable images) are dropped from their batch.
        batch_size: per-process batch size.
        train: shuffle each epoch and (by default) drop the last incomplete batch.
        seed: data-order seed, also the seed of the workers' random augmentation.
        num_workers: loader worker processes; they ignore SIGTERM and SIGINT (:func:`ignore_stop_signals`).
        drop_last: drop incomplete batches; default: ``train``.
        pin_memory: pin host memory (for CUDA).
        collate_fn: how a batch's samples are put together; default `collate_skipping_bad` (stacked tensors). The
            detection sets pass `laudnet.detection.collate_detection` (lists: images differ in size). Either must
            drop the ``None`` samples of skipped images.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    drop_last = train if drop_last is None else drop_last
    world, rank = (dist.get_world_size(), dist.get_rank()) if dist.is_available() and dist.is_initialized() else (1, 0)
    # The sampler pads the shard evenly for evaluation (as DistributedSampler does) and trims it for training.
    sampler = ResumableSampler(
        dataset, batch_size, num_replicas=world, rank=rank, shuffle=train, seed=seed, drop_last=drop_last
    )
    global _AT_EXIT_REGISTERED
    if num_workers > 0 and not _AT_EXIT_REGISTERED:
        atexit.register(_shutdown_workers_at_exit)
        _AT_EXIT_REGISTERED = True
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        worker_init_fn=ignore_stop_signals if num_workers > 0 else None,
        collate_fn=collate_fn or collate_skipping_bad,
        generator=torch.Generator().manual_seed(seed),
    )
    if num_workers > 0:
        _LOADERS_WITH_WORKERS.add(loader)
    return loader
