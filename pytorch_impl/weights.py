"""Canonical weights in and out of a PyTorch ResNet (numpy arrays keyed by torchvision keys; docs/models.md)."""

from __future__ import annotations

import numpy as np
import torch

from shared.names import canonical_weights, check_weight_keys
from shared.spec import ModelSpec


def get_weights(model: torch.nn.Module, spec: ModelSpec) -> dict[str, np.ndarray]:
    """Every canonical parameter and BN statistic as float32 numpy arrays (PyTorch layout)."""
    state = model.state_dict()
    return {w.key: state[w.key].detach().cpu().float().numpy().copy() for w in canonical_weights(spec)}


def set_weights(model: torch.nn.Module, spec: ModelSpec, arrays: dict[str, np.ndarray]) -> None:
    """Load canonical arrays; every key must be present with the right shape, and nothing else."""
    check_weight_keys(spec, arrays)
    state = model.state_dict()
    with torch.no_grad():
        for key in arrays:
            target = state[key]
            value = torch.as_tensor(np.ascontiguousarray(arrays[key]))
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(f"{key}: expected shape {tuple(target.shape)}, got {tuple(value.shape)}")
            target.copy_(value.to(target.dtype))
