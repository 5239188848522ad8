"""Keras suite: TensorFlow backend; this process must never import torch."""

import os
import sys

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")


@pytest.fixture(autouse=True)
def _no_torch_here():
    yield
    assert "torch" not in sys.modules, "a keras test imported torch"
