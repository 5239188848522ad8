"""cats_vs_dogs from TFDS into the prepared form: 128x128 centre crops, split 80 / 10 / 10 (docs/data.md).

It imports tensorflow (through tensorflow_datasets): run it in its own process.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np

from datasets.prepared import DataError, Prepared, finish_prepared, prepared_dir, read_prepared, write_split
from shared.io import writing

NAME = "cats_vs_dogs"
IMAGE_SIZE = 128
VAL_SIZE = 0.1
TEST_SIZE = 0.1
SPLIT_SEED = 0
DOWNLOAD_HOST = "download.microsoft.com"


def tfds_dir(data_dir: str | os.PathLike) -> Path:
    """The TFDS ``data_dir`` used for cats_vs_dogs: ``<data_dir>/tfds``."""
    return Path(data_dir) / "tfds"


def how_to_provide(data_dir: str | os.PathLike) -> str:
    d = tfds_dir(data_dir).resolve()
    return (f"looked in the TFDS data_dir {d} for {d}/cats_vs_dogs/4.0.1/ (dataset_info.json, features.json and "
            f"cats_vs_dogs-train.tfrecord-*). To provide it: on a machine with network run "
            f"`make data DATASET=cats_vs_dogs` (or `tfds build cats_vs_dogs --data_dir <dir>`), copy the folder "
            f"cats_vs_dogs/ into {d}/, then run `make data DATASET=cats_vs_dogs DATA_DIR={data_dir}` here")


def check_network(data_dir: str | os.PathLike, host: str = DOWNLOAD_HOST, timeout: float = 10.0) -> None:
    """Raise a DataError at once when ``host`` (where TFDS downloads cats_vs_dogs from) is unreachable."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as e:
        raise DataError(f"cats_vs_dogs is not prepared and {host} is unreachable ({e}); "
                        + how_to_provide(data_dir)) from e


def split_indices(n: int, val_size: float, test_size: float, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """Deterministic train/val/test indices into ``n`` images (fractions), each sorted."""
    n_val, n_test = round(val_size * n), round(test_size * n)
    if n_val < 1 or n_test < 1 or n - n_val - n_test < 1:
        raise ValueError(f"{n} images cannot be split into non-empty train/val/test with val_size {val_size} "
                         f"and test_size {test_size}")
    perm = np.random.default_rng(seed).permutation(n)
    return {"train": np.sort(perm[n_val + n_test:]), "val": np.sort(perm[:n_val]),
            "test": np.sort(perm[n_val: n_val + n_test])}


def prepare(data_dir: str | os.PathLike, *, download: bool = True, val_size: float = VAL_SIZE,
            test_size: float = TEST_SIZE, image_size: int = IMAGE_SIZE, seed: int = SPLIT_SEED) -> Prepared:
    """Prepare cats_vs_dogs under ``<data_dir>/prepared/cats_vs_dogs`` from TFDS."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    src = tfds_dir(data_dir)
    if download and not any((src / NAME).glob("*/dataset_info.json")):
        check_network(data_dir)  # fail in seconds rather than after TFDS' minutes of retries
    try:
        ds, info = tfds.load(NAME, split="train", data_dir=str(src), download=download, with_info=True,
                             shuffle_files=False)
    except Exception as e:  # tfds raises assorted types for "not prepared" and for network failures
        what = "could not be downloaded" if download else "is not there and downloading is off"
        raise DataError(f"cats_vs_dogs {what} ({type(e).__name__}: {str(e).splitlines()[0][:300]}); "
                        + how_to_provide(data_dir)) from e

    def resize(example):
        img = tf.cast(example["image"], tf.float32)
        hw = tf.cast(tf.shape(img)[:2], tf.float32)
        new = tf.cast(tf.math.ceil(hw * (image_size / tf.reduce_min(hw))), tf.int32)
        img = tf.image.resize(img, tf.maximum(new, image_size), method="bilinear", antialias=True)
        img = tf.image.resize_with_crop_or_pad(img, image_size, image_size)  # centre crop
        return tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8), example["label"]

    ds = ds.map(resize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(256).prefetch(2)
    out = prepared_dir(NAME, data_dir)
    with writing(out):  # a full disk: one line naming the folder, once the temporary one is gone
        return _write(ds, out, info, src, image_size, val_size, test_size, seed)


def _write(ds, out: Path, info, src: Path, image_size: int, val_size: float, test_size: float, seed: int) -> Prepared:
    """The decoded images of ``ds`` as the prepared folder ``out``, through a temporary folder."""
    from tqdm import tqdm

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{NAME}.", suffix=".tmp", dir=out.parent))
    try:
        raw, labels = tmp / "all_x.u8", []
        total = int(ds.cardinality()) if int(ds.cardinality()) >= 0 else None
        with open(raw, "wb") as f, tqdm(total=total, unit="batch", desc="cats_vs_dogs: decode + resize") as bar:
            for x, y in ds.as_numpy_iterator():
                f.write(np.ascontiguousarray(x).tobytes())
                labels.append(y)
                bar.update(1)
        y_all = np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64)
        x_all = np.memmap(raw, dtype=np.uint8, mode="r", shape=(len(y_all), image_size, image_size, 3))
        for split, idx in split_indices(len(y_all), val_size, test_size, seed).items():
            write_split(tmp, split, x_all, y_all, index=idx)
        del x_all
        raw.unlink()
        meta = {"name": NAME, "class_names": list(info.features["label"].names), "synthetic": False,
                "source": f"tensorflow_datasets {NAME} (data_dir {src.resolve()})", "version": str(info.version),
                "resize": f"shorter side to {image_size} (bilinear, antialiased), centre crop",
                "split_fractions": {"val": val_size, "test": test_size}, "split_seed": seed}
        finish_prepared(tmp, out, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return read_prepared(out)
