"""Canonical weights in and out of a Keras ResNet (numpy arrays keyed by torchvision keys; docs/models.md)."""

from __future__ import annotations

import keras
import numpy as np

from shared.names import canonical_weights, check_weight_keys, to_keras_layout, to_torch_layout
from shared.spec import ModelSpec


def _variables(model: keras.Model) -> dict[str, keras.Variable]:
    return {v.path: v for v in model.weights}


def get_weights(model: keras.Model, spec: ModelSpec) -> dict[str, np.ndarray]:
    """Every canonical parameter and BN statistic as float32 numpy arrays (PyTorch layout)."""
    variables = _variables(model)
    return {
        w.key: np.ascontiguousarray(
            to_torch_layout(w.kind, keras.ops.convert_to_numpy(variables[w.keras_path]))
        ).astype(np.float32)
        for w in canonical_weights(spec)
    }


def set_weights(model: keras.Model, spec: ModelSpec, arrays: dict[str, np.ndarray]) -> None:
    """Load canonical arrays; every key must be present with the right shape, and nothing else."""
    check_weight_keys(spec, arrays)
    variables = _variables(model)
    for w in canonical_weights(spec):
        var = variables[w.keras_path]
        value = to_keras_layout(w.kind, np.asarray(arrays[w.key]))
        if tuple(value.shape) != tuple(var.shape):
            raise ValueError(f"{w.key}: expected shape {tuple(var.shape)}, got {tuple(value.shape)}")
        var.assign(value.astype(var.dtype))
