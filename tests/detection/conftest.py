"""Shared set-up of the detection tests: one intra-op thread (the machine's cores are shared), tiny images."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def fashion_root(tmp_path_factory):
    """Generated Fashion-MNIST IDX files (40 train, 20 test items)."""
    from helpers import write_fashion_mnist

    return write_fashion_mnist(tmp_path_factory.mktemp("fashion"), 40, 20)


@pytest.fixture(scope="session")
def canvases(fashion_root):
    """Two fashion-canvas-det training images of 64×96 pixels."""
    from laudnet.detection import fashion_canvas_det

    return fashion_canvas_det(fashion_root, "train", height=64, width=96, num_samples=2)
