"""The one definition of the input pipeline that both frameworks implement: normalization, augmentation and the
plan of an epoch, drawn with numpy from ``(seed, epoch)`` alone (docs/data.md, "Loaders").

Imports neither torch nor tensorflow.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from shared import errors

# CIFAR-100's two label sets are two datasets with their own prepared folders (datasets/cifar.py says why):
# cifar100 (100 fine classes) and cifar100_coarse (20 superclasses); LABELS picks one (`make data LABELS=coarse`).
# synthetic_cifar: the synthetic set at prepared CIFAR-10's sizes (datasets/synthetic.py), for timing the CIFAR recipe.
DATASETS = ("cifar10", "cifar100", "cifar100_coarse", "cats_vs_dogs", "digits", "synthetic", "synthetic_cifar")
SYNTHETIC_DATASETS = ("synthetic", "synthetic_cifar")
CIFAR_DATASETS = ("cifar10", "cifar100", "cifar100_coarse")
LABELS = {"cifar100": {"fine": "cifar100", "coarse": "cifar100_coarse"}}
SPLITS = ("train", "val", "test")
FLIP_PROB = 0.5


@dataclass(frozen=True)
class Augment:
    """Training augmentation of one dataset: zero pad + random crop back to the image size + h-flip."""

    pad: int
    flip: bool = True

    @property
    def offsets(self) -> int:
        """Number of possible crop offsets per axis (``0..2*pad``)."""
        return 2 * self.pad + 1


AUGMENT: dict[str, Augment] = {
    **{name: Augment(pad=4) for name in CIFAR_DATASETS},
    **{name: Augment(pad=4) for name in SYNTHETIC_DATASETS},
    "digits": Augment(pad=4),  # 32x32 after preparation (datasets/digits.py): CIFAR's pad, crop and flip
    "cats_vs_dogs": Augment(pad=16),
}


def check_dataset(name: str) -> str:
    """``name`` if it is a known dataset, else a ValueError listing the choices."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid choices: {', '.join(DATASETS)}")
    return name


def with_labels(name: str, labels: str | None) -> str:
    """The dataset that holds ``name``'s ``labels`` (``cifar100`` + ``coarse`` -> ``cifar100_coarse``).

    ``labels`` None leaves ``name`` as it is; a dataset with one label set knows only ``fine``.
    """
    check_dataset(name)
    if labels is None:
        return name
    family = next((kinds for kinds in LABELS.values() if name in kinds.values()), {"fine": name})
    if labels not in family:
        raise ValueError(f"unknown labels {labels!r} for dataset {name}; valid choices: {', '.join(family)}")
    return family[labels]


def check_split(split: str) -> str:
    """``split`` if it is one of train/val/test, else a ValueError listing the choices."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid choices: {', '.join(SPLITS)}")
    return split


def augmentation(name: str) -> Augment:
    """The training augmentation of dataset ``name``."""
    return AUGMENT[check_dataset(name)]


def norm_constants(manifest: dict) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) per channel as float32 arrays, from a prepared manifest (0-1 units)."""
    mean = np.asarray(manifest["mean"], dtype=np.float32)
    std = np.asarray(manifest["std"], dtype=np.float32)
    if mean.shape != (3,) or std.shape != (3,) or not np.all(std > 0):
        raise ValueError(f"manifest mean/std must be 3 positive per-channel values; got {manifest['mean']}, "
                         f"{manifest['std']}")
    return mean, std


def normalize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """The numpy reference of the normalization: uint8 NHWC -> float32 NHWC."""
    x = x.astype(np.float32) / np.float32(255)
    return (x - mean.astype(np.float32)) / std.astype(np.float32)


@dataclass(frozen=True)
class EpochPlan:
    """What one epoch does: which images in which batch, and how each is cropped and flipped.

    ``index`` is (batches, batch_size) (the last batch may be shorter in evaluation: ``sizes``);
    ``dy``/``dx`` are crop offsets into the padded image (``pad`` = no shift) and ``flip`` a bool per
    image, all aligned with ``index``. With augmentation off, offsets are ``pad`` and flip is False.
    """

    index: np.ndarray
    dy: np.ndarray
    dx: np.ndarray
    flip: np.ndarray
    batch_size: int
    augment: bool

    def __len__(self) -> int:
        return -(-len(self.index) // self.batch_size)

    def batch(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(index, dy, dx, flip) of batch ``i``."""
        s = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return self.index[s], self.dy[s], self.dx[s], self.flip[s]


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The random stream of one epoch: a function of (seed, epoch) only."""
    return np.random.default_rng([int(seed), int(epoch), 0x5EED])


def epoch_plan(n: int, batch_size: int, *, train: bool, pad: int, seed: int = 0, epoch: int = 0) -> EpochPlan:
    """The plan of one epoch over ``n`` images.

    ``train=True``: a random permutation, the last incomplete batch dropped, random crop offsets
    uniform over ``0..2*pad`` and flips with probability 0.5. ``train=False``: the images in order,
    every image kept (the last batch may be smaller), no crop shift, no flip.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if train:
        if n < batch_size:
            raise ValueError(f"batch_size {batch_size} is larger than the {n} images of the split "
                             "(training drops the last incomplete batch, so an epoch would be empty)")
        rng = epoch_rng(seed, epoch)
        order = rng.permutation(n)[: (n // batch_size) * batch_size]
        m = len(order)
        dy = rng.integers(0, 2 * pad + 1, size=m)
        dx = rng.integers(0, 2 * pad + 1, size=m)
        flip = rng.random(m) < FLIP_PROB
    else:
        order = np.arange(n)
        dy = dx = np.full(n, pad)
        flip = np.zeros(n, dtype=bool)
    return EpochPlan(order.astype(np.int64), dy.astype(np.int32), dx.astype(np.int32), flip, batch_size, train)


def crop_flip_indices(dy: np.ndarray, dx: np.ndarray, flip: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices into the padded images for each output pixel: (B, size) each.

    The flip is folded into the column index (column ``j`` reads ``dx + size - 1 - j``), so a crop
    and a flip are one gather. Both loaders compute the same indices with their own ops.
    """
    ar = np.arange(size)
    rows = dy[:, None] + ar[None, :]
    cols = np.where(flip[:, None], dx[:, None] + size - 1 - ar[None, :], dx[:, None] + ar[None, :])
    return rows, cols


def augment_reference(x: np.ndarray, dy: np.ndarray, dx: np.ndarray, flip: np.ndarray, pad: int) -> np.ndarray:
    """The numpy reference of the augmentation: uint8 NHWC in, uint8 NHWC of the same size out."""
    size = x.shape[1]
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    rows, cols = crop_flip_indices(dy, dx, flip, size)
    b = np.arange(len(x))[:, None, None]
    return padded[b, rows[:, :, None], cols[:, None, :]]


def loader_arg_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The flags of ``python -m pytorch_impl.data`` and ``python -m keras_impl.data`` (dump or time a loader)."""
    parser = errors.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--prepared", default=None, help="a prepared folder (instead of --dataset/--data-dir)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train", action="store_true", help="shuffle + augment")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epoch", type=int, default=0)
    parser.add_argument("--batches", type=int, default=None, help="at most this many batches")
    parser.add_argument("--dump", default=None, help="write x0, y0, x1, y1, ... to this .npz (NHWC)")
    parser.add_argument("--bench", action="store_true", help="print images/s as JSON")
    parser.add_argument("--device", default="cpu")
    return parser
