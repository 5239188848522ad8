"""A small, procedurally generated, learnable 10-class 32x32 RGB set for smoke runs and CI.

Class ``k`` = stripes of colour ``PALETTE[k % 5]``, horizontal for ``k < 5`` and vertical otherwise,
over a random grey background, with random stripe frequency and phase, colour jitter and pixel
noise. Both cues survive the training augmentation (a horizontal flip keeps stripes' orientation
and colour), so a small ResNet learns it in a few epochs. Deterministic from the seed; everything it
touches is named ``synthetic``.
"""

from __future__ import annotations

import numpy as np

GENERATOR_VERSION = "stripes-v1"
SIZES = {"train": 2000, "val": 500, "test": 500}
PALETTE = np.array([[0.9, 0.15, 0.15], [0.15, 0.8, 0.2], [0.2, 0.3, 0.95], [0.95, 0.85, 0.1], [0.85, 0.2, 0.85]])
CLASS_NAMES = [f"{c}_{o}" for o in ("horizontal", "vertical") for c in ("red", "green", "blue", "yellow", "magenta")]


def generate(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (uint8 [n, size, size, 3]) and balanced labels (int64), a function of ``seed``."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 10).astype(np.int64)
    vertical = y >= 5
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    coord = np.where(vertical[:, None, None], xx[None], yy[None]).astype(np.float64)
    freq = rng.uniform(2.0, 4.0, size=(n, 1, 1))
    phase = rng.uniform(0.0, 2 * np.pi, size=(n, 1, 1))
    s = 0.5 + 0.5 * np.sin(2 * np.pi * freq * coord / size + phase)
    fg = np.clip(PALETTE[y % 5] + rng.normal(0.0, 0.08, size=(n, 3)), 0, 1)
    bg = np.clip(rng.uniform(0.25, 0.75, size=(n, 1)) + rng.normal(0.0, 0.05, size=(n, 3)), 0, 1)
    img = s[..., None] * fg[:, None, None, :] + (1 - s[..., None]) * bg[:, None, None, :]
    img += rng.normal(0.0, 0.08, size=img.shape)
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8), y


def splits(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The train/val/test splits (2000/500/500), each from its own stream derived from ``seed``."""
    return {split: generate(n, seed * 1000 + i) for i, (split, n) in enumerate(SIZES.items())}


def meta(seed: int = 0) -> dict:
    """Manifest fields of the synthetic set."""
    return {"name": "synthetic", "class_names": CLASS_NAMES, "synthetic": True,
            "source": "procedurally generated (datasets/synthetic.py)", "version": GENERATOR_VERSION,
            "seed": seed}
