"""Shared test set-up: CPU by default (TORCH_DEVICE overrides), deterministic seeds, small threads count."""

import os

import pytest
import torch

# Without a GPU, Triton kernels are tested under the interpreter; the variable must be set before triton.jit runs
# (at the first import of a kernel module). Kernels then run only where a test asks (LAUDNET_KERNELS=triton).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = torch.device(os.environ.get("TORCH_DEVICE", "cpu"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def no_torchrun(monkeypatch):
    """The test runs as if not launched by torchrun (its variables unset)."""
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
