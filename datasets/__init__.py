"""Datasets prepared once into framework-neutral uint8 arrays and a manifest, and read back (docs/data.md).

``load_prepared(name, data_dir)`` is what training code calls; ``python -m datasets.prepare`` is ``make data``.
Imports neither torch nor tensorflow (cats_vs_dogs runs TFDS in its own process).
"""

from datasets.loading import load_prepared, prepare
from datasets.prepared import DataError, Prepared, prepared_dir, read_prepared

__all__ = ["DataError", "Prepared", "load_prepared", "prepare", "prepared_dir", "read_prepared"]
