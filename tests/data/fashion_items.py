"""Distinct synthetic 28×28 items shaped like Fashion-MNIST, shared by the data tests."""

from __future__ import annotations

import numpy as np


def make_items(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` distinct 28×28 uint8 items: a bright random rectangle with noise inside; labels cycle 0..9."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 28, 28), np.uint8)
    for k in range(count):
        y0, x0 = rng.integers(0, 10, size=2)
        y1, x1 = rng.integers(18, 28, size=2)
        images[k, y0:y1, x0:x1] = rng.integers(120, 256, size=(y1 - y0, x1 - x0))
    return images, np.arange(count) % 10
