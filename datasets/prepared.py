"""The prepared, framework-neutral form of a dataset, and how it is written and read back.

``<data_dir>/prepared/<name>/`` holds one ``<split>_x.npy`` (uint8, N x H x W x 3) and one
``<split>_y.npy`` (int64, N) per split, and ``manifest.json``: name, class_names, num_classes,
image_size, mean/std (per channel, 0-1 units, on the training split), splits {train, val, test: n},
synthetic, source, version, and the sha256 of every array file. The folder is written under a
temporary name and renamed into place with the manifest already inside it, so a half-written folder
never looks prepared; :func:`read_prepared` refuses a folder whose files do not match their checksums.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shared.data import SPLITS, check_split
from shared.errors import UserError
from shared.io import atomic_write_json, writing

FORMAT_VERSION = 1


class DataError(UserError):
    """Data missing, unreadable or inconsistent; the message says what and how to fix it."""


def prepared_dir(name: str, data_dir: str | os.PathLike) -> Path:
    """Where dataset ``name`` is prepared under ``data_dir``."""
    return Path(data_dir) / "prepared" / name


def sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def channel_stats(x: np.ndarray, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of uint8 NHWC images, in 0-1 units, in float64."""
    s = np.zeros(3)
    ss = np.zeros(3)
    for i in range(0, len(x), chunk):
        b = np.asarray(x[i: i + chunk], dtype=np.float64) / 255.0
        s += b.sum(axis=(0, 1, 2))
        ss += (b * b).sum(axis=(0, 1, 2))
    count = len(x) * x.shape[1] * x.shape[2]
    mean = s / count
    std = np.sqrt(np.maximum(ss / count - mean * mean, 0.0))
    return [float(v) for v in mean], [float(v) for v in std]


@dataclass
class Prepared:
    """A prepared dataset: its manifest and memory-mapped uint8 arrays per split."""

    path: Path
    manifest: dict
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.manifest["name"]

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(x uint8 [N, H, W, 3] memory-mapped, y int64 [N]) of ``split`` (train, val or test)."""
        check_split(split)
        if split not in self._cache:
            x = np.load(self.path / f"{split}_x.npy", mmap_mode="r")
            y = np.load(self.path / f"{split}_y.npy")
            self._cache[split] = (x, y)
        return self._cache[split]


def write_prepared(out: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], meta: dict) -> Prepared:
    """Write arrays + manifest into ``out`` atomically (temporary folder, then rename).

    ``meta`` holds name, class_names, source, version, synthetic and anything else worth recording;
    sizes, image size, mean/std (on ``train``) and checksums are computed here.
    """
    out = Path(out)
    with writing(out):  # a full disk: one line naming the folder, once the temporary one is gone
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        try:
            for split, (x, y) in splits.items():
                write_split(tmp, split, x, y)
            finish_prepared(tmp, out, meta)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return read_prepared(out)


def write_split(folder: Path, split: str, x: np.ndarray, y: np.ndarray, index: np.ndarray | None = None,
                chunk: int = 4096) -> None:
    """Write one split's arrays into ``folder`` (uint8 images, int64 labels), copying in chunks.

    With ``index``, the split is ``x[index]``, ``y[index]`` (``x`` may be a large memory map). The chunks go
    through Python's own file writes, so a full disk is an ``OSError`` (ENOSPC); writing into a memory map would
    end the process with SIGBUS instead.
    """
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"{split}: images must be uint8 [N, H, W, 3]; got {x.dtype} {x.shape}")
    if len(x) != len(y):
        raise ValueError(f"{split}: {len(x)} images but {len(y)} labels")
    index = np.arange(len(x)) if index is None else np.asarray(index)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
              "shape": (len(index), *x.shape[1:])}
    with open(folder / f"{split}_x.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for i in range(0, len(index), chunk):
            f.write(np.ascontiguousarray(x[index[i: i + chunk]]).data)
    with open(folder / f"{split}_y.npy", "wb") as f:
        buf = io.BytesIO()
        np.save(buf, np.asarray(y, dtype=np.int64)[index])
        f.write(buf.getbuffer())


def finish_prepared(tmp: Path, out: Path, meta: dict) -> None:
    """Compute the manifest of the split files in ``tmp``, write it, then move ``tmp`` to ``out``."""
    sizes, image_size = {}, None
    for split in SPLITS:
        x = np.load(tmp / f"{split}_x.npy", mmap_mode="r")
        sizes[split] = int(len(x))
        image_size = int(x.shape[1])
    mean, std = channel_stats(np.load(tmp / "train_x.npy", mmap_mode="r"))
    manifest = {
        "name": meta["name"],
        "format_version": FORMAT_VERSION,
        "class_names": list(meta["class_names"]),
        "num_classes": len(meta["class_names"]),
        "image_size": image_size,
        "channels": 3,
        "mean": mean,
        "std": std,
        "splits": sizes,
        "synthetic": bool(meta.get("synthetic", False)),
        "source": meta["source"],
        "version": meta["version"],
        **{k: v for k, v in meta.items() if k not in ("name", "class_names", "source", "version", "synthetic")},
        "checksums": {p.name: sha256(p) for p in sorted(tmp.glob("*.npy"))},
    }
    atomic_write_json(tmp / "manifest.json", manifest)
    if out.exists():  # replace an older preparation: move it aside first, so `out` is never half-old
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        try:
            os.replace(tmp, out)
        except OSError:  # another process finished the same preparation first: keep its folder
            if not (out / "manifest.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)


def read_prepared(path: str | os.PathLike, verify: bool = True) -> Prepared:
    """Open a prepared folder; refuse it when a file is missing or does not match its checksum."""
    path = Path(path)
    mpath = path / "manifest.json"
    if not mpath.is_file():
        raise DataError(f"{path} is not a prepared dataset (no manifest.json)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{mpath} is not valid JSON ({e}); prepare the dataset again") from e
    checksums = manifest.get("checksums") or {}
    expected = {f"{s}_{k}.npy" for s in SPLITS for k in ("x", "y")}
    if set(checksums) != expected:
        raise DataError(f"{mpath}: checksums must cover {sorted(expected)}; got {sorted(checksums)}")
    if verify:
        for fname, digest in checksums.items():
            f = path / fname
            if not f.is_file():
                raise DataError(f"{f} is missing; prepare the dataset again")
            actual = sha256(f)
            if actual != digest:
                raise DataError(f"checksum mismatch for {f}: manifest says sha256 {digest[:16]}..., file has "
                                f"{actual[:16]}...; refusing to load (prepare the dataset again)")
    prepared = Prepared(path, manifest)
    for split in SPLITS:
        x, y = prepared.arrays(split)
        if len(x) != manifest["splits"][split] or len(y) != len(x):
            raise DataError(f"{path}: split {split!r} has {len(x)} images / {len(y)} labels but the manifest "
                            f"says {manifest['splits'][split]}")
    return prepared
