"""``prepare`` and ``load_prepared``: the library side of ``python -m datasets.prepare``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from datasets import synthetic
from datasets.prepared import DataError, Prepared, prepared_dir, read_prepared, write_prepared
from shared import process
from shared.data import CIFAR_DATASETS, check_dataset


def prepare(name: str, data_dir: str | os.PathLike = "data", *, download: bool = True,
            val_size: float | None = None, seed: int = 0, in_process: bool = False) -> Prepared:
    """Prepare dataset ``name`` under ``<data_dir>/prepared/<name>`` (again, if it already is).

    cats_vs_dogs imports tensorflow, so it runs in a child process unless ``in_process`` (the CLI)
    or tensorflow is already imported here.
    """
    check_dataset(name)
    if name == "synthetic":
        return write_prepared(prepared_dir(name, data_dir), synthetic.splits(seed), synthetic.meta(seed))
    if name in CIFAR_DATASETS:
        from datasets import cifar

        return cifar.prepare(data_dir, name, val_size=cifar.VAL_SIZE if val_size is None else val_size,
                             download=download)
    # cats_vs_dogs needs tensorflow_datasets: run it in its own process unless tensorflow is already here
    if in_process or "tensorflow" in sys.modules:
        from datasets import cats_vs_dogs

        kwargs = {} if val_size is None else {"val_size": val_size}
        return cats_vs_dogs.prepare(data_dir, download=download, **kwargs)
    cmd = [sys.executable, "-m", "datasets.prepare", "--dataset", name, "--data-dir", str(Path(data_dir).resolve())]
    cmd += [] if download else ["--no-download"]
    cmd += [] if val_size is None else ["--val-size", str(val_size)]
    # the child's progress bars reach the user as they come; it imports tensorflow but no Keras
    done = process.run(cmd, env=process.child_env(keras=False))
    if not done.ok:
        lines = [ln for ln in done.stderr_tail.splitlines() if ln.startswith("error:")]
        raise DataError(lines[-1][len("error: "):] if lines else done.reason())
    return read_prepared(prepared_dir(name, data_dir))


def load_prepared(name: str, data_dir: str | os.PathLike = "data", *, prepare_missing: bool = True,
                  verify: bool = True) -> Prepared:
    """The prepared dataset ``name`` from ``data_dir``; prepares it first when it is not there yet.

    ``synthetic`` is generated (deterministically) and cached without any download. A manifest whose
    checksums do not match the files is refused (:class:`DataError`).
    """
    check_dataset(name)
    path = prepared_dir(name, data_dir)
    if (path / "manifest.json").is_file():
        prepared = read_prepared(path, verify=verify)
        if name != "synthetic" or prepared.manifest.get("version") == synthetic.GENERATOR_VERSION:
            return prepared
    elif not prepare_missing:
        raise DataError(f"{path.resolve()} is not prepared; run `make data DATASET={name} DATA_DIR={data_dir}`")
    return prepare(name, data_dir)
