"""A generated, learnable 10-class 32x32 set of coloured stripes, in two sizes (docs/data.md).

``synthetic`` (2,000 / 500 / 500) is for smoke runs and CI; ``synthetic_cifar`` (45,000 / 5,000 / 10,000, prepared
CIFAR-10's splits) times the full CIFAR recipe where CIFAR-10 cannot be downloaded. Deterministic from the seed;
its manifest says ``synthetic: true``.
"""

from __future__ import annotations

import numpy as np

GENERATOR_VERSION = "stripes-v1"
# The splits of each synthetic dataset: "synthetic_cifar" has the sizes of prepared CIFAR-10 (its 50,000
# training images less the 5,000 validation images carved from them, and the 10,000 test images).
SIZES = {"train": 2000, "val": 500, "test": 500}
CIFAR_SIZES = {"train": 45_000, "val": 5_000, "test": 10_000}
DATASET_SIZES = {"synthetic": SIZES, "synthetic_cifar": CIFAR_SIZES}
PALETTE = np.array([[0.9, 0.15, 0.15], [0.15, 0.8, 0.2], [0.2, 0.3, 0.95], [0.95, 0.85, 0.1], [0.85, 0.2, 0.85]])
CLASS_NAMES = [f"{c}_{o}" for o in ("horizontal", "vertical") for c in ("red", "green", "blue", "yellow", "magenta")]
CHUNK = 2048  # images drawn per block: bounded memory, and the same random stream as one block


def generate(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (uint8 [n, size, size, 3]) and balanced labels (int64), a function of ``seed``.

    Every per-image parameter is drawn first, then the pixels block by block; numpy's normal stream is
    the same drawn in blocks as at once, so the result does not depend on :data:`CHUNK`.
    """
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 10).astype(np.int64)
    vertical = y >= 5
    freq = rng.uniform(2.0, 4.0, size=(n, 1, 1))
    phase = rng.uniform(0.0, 2 * np.pi, size=(n, 1, 1))
    fg = np.clip(PALETTE[y % 5] + rng.normal(0.0, 0.08, size=(n, 3)), 0, 1)
    bg = np.clip(rng.uniform(0.25, 0.75, size=(n, 1)) + rng.normal(0.0, 0.05, size=(n, 3)), 0, 1)
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for lo in range(0, n, CHUNK):
        hi = min(n, lo + CHUNK)
        coord = np.where(vertical[lo:hi, None, None], xx[None], yy[None]).astype(np.float64)
        s = (0.5 + 0.5 * np.sin(2 * np.pi * freq[lo:hi] * coord / size + phase[lo:hi]))[..., None]
        img = s * fg[lo:hi, None, None, :]
        img += (1 - s) * bg[lo:hi, None, None, :]
        img += rng.normal(0.0, 0.08, size=img.shape)
        np.clip(img, 0, 1, out=img)
        img *= 255
        out[lo:hi] = np.round(img, out=img)
    return out, y


def splits(seed: int = 0, name: str = "synthetic") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The train/val/test splits of ``name`` (:data:`DATASET_SIZES`), each from its own stream derived from ``seed``."""
    return {split: generate(n, seed * 1000 + i) for i, (split, n) in enumerate(DATASET_SIZES[name].items())}


def meta(seed: int = 0, name: str = "synthetic") -> dict:
    """Manifest fields of the synthetic set ``name``."""
    return {"name": name, "class_names": CLASS_NAMES, "synthetic": True,
            "source": "procedurally generated (datasets/synthetic.py)", "version": GENERATOR_VERSION,
            "seed": seed}
