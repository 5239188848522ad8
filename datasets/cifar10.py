"""CIFAR-10 from the official python-format archive, into the prepared form.

Accepted sources, looked for in this order in ``data_dir``:

1. ``cifar-10-batches-py/`` (the extracted archive: ``data_batch_1`` ... ``data_batch_5``, ``test_batch``,
   ``batches.meta``),
2. ``cifar-10-python.tar.gz`` (read directly, never extracted to disk),
3. otherwise the archive is downloaded from :data:`URL` (md5 checked) when the network allows.

The 50,000 training images are split deterministically (seeded permutation) into train and val
(45,000 / 5,000 as in He et al. 2015, Sec. 4.2; ``val_size`` is configurable so that small test
fixtures work); the 10,000 test images are the test split.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from datasets.prepared import DataError, Prepared, prepared_dir, write_prepared

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
FILES = (*TRAIN_BATCHES, "test_batch", "batches.meta")
VAL_SIZE = 5000
VAL_SEED = 0
TIMEOUT_S = 30


def how_to_provide(data_dir: str | os.PathLike) -> str:
    d = Path(data_dir).resolve()
    return (f"looked for {d / FOLDER}/ and {d / ARCHIVE}; provide CIFAR-10 by copying the official archive "
            f"{ARCHIVE} ({URL}, md5 {MD5}) or its extracted folder {FOLDER}/ into {d}/, "
            f"then run `make data DATASET=cifar10 DATA_DIR={data_dir}`")


def locate(data_dir: str | os.PathLike, download: bool = True) -> Path:
    """The extracted folder or the archive in ``data_dir``; downloads the archive when neither is there."""
    d = Path(data_dir)
    folder, archive = d / FOLDER, d / ARCHIVE
    if folder.is_dir():
        missing = [f for f in FILES if not (folder / f).is_file()]
        if missing and not archive.is_file():
            raise DataError(f"{folder.resolve()} is incomplete: missing {', '.join(missing)}; "
                            + how_to_provide(data_dir))
        if not missing:
            return folder
    if archive.is_file():
        return archive
    if not download:
        raise DataError("CIFAR-10 not found and downloading is off: " + how_to_provide(data_dir))
    return fetch(archive, data_dir)


def fetch(archive: Path, data_dir: str | os.PathLike) -> Path:
    """Download the official archive to ``archive`` (via a .part file), checking its md5."""
    from tqdm import tqdm

    archive.parent.mkdir(parents=True, exist_ok=True)
    part = archive.with_name(archive.name + ".part")
    md5 = hashlib.md5()
    try:
        with urllib.request.urlopen(URL, timeout=TIMEOUT_S) as r, open(part, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {ARCHIVE}") as bar:
                while block := r.read(1 << 20):
                    f.write(block)
                    md5.update(block)
                    bar.update(len(block))
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        part.unlink(missing_ok=True)
        raise DataError(f"could not download {URL} ({e}); " + how_to_provide(data_dir)) from e
    if md5.hexdigest() != MD5:
        part.unlink(missing_ok=True)
        raise DataError(f"downloaded {ARCHIVE} has md5 {md5.hexdigest()}, expected {MD5}: the download is corrupt; "
                        "try again")
    os.replace(part, archive)
    return archive


def _unpickle(raw: bytes, name: str) -> dict:
    d = pickle.loads(raw, encoding="bytes")
    if not isinstance(d, dict):
        raise ValueError(f"{name} does not hold a dict")
    return d


def read_files(source: Path) -> dict[str, dict]:
    """Unpickle every batch file from the folder or the .tar.gz; errors name the bad file."""
    out: dict[str, dict] = {}
    if source.is_dir():
        for name in FILES:
            path = source / name
            try:
                out[name] = _unpickle(path.read_bytes(), name)
            except Exception as e:
                raise DataError(f"{path.resolve()} is corrupt or not a CIFAR-10 python batch ({e})") from e
        return out
    try:
        with tarfile.open(source, "r:gz") as tar:
            for member in tar:
                base = os.path.basename(member.name)
                if member.isfile() and base in FILES and os.path.dirname(member.name).endswith(FOLDER):
                    out[base] = _unpickle(tar.extractfile(member).read(), base)
    except (tarfile.TarError, EOFError, zlib.error, OSError, pickle.UnpicklingError, ValueError, KeyError,
            io.UnsupportedOperation) as e:
        raise DataError(f"{source.resolve()} is truncated or corrupt ({type(e).__name__}: {e}); delete it and "
                        f"provide the archive again (md5 {MD5})") from e
    missing = [f for f in FILES if f not in out]
    if missing:
        raise DataError(f"{source.resolve()} does not contain {FOLDER}/{', '.join(missing)}: not the CIFAR-10 "
                        "python-format archive")
    return out


def _images(batch: dict, name: str, source: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except KeyError as e:
        raise DataError(f"{source.resolve()}: {name} has no {e.args[0]!r} entry: not a CIFAR-10 python batch") from e
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f"{source.resolve()}: {name} holds data {data.shape} and {len(labels)} labels; "
                        "expected (N, 3072) and N labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{source.resolve()}: {name} has labels outside 0..9")
    # rows are 1024 red, 1024 green, 1024 blue values, each 32x32 row-major: CHW -> HWC
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def val_count(val_size: float, n: int) -> int:
    """``val_size`` as a count: a fraction of ``n`` when < 1, else a number of images."""
    k = round(val_size * n) if 0 < val_size < 1 else int(val_size)
    if not 0 < k < n:
        raise ValueError(f"val_size must leave both train and val non-empty (0 < val < {n}); got {val_size}")
    return k


def split_train_val(n: int, val: int, seed: int = VAL_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, val) indices into ``n`` images, each kept in the original order."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[val:]), np.sort(perm[:val])


def prepare(data_dir: str | os.PathLike, *, val_size: float = VAL_SIZE, seed: int = VAL_SEED,
            download: bool = True) -> Prepared:
    """Prepare CIFAR-10 under ``<data_dir>/prepared/cifar10``."""
    source = locate(data_dir, download)
    files = read_files(source)
    train = [_images(files[b], b, source) for b in TRAIN_BATCHES]
    x_all = np.concatenate([t[0] for t in train])
    y_all = np.concatenate([t[1] for t in train])
    x_test, y_test = _images(files["test_batch"], "test_batch", source)
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in files["batches.meta"].get(b"label_names", [])]
    if len(names) != 10:
        raise DataError(f"{source.resolve()}: batches.meta must list 10 label_names; got {names}")
    tr, va = split_train_val(len(x_all), val_count(val_size, len(x_all)), seed)
    meta = {"name": "cifar10", "class_names": names, "synthetic": False, "source": str(source.resolve()),
            "version": "cifar-10-python (Krizhevsky 2009)", "val_size": int(len(va)), "val_seed": seed,
            "val_from": "official training batches (seeded permutation)"}
    if source.is_file():
        md5 = hashlib.md5()
        with open(source, "rb") as f:
            while block := f.read(1 << 22):
                md5.update(block)
        meta["source_md5"] = md5.hexdigest()
        meta["official_archive"] = md5.hexdigest() == MD5
    splits = {"train": (x_all[tr], y_all[tr]), "val": (x_all[va], y_all[va]), "test": (x_test, y_test)}
    return write_prepared(prepared_dir("cifar10", data_dir), splits, meta)
