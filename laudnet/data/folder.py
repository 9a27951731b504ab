"""ImageNet-style image folders: ``root/train/<class>/*.jpg|png`` and ``root/val/<class>/...``.

Transforms follow the usual ImageNet recipe (and the official one): RandomResizedCrop + horizontal flip for training,
resize to ``size·256/224`` + centre crop for evaluation, both normalised with the ImageNet mean and std. The folders
are checked up front so a wrong path fails with a message naming it, before any long work starts.

Unreadable images (a truncated JPEG, a file that is no image) are met only when read, as real folders have a few:
``on_bad_image="skip"`` (default) warns once naming the file, counts it and yields ``None``, which the loader's collate
(:func:`laudnet.data.collate_skipping_bad`) drops from the batch; ``"error"`` raises :class:`BadImageError` naming it.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torchvision import transforms
from torchvision.datasets import ImageFolder

from laudnet.data.canvas import IMAGENET_MEAN, IMAGENET_STD

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Folder names tried for each split, in order: evaluation data is "val" in ImageNet, "test" elsewhere.
_SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "test"), "test": ("test", "val")}
BAD_IMAGE_POLICIES = ("skip", "error")


class BadImageError(ValueError):
    """An image file that cannot be decoded, under ``on_bad_image="error"``."""


class BadImages:
    """What a dataset does with image files that cannot be decoded, and how many it skipped.

    Args:
        policy: ``skip`` (a warning naming the file, counted in :attr:`count`, the read gives ``None``) or ``error``
            (:class:`BadImageError` naming it).
    """

    def __init__(self, policy: str = "skip") -> None:
        if policy not in BAD_IMAGE_POLICIES:
            raise ValueError(f"on_bad_image must be one of {', '.join(BAD_IMAGE_POLICIES)}, got {policy!r}")
        self.policy = policy
        # Shared with the DataLoader workers (inherited at their start), so the main process sees their count.
        self._count = multiprocessing.Value("l", 0)

    @property
    def count(self) -> int:
        """Images skipped so far, by this process and its DataLoader workers (each read counts)."""
        return int(self._count.value)

    def read(self, path: str | os.PathLike, loader: Callable[[Any], Any], stacklevel: int = 3) -> Any | None:
        """``loader(path)``, or ``None`` for an undecodable file under ``skip``."""
        try:
            return loader(path)  # PIL decodes in convert("RGB"), so truncation surfaces here
        except (OSError, SyntaxError) as err:  # PIL's errors of corrupt files (UnidentifiedImageError is an OSError)
            detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if self.policy == "error":
                raise BadImageError(
                    f"unreadable image {path} ({detail}); remove or replace it, or pass --on-bad-image skip"
                ) from None
            with self._count.get_lock():
                self._count.value += 1
            warnings.warn(f"skipping unreadable image {path} ({detail})", stacklevel=stacklevel)
            return None


def build_transforms(image_size: int = 224, train: bool = True) -> transforms.Compose:
    """The standard ImageNet transforms.

    Args:
        image_size: side of the output crop.
        train: RandomResizedCrop + flip when True; resize to ``image_size·256/224`` + centre crop when False.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if train:
        steps = [transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip()]
    else:
        steps = [transforms.Resize(round(image_size * 256 / 224)), transforms.CenterCrop(image_size)]
    return transforms.Compose([*steps, transforms.ToTensor(), normalize])


def split_folder(root: str | os.PathLike, split: str) -> Path:
    """The folder of ``split`` under ``root``, checked to hold class folders with images.

    Raises:
        FileNotFoundError: missing root or split folder.
        ValueError: unknown split, a split folder without class folders, or class folders without images.
    """
    root = Path(root)
    if split not in _SPLIT_FOLDERS:
        raise ValueError(f"unknown split {split!r}; choose from: {', '.join(_SPLIT_FOLDERS)}")
    if not root.is_dir():
        raise FileNotFoundError(f"image folder root {root} does not exist")
    candidates = [root / name for name in _SPLIT_FOLDERS[split]]
    folder = next((c for c in candidates if c.is_dir()), None)
    if folder is None:
        tried = " or ".join(str(c) for c in candidates)
        raise FileNotFoundError(f"split folder {tried} does not exist (expected root/<split>/<class>/<image>)")
    classes = sorted(d for d in folder.iterdir() if d.is_dir())
    if not classes:
        raise ValueError(f"{folder} has no class folders (expected {folder}/<class>/<image>)")
    empty = [d.name for d in classes if not any(f.suffix.lower() in IMAGE_EXTENSIONS for f in d.rglob("*"))]
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise ValueError(f"{folder} has class folders without images ({', '.join(IMAGE_EXTENSIONS)}): {shown}")
    return folder


def class_names(root: str | os.PathLike) -> list[str]:
    """Class names, from the train folder (the one that defines the label indices)."""
    return sorted(d.name for d in split_folder(root, "train").iterdir() if d.is_dir())


class ImageFolderDataset(ImageFolder):
    """An ImageNet-style split with the standard transforms.

    Labels are indices into the *train* folder's sorted class names, so a val folder missing a class still gets the
    same indices as training.

    Args:
        root: the dataset root holding ``train/`` and ``val/`` (or ``test/``).
        split: ``train``, ``val`` or ``test``.
        image_size: output side.
        train_transforms: use the training augmentation; default: only for the train split.
        num_samples: keep a deterministic subset of this size: evenly spaced images, so every class stays represented.
        on_bad_image: ``skip`` an unreadable image (a warning naming it; counted in :attr:`bad_images`; the sample is
            ``None``) or raise :class:`BadImageError` naming it (``error``).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        image_size: int = 224,
        train_transforms: bool | None = None,
        num_samples: int | None = None,
        on_bad_image: str = "skip",
    ) -> None:
        self._bad = BadImages(on_bad_image)
        self.on_bad_image = on_bad_image
        folder = split_folder(root, split)
        self._train_classes = class_names(root)
        train = split == "train" if train_transforms is None else train_transforms
        super().__init__(str(folder), transform=build_transforms(image_size, train))
        unknown = sorted(set(self.classes) - set(self._train_classes))
        if unknown:
            raise ValueError(f"{folder} has classes absent from the train folder: {', '.join(unknown[:5])}")
        remap = {i: self._train_classes.index(name) for i, name in enumerate(self.classes)}
        self.samples = [(path, remap[target]) for path, target in self.samples]
        self.classes, self.class_to_idx = self._train_classes, {c: i for i, c in enumerate(self._train_classes)}
        if num_samples is not None:
            if not 0 < num_samples <= len(self.samples):
                raise ValueError(f"num_samples must be in 1..{len(self.samples)} for {folder}, got {num_samples}")
            step = len(self.samples) / num_samples
            self.samples = [self.samples[int(i * step)] for i in range(num_samples)]
        self.imgs = self.samples
        self.targets = [t for _, t in self.samples]
        self.split = split

    @property
    def bad_images(self) -> int:
        """Unreadable images skipped so far, by this process and its DataLoader workers (each read counts)."""
        return self._bad.count

    def __getitem__(self, index: int) -> tuple[Any, int] | None:
        path, target = self.samples[index]
        sample = self._bad.read(path, self.loader)
        if sample is None:
            return None
        if self.transform is not None:
            sample = self.transform(sample)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return sample, target
