"""Small datasets in the real on-disk formats, for tests and benchmarks.

:func:`write_cifar10_python` writes CIFAR-10's official python format exactly as the archive has it
(https://www.cs.toronto.edu/~kriz/cifar.html): ``cifar-10-batches-py/`` with ``data_batch_1`` ...
``data_batch_5`` and ``test_batch`` (pickled dicts: ``b"data"`` uint8 (N, 3072) whose rows are the
1024 red, then green, then blue values of a 32x32 image in row-major order, ``b"labels"``,
``b"batch_label"``, ``b"filenames"``) and ``batches.meta`` (``b"label_names"``...), either as that
folder or as ``cifar-10-python.tar.gz``. The images are random, so a fixture can be of any size.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np

from datasets.cifar10 import ARCHIVE, FOLDER, TRAIN_BATCHES

LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _batch(x: np.ndarray, y: np.ndarray, label: str) -> dict:
    rows = x.transpose(0, 3, 1, 2).reshape(len(x), 3072)  # HWC -> CHW, flattened row-major
    return {b"batch_label": label.encode(), b"labels": [int(v) for v in y], b"data": rows,
            b"filenames": [f"fixture_{label.replace(' ', '_')}_{i}.png".encode() for i in range(len(x))]}


def cifar10_arrays(images_per_batch: int, test_images: int, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Random images (uint8 NHWC) and labels for the five training batches and the test batch."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, n in [*((b, images_per_batch) for b in TRAIN_BATCHES), ("test_batch", test_images)]:
        out[name] = (rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8),
                     rng.integers(0, 10, size=n).astype(np.int64))
    return out


def write_cifar10_python(dest: str | os.PathLike, images_per_batch: int = 20, test_images: int = 20, *,
                         seed: int = 0, archive: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write a CIFAR-10 in the official python format into ``dest``; returns the arrays written.

    ``archive=False`` writes ``dest/cifar-10-batches-py/``; ``archive=True`` writes
    ``dest/cifar-10-python.tar.gz`` containing that folder (as the official archive does).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    arrays = cifar10_arrays(images_per_batch, test_images, seed)
    files = {name: pickle.dumps(_batch(x, y, name.replace("_", " ")), protocol=2) for name, (x, y) in arrays.items()}
    files["batches.meta"] = pickle.dumps({b"num_cases_per_batch": images_per_batch, b"num_vis": 3072,
                                          b"label_names": [n.encode() for n in LABEL_NAMES]}, protocol=2)
    if archive:
        with tarfile.open(dest / ARCHIVE, "w:gz") as tar:
            for name, raw in files.items():
                info = tarfile.TarInfo(f"{FOLDER}/{name}")
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
    else:
        (dest / FOLDER).mkdir(exist_ok=True)
        for name, raw in files.items():
            (dest / FOLDER / name).write_bytes(raw)
    return arrays
