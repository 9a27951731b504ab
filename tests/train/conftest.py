"""Generated data for the training tests: Fashion-MNIST-shaped IDX files and an ImageNet-style image folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from laudnet.data.idx import write_idx


def make_fashion_items(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28×28 uint8 items whose class decides their shape (a bar at a class-dependent angle), so they are learnable."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    yy, xx = np.mgrid[0:28, 0:28] - 13.5
    images = np.zeros((count, 28, 28), np.uint8)
    for k, label in enumerate(labels):
        angle = np.pi * label / 10 + rng.normal(0, 0.05)
        dist = np.abs(np.cos(angle) * yy - np.sin(angle) * xx)
        bar = (dist < 3) & (np.hypot(yy, xx) < 12)
        images[k][bar] = rng.integers(150, 256, size=int(bar.sum()))
    return images, labels


@pytest.fixture(scope="session")
def fashion_root(tmp_path_factory):
    """A folder with the four Fashion-MNIST files: 200 train and 100 test generated items."""
    root = tmp_path_factory.mktemp("fashion")
    for prefix, count, seed in (("train", 200, 1), ("t10k", 100, 2)):
        images, labels = make_fashion_items(count, seed)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """An ImageNet-style folder: train/ and val/ with 3 classes of 40×40 PNGs (12 train and 4 val per class)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("imagefolder")
    g = torch.Generator().manual_seed(0)
    for split, per_class in (("train", 12), ("val", 4)):
        for c, name in enumerate(("circle", "square", "stripes")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(per_class):
                img = (torch.rand(40, 40, 3, generator=g) * 60).to(torch.uint8)
                img[:, :, c] += 150
                Image.fromarray(img.numpy()).save(folder / f"{k}.png")
    return root


@pytest.fixture(autouse=True)
def _one_thread():
    # One intra-op thread per process: fast and stable on a shared 2-core machine (the DDP test runs 2 processes).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
