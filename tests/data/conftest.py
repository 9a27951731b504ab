"""Tiny generated Fashion-MNIST-shaped IDX files, so the data tests need no download."""

from __future__ import annotations

import numpy as np
import pytest
from fashion_items import make_items

from laudnet.data.idx import write_idx


@pytest.fixture
def tiny_fashion(tmp_path):
    """A folder with the four Fashion-MNIST files (gzipped): 40 train and 20 test items."""
    for prefix, count, seed in (("train", 40, 1), ("t10k", 20, 2)):
        images, labels = make_items(count, seed)
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return tmp_path
