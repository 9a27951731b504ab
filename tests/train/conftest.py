"""Generated data for the training tests: Fashion-MNIST-shaped IDX files and an ImageNet-style image folder."""

from __future__ import annotations

import pytest
import torch
from helpers import write_fashion_mnist


@pytest.fixture(scope="session")
def fashion_root(tmp_path_factory):
    """A folder with the four Fashion-MNIST files: 200 train and 100 test generated items."""
    return write_fashion_mnist(tmp_path_factory.mktemp("fashion"), train=200, test=100)


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
