"""Datasets prepared once into framework-neutral uint8 arrays + a manifest (see ``datasets/prepared.py``).

``load_prepared(name, data_dir)`` is what training code calls; ``python -m datasets.prepare`` is the
CLI behind ``make data``. This package imports neither torch nor tensorflow (the cats_vs_dogs
preparation imports tensorflow_datasets inside its own process).
"""

from datasets.loading import load_prepared, prepare
from datasets.prepared import DataError, Prepared, prepared_dir, read_prepared

__all__ = ["DataError", "Prepared", "load_prepared", "prepare", "prepared_dir", "read_prepared"]
