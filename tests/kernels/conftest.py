"""Kernel tests run the Triton kernels: compiled on a GPU, interpreted on CPU (TRITON_INTERPRET=1, see conftest)."""

import pytest


@pytest.fixture(autouse=True)
def _force_triton(monkeypatch):
    monkeypatch.setenv("LAUDNET_KERNELS", "triton")
