"""Fixtures and metrics for the spatial/layer kernel tests (a plain module with a unique name, imported by them).

Kept out of `conftest.py` (and under a unique module name) so that it cannot clash with the conftest files of the
tests tree. Test modules import the fixture functions, which registers them under their `name=`.
"""

import pytest
import torch

from laudnet.kernels._utils import triton_available


@pytest.fixture(name="interpret")
def interpret_fixture(monkeypatch):
    """Run Triton kernels on CPU tensors through the interpreter (kernels are jitted lazily, so order is free)."""
    if not triton_available():
        pytest.skip("triton is not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("LAUDNET_KERNELS", raising=False)


@pytest.fixture(name="cuda")
def cuda_fixture(monkeypatch):
    """A CUDA device with compiled Triton kernels (the interpreter switched off)."""
    if not torch.cuda.is_available() or not triton_available():
        pytest.skip("needs a CUDA device and triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("LAUDNET_KERNELS", raising=False)
    return torch.device("cuda")


def err_ratio(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative RMS error ||out - ref|| / ||ref|| in float64 (0 when both are zero)."""
    out, ref = out.double(), ref.double()
    den = ref.norm().item()
    num = (out - ref).norm().item()
    return num / den if den > 0 else num
