"""Shared test set-up: CPU by default (TORCH_DEVICE overrides), deterministic seeds, small threads count."""

import os

import pytest
import torch

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
