"""Shared fixtures of the benchmark scripts' tests."""

import numpy as np
import pytest

from laudnet.data.idx import write_idx


@pytest.fixture(scope="session")
def fashion_root(tmp_path_factory):
    """The four Fashion-MNIST files with 60 train and 30 test generated items (a bar whose angle is the class)."""
    root = tmp_path_factory.mktemp("fashion")
    yy, xx = np.mgrid[0:28, 0:28] - 13.5
    for prefix, count, seed in (("train", 60, 1), ("t10k", 30, 2)):
        rng = np.random.default_rng(seed)
        labels = np.arange(count) % 10
        images = np.zeros((count, 28, 28), np.uint8)
        for k, label in enumerate(labels):
            bar = (np.abs(np.cos(np.pi * label / 10) * yy - np.sin(np.pi * label / 10) * xx) < 3) & \
                (np.hypot(yy, xx) < 12)
            images[k][bar] = rng.integers(150, 256, size=int(bar.sum()))
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return root
