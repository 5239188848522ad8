"""``prepare`` and ``load_prepared``: the library side of ``python -m datasets.prepare`` (docs/data.md).

``loader_main`` is the command line of ``python -m pytorch_impl.data`` and ``python -m keras_impl.data``, written once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from datasets import synthetic
from datasets.prepared import DataError, Prepared, prepared_dir, read_prepared, write_prepared
from shared import errors, process
from shared.data import CIFAR_DATASETS, SYNTHETIC_DATASETS, check_dataset
from shared.io import atomic_save_npz, check_writable


def prepare(name: str, data_dir: str | os.PathLike = "data", *, download: bool = True,
            val_size: float | None = None, seed: int = 0, in_process: bool = False) -> Prepared:
    """Prepare dataset ``name`` under ``<data_dir>/prepared/<name>`` (again, if it already is).

    cats_vs_dogs imports tensorflow, so it runs in a child process unless ``in_process`` (the CLI)
    or tensorflow is already imported here.
    """
    check_dataset(name)
    if name in SYNTHETIC_DATASETS:
        return write_prepared(prepared_dir(name, data_dir), synthetic.splits(seed, name), synthetic.meta(seed, name))
    if name == "digits":  # inside the scikit-learn wheel: never a download
        from datasets import digits

        return digits.prepare(data_dir, val_size=val_size)
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

    ``synthetic`` and ``synthetic_cifar`` are generated (deterministically) and ``digits`` read from the scikit-learn
    wheel, all cached without any download. A manifest whose checksums do not match the files is refused
    (:class:`DataError`).
    """
    check_dataset(name)
    path = prepared_dir(name, data_dir)
    if (path / "manifest.json").is_file():
        prepared = read_prepared(path, verify=verify)
        if name not in SYNTHETIC_DATASETS or prepared.manifest.get("version") == synthetic.GENERATOR_VERSION:
            return prepared
    elif not prepare_missing:
        raise DataError(f"{path.resolve()} is not prepared; run `make data DATASET={name} DATA_DIR={data_dir}`")
    return prepare(name, data_dir)


def loader_main(args: argparse.Namespace, *, bench: Callable[[Prepared], dict],
                batches: Callable[[Prepared], tuple[int, Iterable]]) -> int:
    """Run a framework's loader on the flags of ``shared.data.loader_arg_parser``.

    ``--bench`` prints ``bench(prepared)`` as JSON. Otherwise ``batches(prepared)`` gives (batches in
    an epoch, iterable of NHWC numpy (x, y)); up to ``--batches`` of them go to ``--dump`` as
    ``x0, y0, x1, ...`` and the counts are printed as JSON.
    """
    if args.dump:
        check_writable(args.dump, what="the --dump file")
    try:
        prepared = read_prepared(args.prepared) if args.prepared else load_prepared(args.dataset, args.data_dir)
    except (DataError, ValueError) as e:
        raise errors.UserError(str(e)) from None
    if args.bench:
        print(json.dumps(bench(prepared)))
        return 0
    length, numpy_batches = batches(prepared)
    out = {}
    for i, (x, y) in enumerate(numpy_batches):
        if args.batches is not None and i >= args.batches:
            break
        out[f"x{i}"], out[f"y{i}"] = x, y
    if args.dump:
        atomic_save_npz(args.dump, out)
    print(json.dumps({"batches": len(out) // 2, "len": length}))
    return 0
