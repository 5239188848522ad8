"""CIFAR-10 and CIFAR-100 from the official python-format archives into the prepared form (docs/data.md).

One reader, split and manifest serve both; a :class:`Cifar` describes what differs (archive, files, label keys).
``cifar100`` and ``cifar100_coarse`` are two dataset names over the same images (docs/data.md, "CIFAR-100").
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import tarfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets.prepared import DataError, Prepared, prepared_dir, write_prepared
from shared.io import refusal

VAL_SIZE = 5000
VAL_SEED = 0
TIMEOUT_S = 30


@dataclass(frozen=True)
class Cifar:
    """One CIFAR dataset: where its official python-format archive comes from and which labels it reads."""

    name: str  # the dataset (and prepared folder) name
    title: str  # as people write it, for messages
    archive: str
    url: str
    md5: str
    folder: str  # the folder inside the archive (and the extracted folder)
    train: tuple[str, ...]  # training batch files
    test: str
    meta: str
    labels: str  # the label key of every batch
    names: str  # the class-name key of the meta file
    num_classes: int
    # (fine, coarse) label keys when the batches carry both: recorded as a fine -> coarse table
    hierarchy: tuple[str, str] | None = None

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train, self.test, self.meta)


CIFAR10 = Cifar(
    name="cifar10", title="CIFAR-10", archive="cifar-10-python.tar.gz",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", md5="c58f30108f718f92721af3b95e74349a",
    folder="cifar-10-batches-py", train=tuple(f"data_batch_{i}" for i in range(1, 6)), test="test_batch",
    meta="batches.meta", labels="labels", names="label_names", num_classes=10,
)
CIFAR100 = Cifar(
    name="cifar100", title="CIFAR-100", archive="cifar-100-python.tar.gz",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", md5="eb9058c3a382ffc7106e4002c42a8d85",
    folder="cifar-100-python", train=("train",), test="test", meta="meta",
    labels="fine_labels", names="fine_label_names", num_classes=100, hierarchy=("fine_labels", "coarse_labels"),
)
CIFAR100_COARSE = dataclasses.replace(
    CIFAR100, name="cifar100_coarse", labels="coarse_labels", names="coarse_label_names", num_classes=20,
)
SOURCES: dict[str, Cifar] = {c.name: c for c in (CIFAR10, CIFAR100, CIFAR100_COARSE)}


def source_of(dataset: str | Cifar) -> Cifar:
    """The :class:`Cifar` of a dataset name (or ``dataset`` itself); a ValueError lists the names."""
    if isinstance(dataset, Cifar):
        return dataset
    if dataset not in SOURCES:
        raise ValueError(f"unknown CIFAR dataset {dataset!r}; valid choices: {', '.join(SOURCES)}")
    return SOURCES[dataset]


def _others(c: Cifar) -> list[Cifar]:
    """The other archives (one entry per archive, not per label set)."""
    first: dict[str, Cifar] = {}
    for o in SOURCES.values():
        if o.archive != c.archive:
            first.setdefault(o.archive, o)
    return list(first.values())


def how_to_provide(c: Cifar, data_dir: str | os.PathLike) -> str:
    d = Path(data_dir).resolve()
    return (f"looked for {d / c.folder}/ and {d / c.archive}; provide {c.title} by copying the official archive "
            f"{c.archive} ({c.url}, md5 {c.md5}) or its extracted folder {c.folder}/ into {d}/, "
            f"then run `make data DATASET={c.name} DATA_DIR={data_dir}`")


def wrong_archive(c: Cifar, path: Path, other: Cifar, what: str) -> DataError:
    """The error for another CIFAR's archive or folder found where ``c``'s was expected."""
    return DataError(f"{path.resolve()} holds {what}: that is {other.title}, not {c.title}; put the {c.title} "
                     f"{'folder ' + c.folder + '/' if path.is_dir() else 'archive ' + c.archive} there "
                     f"({c.url}, md5 {c.md5}), or prepare it as `make data DATASET={other.name}`")


def locate(c: Cifar, data_dir: str | os.PathLike, download: bool = True) -> Path:
    """The extracted folder or the archive in ``data_dir``; downloads the archive when neither is there."""
    d = Path(data_dir)
    folder, archive = d / c.folder, d / c.archive
    if folder.is_dir():
        missing = [f for f in c.files if not (folder / f).is_file()]
        if missing and not archive.is_file():
            for other in _others(c):
                if all((folder / f).is_file() for f in other.files):
                    raise wrong_archive(c, folder, other, ", ".join(other.files))
            raise DataError(f"{folder.resolve()} is incomplete: missing {', '.join(missing)}; "
                            + how_to_provide(c, data_dir))
        if not missing:
            return folder
    if archive.is_file():
        return archive
    if not download:
        raise DataError(f"{c.title} not found and downloading is off: " + how_to_provide(c, data_dir))
    return fetch(c, archive, data_dir)


def fetch(c: Cifar, archive: Path, data_dir: str | os.PathLike) -> Path:
    """Download the official archive to ``archive`` (via a .part file), checking its md5."""
    from tqdm import tqdm

    archive.parent.mkdir(parents=True, exist_ok=True)
    part = archive.with_name(archive.name + ".part")
    md5 = hashlib.md5()
    try:
        with urllib.request.urlopen(c.url, timeout=TIMEOUT_S) as r, open(part, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {c.archive}") as bar:
                while block := r.read(1 << 20):
                    f.write(block)
                    md5.update(block)
                    bar.update(len(block))
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        part.unlink(missing_ok=True)
        if (failure := refusal(archive, e)) is not None and failure.disk_full:  # the disk, not the network
            raise failure from None
        raise DataError(f"could not download {c.url} ({e}); " + how_to_provide(c, data_dir)) from e
    if md5.hexdigest() != c.md5:
        part.unlink(missing_ok=True)
        raise DataError(f"downloaded {c.archive} has md5 {md5.hexdigest()}, expected {c.md5}: the download is "
                        "corrupt; try again")
    os.replace(part, archive)
    return archive


def _unpickle(raw: bytes, name: str) -> dict:
    d = pickle.loads(raw, encoding="bytes")
    if not isinstance(d, dict):
        raise ValueError(f"{name} does not hold a dict")
    return d


def read_files(c: Cifar, source: Path) -> dict[str, dict]:
    """Unpickle every batch file from the folder or the .tar.gz; errors name the bad file."""
    out: dict[str, dict] = {}
    if source.is_dir():
        for name in c.files:
            path = source / name
            try:
                out[name] = _unpickle(path.read_bytes(), name)
            except Exception as e:
                raise DataError(f"{path.resolve()} is corrupt or not a {c.title} python batch ({e})") from e
        return out
    members: set[str] = set()
    try:
        with tarfile.open(source, "r:gz") as tar:
            for member in tar:
                members.add(member.name)
                base = os.path.basename(member.name)
                if member.isfile() and base in c.files and os.path.dirname(member.name).endswith(c.folder):
                    out[base] = _unpickle(tar.extractfile(member).read(), base)
    except (tarfile.TarError, EOFError, zlib.error, OSError, pickle.UnpicklingError, ValueError, KeyError,
            io.UnsupportedOperation) as e:
        raise DataError(f"{source.resolve()} is truncated or corrupt ({type(e).__name__}: {e}); delete it and "
                        f"provide the archive again (md5 {c.md5})") from e
    missing = [f for f in c.files if f not in out]
    if missing:
        for other in _others(c):
            if any(m.split("/")[0] == other.folder for m in members):
                raise wrong_archive(c, source, other, f"{other.folder}/")
        raise DataError(f"{source.resolve()} does not contain {c.folder}/{', '.join(missing)}: not the {c.title} "
                        "python-format archive")
    return out


def _where(source: Path, name: str) -> str:
    """The file ``name`` of a source, for messages: its path in a folder, ``archive: name`` in a .tar.gz."""
    return str((source / name).resolve()) if source.is_dir() else f"{source.resolve()}: {name}"


def _labels(c: Cifar, batch: dict, key: str, name: str, source: Path) -> np.ndarray:
    if key.encode() not in batch:
        found = sorted({o.labels for o in SOURCES.values() if o.labels.encode() in batch})
        what = {o.labels: o.title for o in SOURCES.values()}
        hint = f" (it has {found[0]!r}: a {what[found[0]]} batch)" if found else ""
        raise DataError(f"{_where(source, name)} has no {key!r} entry{hint}: not a {c.title} python batch")
    return np.asarray(batch[key.encode()], dtype=np.int64)


def _images(c: Cifar, batch: dict, name: str, source: Path) -> tuple[np.ndarray, np.ndarray]:
    labels = _labels(c, batch, c.labels, name, source)
    if b"data" not in batch:
        raise DataError(f"{_where(source, name)} has no 'data' entry: not a {c.title} python batch")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f"{_where(source, name)} holds data {data.shape} and {len(labels)} labels; "
                        "expected (N, 3072) and N labels")
    if labels.size and (labels.min() < 0 or labels.max() >= c.num_classes):
        raise DataError(f"{_where(source, name)} has {c.labels} outside 0..{c.num_classes - 1}")
    # rows are 1024 red, 1024 green, 1024 blue values, each 32x32 row-major: CHW -> HWC
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def class_names(c: Cifar, meta: dict, source: Path) -> list[str]:
    """The ``num_classes`` class names of the meta file (``label_names``, ``fine_label_names``...)."""
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(c.names.encode(), [])]
    if len(names) != c.num_classes:
        raise DataError(f"{_where(source, c.meta)} must list {c.num_classes} {c.names}; got {len(names)}")
    return names


def fine_to_coarse(c: Cifar, batches: list[tuple[str, dict]], source: Path) -> list[int]:
    """The superclass of every fine class, read from the batches; refused unless it is one-to-one per class."""
    fine_key, coarse_key = c.hierarchy
    table: dict[int, int] = {}
    for name, batch in batches:
        fine = _labels(c, batch, fine_key, name, source)
        coarse = _labels(c, batch, coarse_key, name, source)
        if len(fine) != len(coarse):
            raise DataError(f"{_where(source, name)} has {len(fine)} {fine_key} but {len(coarse)} {coarse_key}")
        for f, k in np.unique(np.stack([fine, coarse], axis=1), axis=0).tolist():
            if table.setdefault(f, k) != k:
                raise DataError(f"{_where(source, name)}: fine class {f} is in coarse classes {table[f]} and {k}")
    return [table.get(f, -1) for f in range(max(table, default=-1) + 1)]


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


def file_md5(path: Path) -> str:
    md5 = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            md5.update(block)
    return md5.hexdigest()


def prepare(data_dir: str | os.PathLike, dataset: str | Cifar = "cifar10", *, val_size: float = VAL_SIZE,
            seed: int = VAL_SEED, download: bool = True) -> Prepared:
    """Prepare a CIFAR dataset (``cifar10``, ``cifar100``, ``cifar100_coarse``) under ``<data_dir>/prepared/<name>``."""
    c = source_of(dataset)
    source = locate(c, data_dir, download)
    files = read_files(c, source)
    train = [_images(c, files[b], b, source) for b in c.train]
    x_all = np.concatenate([t[0] for t in train])
    y_all = np.concatenate([t[1] for t in train])
    x_test, y_test = _images(c, files[c.test], c.test, source)
    tr, va = split_train_val(len(x_all), val_count(val_size, len(x_all)), seed)
    meta = {"name": c.name, "class_names": class_names(c, files[c.meta], source), "synthetic": False,
            "source": str(source.resolve()), "version": f"{c.archive.removesuffix('.tar.gz')} (Krizhevsky 2009)",
            "labels": c.labels, "val_size": int(len(va)), "val_seed": seed,
            "val_from": "official training batches (seeded permutation)"}
    if c.hierarchy:
        meta["fine_to_coarse"] = fine_to_coarse(c, [(b, files[b]) for b in (*c.train, c.test)], source)
    if source.is_file():
        meta["source_md5"] = file_md5(source)
        meta["official_archive"] = meta["source_md5"] == c.md5
    splits = {"train": (x_all[tr], y_all[tr]), "val": (x_all[va], y_all[va]), "test": (x_test, y_test)}
    return write_prepared(prepared_dir(c.name, data_dir), splits, meta)
