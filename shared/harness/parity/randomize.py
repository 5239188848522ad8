"""Random weights for a parity check, and the BN statistics calibrated to the batch they will see.

Only the BN that closes each residual branch (and each projection shortcut's) is calibrated, so that a deep residual
net does not explode in eval mode; the others stay random (why: docs/harness.md, "Parity"). Which layers and the law
live here; the framework side computes the inputs' statistics (``pytorch_impl/parity.py``).
"""

from __future__ import annotations

import numpy as np

from shared.names import canonical_weights
from shared.spec import ModelSpec

# running_mean = mean + N(0, MEAN_SHIFT) * std, running_var = var * U(VAR_FACTOR): within a few tens of
# percent of the batch's own statistics, so eval-mode outputs stay O(1) but differ from train mode.
MEAN_SHIFT = 0.2
VAR_FACTOR = (0.7, 1.4)


def randomize_arrays(spec: ModelSpec, arrays: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """Fresh random values for every canonical tensor, shaped like ``arrays`` (PyTorch layout).

    Convolutions He-normal on fan-in, BN gamma U(0.5, 1.5), beta N(0, 0.2), running mean
    N(0, 0.2), running variance U(0.5, 2), the classifier N(0, 1/fan_in) with bias N(0, 0.2):
    every value differs from its neighbours, so a swapped mapping changes the function.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for w in canonical_weights(spec):
        shape = arrays[w.key].shape
        leaf = w.key.rsplit(".", 1)[1]
        if w.kind == "conv":
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        elif w.kind == "linear" and leaf == "weight":
            value = rng.normal(0.0, np.sqrt(1.0 / shape[1]), shape)
        elif leaf == "weight":  # BN gamma
            value = rng.uniform(0.5, 1.5, shape)
        elif leaf == "running_var":
            value = rng.uniform(0.5, 2.0, shape)
        else:  # BN beta, running mean, classifier bias
            value = rng.normal(0.0, 0.2, shape)
        out[w.key] = value.astype(np.float32)
    return out


def calibrated_layers(spec: ModelSpec) -> list[str]:
    """The BNs whose statistics are calibrated: in residual nets, the last BN of every block's branch and
    every projection shortcut's BN (the ones whose outputs are added to the stream); none in plain nets."""
    if not spec.residual:
        return []
    last = "bn3" if spec.block == "bottleneck" else "bn2"
    names = []
    for b in spec.blocks():
        names.append(f"{b.name}.{last}")
        if b.shortcut == "projection":
            names.append(f"{b.name}.downsample.1")
    return names


def calibration_rng(seed: int) -> np.random.Generator:
    """The generator of the calibration factors (drawn in forward order, one BN after the other)."""
    return np.random.default_rng([seed, 1])


def calibrated_stats(mean: np.ndarray, var: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Running (mean, variance) for one BN whose input has per-channel ``mean`` and biased ``var``.

    The mean moves by N(0, MEAN_SHIFT) of the channel's standard deviation and the variance is scaled
    by U(VAR_FACTOR): the BN's eval output stays O(1) whatever the depth, but is not the train-mode one.
    """
    mean, var = np.asarray(mean, np.float64), np.asarray(var, np.float64)
    shift = rng.normal(0.0, MEAN_SHIFT, mean.shape)
    factor = rng.uniform(*VAR_FACTOR, var.shape)
    return (mean + shift * np.sqrt(var)).astype(np.float32), (var * factor).astype(np.float32)


def make_batch(spec: ModelSpec, batch: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A standard-normal NCHW float32 batch and integer labels."""
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((batch, spec.in_channels, size, size)).astype(np.float32)
    y = rng.integers(0, spec.num_classes, batch).astype(np.int64)
    return x, y
