"""Small CIFAR-10 and CIFAR-100 sets in the archives' own python format (folder or ``.tar.gz``), for tests.

The images are random, so a fixture can be of any size; the class names and CIFAR-100's fine -> coarse assignment
are the real ones (docs/data.md, "Loaders").
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np

from datasets.cifar import CIFAR10, CIFAR100, Cifar

LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_FINE_NAMES = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl", "boy",
    "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
    "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish",
    "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange",
    "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine",
    "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk",
    "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm",
]
CIFAR100_COARSE_NAMES = [
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
    "household_furniture", "insects", "large_carnivores", "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes", "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates",
    "people", "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
]
# The superclass of each fine class, as the archive's coarse_labels assign it (five fine classes each).
CIFAR100_FINE_TO_COARSE = [
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15, 3, 15,
    0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13, 16, 19, 2, 4, 6, 19, 5, 5, 8, 19,
    18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
]


def _batch(x: np.ndarray, labels: dict[str, np.ndarray], label: str) -> dict:
    rows = x.transpose(0, 3, 1, 2).reshape(len(x), 3072)  # HWC -> CHW, flattened row-major
    return {b"batch_label": label.encode(), **{k.encode(): [int(v) for v in y] for k, y in labels.items()},
            b"data": rows, b"filenames": [f"fixture_{label.replace(' ', '_')}_{i}.png".encode() for i in range(len(x))]}


def _write(dest: Path, c: Cifar, files: dict[str, bytes], archive: bool) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    if archive:
        with tarfile.open(dest / c.archive, "w:gz") as tar:
            for name, raw in files.items():
                info = tarfile.TarInfo(f"{c.folder}/{name}")
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
    else:
        (dest / c.folder).mkdir(exist_ok=True)
        for name, raw in files.items():
            (dest / c.folder / name).write_bytes(raw)


def cifar10_arrays(images_per_batch: int, test_images: int, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Random images (uint8 NHWC) and labels for the five training batches and the test batch."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, n in [*((b, images_per_batch) for b in CIFAR10.train), (CIFAR10.test, test_images)]:
        out[name] = (rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8),
                     rng.integers(0, 10, size=n).astype(np.int64))
    return out


def write_cifar10_python(dest: str | os.PathLike, images_per_batch: int = 20, test_images: int = 20, *,
                         seed: int = 0, archive: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write a CIFAR-10 in the official python format into ``dest``; returns the arrays written.

    ``archive=False`` writes ``dest/cifar-10-batches-py/``; ``archive=True`` writes
    ``dest/cifar-10-python.tar.gz`` containing that folder (as the official archive does).
    """
    arrays = cifar10_arrays(images_per_batch, test_images, seed)
    files = {name: pickle.dumps(_batch(x, {"labels": y}, name.replace("_", " ")), protocol=2)
             for name, (x, y) in arrays.items()}
    files[CIFAR10.meta] = pickle.dumps({b"num_cases_per_batch": images_per_batch, b"num_vis": 3072,
                                        b"label_names": [n.encode() for n in LABEL_NAMES]}, protocol=2)
    _write(Path(dest), CIFAR10, files, archive)
    return arrays


def write_cifar100_python(dest: str | os.PathLike, train_images: int = 200, test_images: int = 100, *,
                          seed: int = 0, archive: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Write a CIFAR-100 in the official python format into ``dest``; returns ``{"train"|"test": (x, fine, coarse)}``.

    Every fine class occurs in each file when it has at least 100 images; the coarse label of an image
    is its fine class's superclass. ``archive=True`` writes ``dest/cifar-100-python.tar.gz``.
    """
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, n in ((CIFAR100.train[0], train_images), (CIFAR100.test, test_images)):
        fine = rng.permutation(np.arange(n) % 100).astype(np.int64)
        arrays[name] = (rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8), fine,
                        np.asarray(CIFAR100_FINE_TO_COARSE, dtype=np.int64)[fine])
    label = {"train": "training batch 1 of 1", "test": "testing batch 1 of 1"}
    files = {name: pickle.dumps(_batch(x, {"fine_labels": fine, "coarse_labels": coarse}, label[name]), protocol=2)
             for name, (x, fine, coarse) in arrays.items()}
    files[CIFAR100.meta] = pickle.dumps({b"fine_label_names": [n.encode() for n in CIFAR100_FINE_NAMES],
                                         b"coarse_label_names": [n.encode() for n in CIFAR100_COARSE_NAMES]},
                                        protocol=2)
    _write(Path(dest), CIFAR100, files, archive)
    return arrays
