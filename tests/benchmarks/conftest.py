"""Shared fixtures of the benchmark scripts' tests."""

import pytest
from helpers import write_fashion_mnist


@pytest.fixture(scope="session")
def fashion_root(tmp_path_factory):
    """The four Fashion-MNIST files with 60 train and 30 test generated items (a bar whose angle is the class)."""
    return write_fashion_mnist(tmp_path_factory.mktemp("fashion"), 60, 30)
