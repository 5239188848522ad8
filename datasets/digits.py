"""scikit-learn's handwritten digits (real images inside its wheel) into the prepared form (docs/data.md, "Digits").

Each 8x8 value is put back over its 4x4 block of the original 32x32 bitmap, scaled to 0..255 in integers and
copied into R, G and B; the split is stratified and seeded. Nothing is downloaded.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from datasets.prepared import DataError, Prepared, prepared_dir, sha256, write_prepared

NAME = "digits"
SCALE = 4  # 8x8 -> 32x32
VAL_SIZE = 0.2  # of all 1,797 images
TEST_SIZE = 0.2
SPLIT_SEED = 0
INSTALL = "scikit-learn==1.9.1"
UPSAMPLE = ("nearest-neighbour x4: each 8x8 value fills the 4x4 block of the original 32x32 NIST bitmap "
            "it was counted over (np.repeat on both axes)")
PIXELS = "(v * 255 + 8) // 16 in integers: 0..16 -> 0..255, rounded to nearest with halves up"


def _sklearn():
    """The ``sklearn`` module, or a DataError saying what to install."""
    try:
        import sklearn
        import sklearn.datasets
        import sklearn.model_selection
    except ImportError as e:
        raise DataError(f"the digits dataset needs scikit-learn, which {sys.executable} cannot import ({e}); "
                        f"install it with `pip install {INSTALL}` (pinned in requirements.txt: `make setup`)") from None
    return sklearn


def to_images(values: np.ndarray) -> np.ndarray:
    """8x8 digit values 0..16 (N x 8 x 8, any numeric dtype) -> uint8 N x 32 x 32 x 3 (docs/data.md, "Digits")."""
    v = np.asarray(values)
    if v.ndim != 3 or v.shape[1:] != (8, 8):
        raise ValueError(f"digits must be N x 8 x 8; got {v.shape}")
    iv = np.rint(v).astype(np.int64)
    if not np.array_equal(iv, v) or iv.min(initial=0) < 0 or iv.max(initial=0) > 16:
        raise ValueError("digit values must be the integers 0..16")
    grey = ((iv * 255 + 8) // 16).astype(np.uint8)
    big = np.repeat(np.repeat(grey, SCALE, axis=1), SCALE, axis=2)
    return np.repeat(big[..., None], 3, axis=-1)


def split_indices(y: np.ndarray, *, val_size: float = VAL_SIZE, test_size: float = TEST_SIZE,
                  seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """Stratified, seeded train/val/test indices into ``y``, each sorted (the original order kept).

    ``val_size``/``test_size``: fractions of all images when < 1, else counts.
    """
    from sklearn.model_selection import train_test_split

    n = len(y)
    idx = np.arange(n)
    rest, test = train_test_split(idx, test_size=test_size, stratify=y, random_state=seed)
    val_n = round(val_size * n) if 0 < val_size < 1 else int(val_size)
    if not 0 < val_n < len(rest):
        raise ValueError(f"val_size must leave both train and val non-empty (0 < val < {len(rest)}); got {val_size}")
    train, val = train_test_split(rest, test_size=val_n, stratify=y[rest], random_state=seed)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def source_file(sklearn_module) -> Path:
    """The CSV inside the scikit-learn wheel that ``load_digits`` reads."""
    return Path(sklearn_module.datasets.__file__).parent / "data" / "digits.csv.gz"


def prepare(data_dir: str | os.PathLike, *, val_size: float | None = None, seed: int = SPLIT_SEED) -> Prepared:
    """Prepare the digits under ``<data_dir>/prepared/digits`` (offline: the data is in the scikit-learn wheel)."""
    sklearn = _sklearn()
    digits = sklearn.datasets.load_digits()
    x = to_images(digits.images)
    y = np.asarray(digits.target, dtype=np.int64)
    val_size = VAL_SIZE if val_size is None else val_size
    index = split_indices(y, val_size=val_size, test_size=TEST_SIZE, seed=seed)
    csv = source_file(sklearn)
    meta = {
        "name": NAME, "class_names": [str(d) for d in range(10)], "synthetic": False,
        "source": f"sklearn.datasets.load_digits ({csv.name} inside the scikit-learn wheel)",
        "version": f"scikit-learn {sklearn.__version__}: UCI optdigits test set (Alpaydin and Kaynak 1998)",
        "source_sha256": sha256(csv) if csv.is_file() else None,
        "original_size": 8, "upsample": UPSAMPLE, "pixels": PIXELS, "channels_from": "grey copied into R, G, B",
        "split": {"method": "sklearn.model_selection.train_test_split, stratified by label: test first, then val "
                            "from the rest; each split sorted in load_digits order",
                  "seed": seed, "test_size": TEST_SIZE, "val_size": val_size},
        "split_index": {s: i.tolist() for s, i in index.items()},
    }
    splits = {s: (x[i], y[i]) for s, i in index.items()}
    return write_prepared(prepared_dir(NAME, data_dir), splits, meta)
