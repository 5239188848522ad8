"""PyTorch suite: this process must never import tensorflow (torch.export would crash)."""

import sys

import pytest


@pytest.fixture(autouse=True)
def _no_tensorflow_here():
    yield
    assert "tensorflow" not in sys.modules, "a torch test imported tensorflow"
