"""``python -m datasets.prepare --dataset cifar10|cats_vs_dogs|synthetic --data-dir DIR``: prepare once.

Prints where the prepared arrays are and their manifest summary. Errors (unknown dataset, data
missing offline, corrupt archive, checksum mismatch) end the command with one ``error:`` line.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from datasets import synthetic
from datasets.prepared import DataError, Prepared, prepared_dir, read_prepared, write_prepared
from shared.data import DATASETS, check_dataset

ROOT = Path(__file__).resolve().parent.parent


def prepare(name: str, data_dir: str | os.PathLike = "data", *, download: bool = True,
            val_size: float | None = None, seed: int = 0) -> Prepared:
    """Prepare dataset ``name`` under ``<data_dir>/prepared/<name>`` (again, if it already is)."""
    check_dataset(name)
    if name == "synthetic":
        return write_prepared(prepared_dir(name, data_dir), synthetic.splits(seed), synthetic.meta(seed))
    if name == "cifar10":
        from datasets import cifar10

        return cifar10.prepare(data_dir, val_size=cifar10.VAL_SIZE if val_size is None else val_size,
                               download=download)
    # cats_vs_dogs needs tensorflow_datasets: run it in its own process unless tensorflow is already here
    if "tensorflow" in sys.modules:
        from datasets import cats_vs_dogs

        kwargs = {} if val_size is None else {"val_size": val_size}
        return cats_vs_dogs.prepare(data_dir, download=download, **kwargs)
    cmd = [sys.executable, "-m", "datasets.prepare", "--dataset", name, "--data-dir", str(data_dir)]
    cmd += [] if download else ["--no-download"]
    cmd += [] if val_size is None else ["--val-size", str(val_size)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error:")]
        raise DataError(lines[-1][len("error: "):] if lines else proc.stderr.strip()[-2000:])
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


def _summary(p: Prepared) -> str:
    m = p.manifest
    sizes = ", ".join(f"{k} {v}" for k, v in m["splits"].items())
    tag = " (SYNTHETIC)" if m.get("synthetic") else ""
    return (f"prepared {m['name']}{tag} in {p.path}: {sizes}; {m['image_size']}x{m['image_size']}x3 uint8; "
            f"{m['num_classes']} classes; mean {[round(v, 4) for v in m['mean']]} "
            f"std {[round(v, 4) for v in m['std']]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datasets.prepare", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help=f"one of {', '.join(DATASETS)}")
    parser.add_argument("--data-dir", default="data", help="where sources are looked for and prepared/ is written")
    parser.add_argument("--val-size", type=float, default=None,
                        help="validation split carved from the training images: a count, or a fraction when < 1 "
                             "(cifar10: 5000; cats_vs_dogs: 0.1)")
    parser.add_argument("--no-download", action="store_true", help="never touch the network")
    parser.add_argument("--check", action="store_true", help="only verify an existing preparation's checksums")
    args = parser.parse_args(argv)
    if args.dataset not in DATASETS:
        parser.error(f"unknown dataset {args.dataset!r}; valid choices: {', '.join(DATASETS)}")
    try:
        if args.check:
            p = read_prepared(prepared_dir(args.dataset, args.data_dir))
        else:
            p = prepare(args.dataset, args.data_dir, download=not args.no_download, val_size=args.val_size)
    except (DataError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    print(_summary(p))
    return 0


if __name__ == "__main__":
    sys.exit(main())
