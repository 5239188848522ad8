"""What the data tests of every suite share: the batches both loaders must produce, computed in numpy from the
shared definitions (the oracle the loaders are checked against), and a CIFAR-100 fixture prepared by the real code.
"""

from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np

from datasets.fixtures import write_cifar100_python
from shared.data import augment_reference, augmentation, epoch_plan, norm_constants, normalize


def reference_batches(x: np.ndarray, y: np.ndarray, manifest: dict, batch_size: int, *, train: bool,
                      seed: int = 0, epoch: int = 0):
    """Yield the batches both loaders must produce (NHWC float32, int64 labels), in numpy."""
    mean, std = norm_constants(manifest)
    pad = augmentation(manifest["name"]).pad
    plan = epoch_plan(len(x), batch_size, train=train, pad=pad, seed=seed, epoch=epoch)
    for i in range(len(plan)):
        idx, dy, dx, flip = plan.batch(i)
        xb = x[idx]
        if train:
            xb = augment_reference(xb, dy, dx, flip, pad)
        yield normalize(xb, mean, std), y[idx].astype(np.int64)


def prepared_cifar100_fixture(dest: str | os.PathLike, name: str = "cifar100"):
    """The CIFAR-100 fixture archive prepared as ``name`` (cifar100 or cifar100_coarse) by the real code,
    and the archive's own ``test`` pickle (bytes keys) for the loaders' tests to compare against."""
    from datasets import cifar

    write_cifar100_python(dest, 200, 100, seed=5, archive=True)
    prepared = cifar.prepare(Path(dest), name, val_size=40, download=False)
    with tarfile.open(Path(dest) / cifar.CIFAR100.archive) as tar:
        test = pickle.loads(tar.extractfile(f"{cifar.CIFAR100.folder}/test").read(), encoding="bytes")
    return prepared, test
