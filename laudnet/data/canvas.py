"""``fashion-canvas``: a real-image benchmark where *where* matters, built from Fashion-MNIST.

Each sample places one Fashion-MNIST item at a random position and scale on an N×N black canvas (default 224, so the
stage outputs of an ImageNet CNN are 56/28/14/7) among clutter made of fragments (crops) of other items of the same
split; the label is the item's class. A spatially dynamic network only needs to compute where the item is, so its
spatial masks can be checked against the item's bounding box.

Sample ``i`` depends only on ``(seed, split, i)``: it is rendered on the fly in ``__getitem__`` from its own random
generator, so every worker, DDP rank and resumed run sees the same image for the same index. Train and test samples
are drawn from Fashion-MNIST's own train and test splits (clutter too), so no test item leaks into training.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from laudnet.data.fashion import CLASSES, load_fashion_arrays

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_SPLIT_CODES = {"train": 0, "val": 1, "test": 1}
# An item pixel counts as part of the item (for its tight box) above this intensity in [0, 1].
_BOX_THRESHOLD = 0.1


@dataclass
class CanvasSample:
    """One rendered sample with everything known about it.

    Attributes:
        image: ``(3, N, N)`` float tensor, normalised as the dataset returns it.
        grey: ``(N, N)`` canvas in [0, 1] before normalisation (for plots).
        label: the item's class.
        box: tight box of the item's visible pixels, ``(x0, y0, x1, y1)``, end exclusive, in canvas pixels.
        placed_box: the square the item was resized into, same convention.
        source_index: index of the item in the Fashion-MNIST split.
    """

    image: torch.Tensor
    grey: torch.Tensor
    label: int
    box: tuple[int, int, int, int]
    placed_box: tuple[int, int, int, int]
    source_index: int


def _resize(patch: torch.Tensor, height: int, width: int) -> torch.Tensor:
    # antialias keeps small fragments from aliasing when shrunk; it is a no-op cost when enlarging.
    return F.interpolate(patch[None, None], size=(height, width), mode="bilinear", antialias=True)[0, 0].clamp_(0, 1)


class FashionCanvas(Dataset):
    """Fashion-MNIST items placed on a cluttered canvas; see the module docstring.

    Args:
        images: uint8 ``(M, h, w)`` source items (one Fashion-MNIST split).
        labels: ``(M,)`` their classes.
        split: ``train`` or ``test`` (alias ``val``); selects the random stream, so the two splits differ.
        canvas_size: side N of the square canvas.
        num_samples: dataset length; default ``M``. Fewer takes a seeded random subset of the items; more repeats
            items at new positions.
        num_clutter: fragments of other items drawn under the item.
        scale_range: the item's side as a fraction of N, drawn uniformly from this range.
        fragment_range: a fragment's height and width as a fraction of the source item's side.
        seed: the dataset seed; sample ``i`` is a function of ``(seed, split, i)`` only.
        normalize: normalise with ImageNet mean/std (the models are ImageNet CNNs); off gives [0, 1] values.
        return_box: ``__getitem__`` returns ``(image, label, box)`` with ``box`` an int64 ``(4,)`` tensor.
    """

    classes = CLASSES

    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor,
        split: str = "train",
        canvas_size: int = 224,
        num_samples: int | None = None,
        num_clutter: int = 6,
        scale_range: tuple[float, float] = (0.25, 0.5),
        fragment_range: tuple[float, float] = (0.25, 0.5),
        seed: int = 0,
        normalize: bool = True,
        return_box: bool = False,
    ) -> None:
        images = torch.as_tensor(images)
        labels = torch.as_tensor(labels).long()
        if images.ndim != 3 or images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 (M, h, w), got {images.dtype} of shape {tuple(images.shape)}")
        if labels.shape != (len(images),):
            raise ValueError(f"labels must have shape ({len(images)},), got {tuple(labels.shape)}")
        if len(images) < 2:
            raise ValueError(f"need at least 2 source items (one item plus clutter from others), got {len(images)}")
        if split not in _SPLIT_CODES:
            raise ValueError(f"unknown split {split!r}; choose from: {', '.join(_SPLIT_CODES)}")
        if canvas_size < 8:
            raise ValueError(f"canvas_size must be at least 8, got {canvas_size}")
        for name, (lo, hi) in (("scale_range", scale_range), ("fragment_range", fragment_range)):
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"{name} must satisfy 0 < low <= high <= 1, got {(lo, hi)}")
        if num_clutter < 0:
            raise ValueError(f"num_clutter must be >= 0, got {num_clutter}")
        if num_samples is not None and num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        self.images = images.float().div_(255.0)
        self.labels = labels
        self.split = split
        self.canvas_size = canvas_size
        self.num_samples = len(images) if num_samples is None else num_samples
        self.num_clutter = num_clutter
        self.scale_range = tuple(scale_range)
        self.fragment_range = tuple(fragment_range)
        self.seed = seed
        self.normalize = normalize
        self.return_box = return_box
        # Which item each index shows: a seeded permutation, so a subset is a random (class-balanced on average) one.
        order = np.random.default_rng([seed, _SPLIT_CODES[split], 0x5EED]).permutation(len(images))
        self._order = torch.from_numpy(order)
        self._mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return self.num_samples

    def source_index(self, index: int) -> int:
        """Index in the source split of the item shown by sample ``index``."""
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for fashion-canvas of {self.num_samples} samples")
        return int(self._order[index % self.num_samples % len(self._order)])

    def sample(self, index: int) -> CanvasSample:
        """Render sample ``index`` with its label and boxes."""
        source = self.source_index(index)
        index %= self.num_samples
        rng = np.random.default_rng([self.seed, _SPLIT_CODES[self.split], index])
        n, (src_h, src_w) = self.canvas_size, self.images.shape[1:]
        # Item placement is drawn first, so changing num_clutter leaves positions and scales unchanged.
        side = int(np.clip(round(rng.uniform(*self.scale_range) * n), 4, n))
        x0, y0 = (int(v) for v in rng.integers(0, n - side + 1, size=2))
        canvas = torch.zeros(n, n)
        for _ in range(self.num_clutter):
            other = int(rng.integers(0, len(self.images) - 1))
            other += other >= source  # never a fragment of the item itself
            fy_frac, fx_frac = rng.uniform(*self.fragment_range, size=2)
            ch, cw = max(1, round(fy_frac * src_h)), max(1, round(fx_frac * src_w))
            cy, cx = int(rng.integers(0, src_h - ch + 1)), int(rng.integers(0, src_w - cw + 1))
            zoom = rng.uniform(*self.scale_range) * n / max(src_h, src_w)  # fragments share the items' scale law
            fh, fw = min(n, max(1, round(ch * zoom))), min(n, max(1, round(cw * zoom)))
            fy, fx = int(rng.integers(0, n - fh + 1)), int(rng.integers(0, n - fw + 1))
            patch = _resize(self.images[other, cy : cy + ch, cx : cx + cw], fh, fw)
            region = canvas[fy : fy + fh, fx : fx + fw]
            torch.maximum(region, patch, out=region)
        item = _resize(self.images[source], side, side)
        region = canvas[y0 : y0 + side, x0 : x0 + side]
        torch.maximum(region, item, out=region)
        rows = torch.nonzero((item > _BOX_THRESHOLD).any(1)).flatten()
        cols = torch.nonzero((item > _BOX_THRESHOLD).any(0)).flatten()
        placed = (x0, y0, x0 + side, y0 + side)
        if len(rows):
            box = (x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1)
        else:  # a blank item: fall back to the square it occupies
            box = placed
        image = canvas.expand(3, n, n)
        image = (image - self._mean) / self._std if self.normalize else image.contiguous()
        return CanvasSample(image, canvas, int(self.labels[source]), box, placed, source)

    def __getitem__(self, index: int):
        s = self.sample(index)
        if self.return_box:
            return s.image, s.label, torch.tensor(s.box, dtype=torch.int64)
        return s.image, s.label

    def denormalize(self, image: torch.Tensor) -> torch.Tensor:
        """Undo the normalisation of ``image`` (``(3, N, N)`` or ``(B, 3, N, N)``) back to [0, 1]."""
        if not self.normalize:
            return image
        return image * self._std.to(image) + self._mean.to(image)


def fashion_canvas(
    root: str | os.PathLike | None = None, split: str = "train", download: bool = False, **kwargs
) -> FashionCanvas:
    """Build ``fashion-canvas`` from the Fashion-MNIST IDX files in ``root``.

    Args:
        root: folder with the IDX files (default: the Debian package's folder).
        split: ``train`` or ``test`` (alias ``val``).
        download: fetch Fashion-MNIST with torchvision when missing.
        **kwargs: options of :class:`FashionCanvas` (``canvas_size``, ``num_samples``, ``num_clutter``, ...).
    """
    images, labels = load_fashion_arrays(root, split, download)
    return FashionCanvas(images, labels, split=split, **kwargs)
