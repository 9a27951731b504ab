"""Fashion-MNIST (Xiao et al., 2017) read from its standard IDX files.

The default root is where the Debian package ``dataset-fashion-mnist`` installs the four gzipped files. With
``download=True`` a missing set is fetched with torchvision's downloader (needs internet) into ``root``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from laudnet.data.idx import read_idx

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# Per-pixel mean and std of the training images scaled to [0, 1].
MEAN, STD = 0.2860, 0.3530
_PREFIX = {"train": "train", "val": "t10k", "test": "t10k"}


def _split_prefix(split: str) -> str:
    if split not in _PREFIX:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; choose from: {', '.join(_PREFIX)}")
    return _PREFIX[split]


def _find(root: Path, stem: str) -> Path | None:
    # torchvision's downloader stores the files under <root>/FashionMNIST/raw/; the Debian package directly in root.
    for folder in (root, root / "FashionMNIST" / "raw"):
        for name in (f"{stem}.gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


def load_fashion_arrays(
    root: str | os.PathLike | None = None, split: str = "train", download: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Load one split as arrays.

    Args:
        root: folder with the IDX files (default: the Debian package's folder).
        split: ``train``, or ``test`` (alias ``val``) for the 10k test set.
        download: fetch the files with torchvision when they are missing.

    Returns:
        ``(images, labels)``: uint8 ``(N, 28, 28)`` and int64 ``(N,)``.

    Raises:
        FileNotFoundError: the files are missing (and ``download`` is off), naming the folder and the file.
        ValueError: the files are corrupt or do not match each other.
    """
    root = Path(root) if root is not None else DEFAULT_ROOT
    prefix = _split_prefix(split)
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    paths = [_find(root, stem) for stem in stems]
    if None in paths and download:
        from torchvision.datasets import FashionMNIST as _TVFashion

        _TVFashion(str(root), train=prefix == "train", download=True)
        paths = [_find(root, stem) for stem in stems]
    for stem, path in zip(stems, paths, strict=True):
        if path is None:
            raise FileNotFoundError(
                f"Fashion-MNIST file {stem}[.gz] not found in {root}; install the Debian package "
                "dataset-fashion-mnist, pass root=<folder with the IDX files>, or download=True"
            )
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{paths[0]} holds {images.dtype} of shape {images.shape}, expected uint8 (N, H, W) images")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"{paths[1]} holds labels of shape {labels.shape}, expected ({len(images)},) for {paths[0]}")
    if len(labels) and labels.max() >= len(CLASSES):
        raise ValueError(f"{paths[1]} has label {labels.max()}, outside 0..{len(CLASSES) - 1}")
    return images, labels.astype(np.int64)


class FashionMNIST(Dataset):
    """Fashion-MNIST as 3-channel normalised float tensors, optionally resized.

    The models are ImageNet CNNs with 3 input channels, so the grey image is repeated on 3 channels and normalised
    with the dataset's own mean and std.

    Args:
        root: folder with the IDX files (default: ``/usr/share/datasets/fashion-mnist``).
        split: ``train`` or ``test`` (alias ``val``).
        image_size: side of the returned images (bilinear resize from 28 when different).
        download: fetch the files with torchvision when they are missing.
        num_samples: keep only the first ``num_samples`` images (quick runs).
    """

    classes = CLASSES

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "train",
        image_size: int = 28,
        download: bool = False,
        num_samples: int | None = None,
    ) -> None:
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        images, labels = load_fashion_arrays(root, split, download)
        if num_samples is not None:
            if not 0 < num_samples <= len(images):
                raise ValueError(f"num_samples must be in 1..{len(images)} for split {split!r}, got {num_samples}")
            images, labels = images[:num_samples], labels[:num_samples]
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.from_numpy(labels)
        self.image_size = image_size
        self.split = split

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index].float().div_(255.0)[None]
        if image.shape[-1] != self.image_size:
            image = F.interpolate(image[None], size=(self.image_size,) * 2, mode="bilinear", align_corners=False)[0]
        image = (image - MEAN) / STD
        return image.expand(3, -1, -1).contiguous(), int(self.labels[index])
