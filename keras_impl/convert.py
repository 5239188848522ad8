"""Keras side of weight conversion: native files (``.weights.h5``, ``.keras``) <-> canonical safetensors.

    python -m keras_impl.convert export --spec JSON --out W.safetensors (--src FILE | --random SEED | --init)
    python -m keras_impl.convert import --spec JSON --src W.safetensors --out FILE(.weights.h5 | .keras | .safetensors)

Driven by ``python -m export.transfer`` (docs/harness.md, "Weight transfer"); ``pytorch_impl/convert.py`` is its mirror.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np

import keras_impl.blocks  # noqa: F401  (registers the custom layers a .keras file refers to)
from keras_impl.resnet import build_model
from keras_impl.weights import get_weights, set_weights
from shared import errors
from shared.cli import convert_main
from shared.harness.parity.randomize import randomize_arrays
from shared.io import load_weights, save_weights
from shared.spec import ModelSpec

NATIVE_SUFFIXES = (".weights.h5", ".keras")


def _suffix(path: Path) -> str:
    for suffix in (".safetensors", *NATIVE_SUFFIXES):
        if path.name.endswith(suffix):
            return suffix
    return path.suffix


def read_native(path: str | os.PathLike, spec: ModelSpec) -> dict[str, np.ndarray]:
    """Canonical arrays from a .safetensors file, a ``.weights.h5`` file or a ``.keras`` model."""
    path = Path(path)
    suffix = _suffix(path)
    if suffix == ".safetensors":
        return load_weights(path)[0]
    if suffix not in NATIVE_SUFFIXES:
        raise ValueError(
            f"unknown Keras weight file {path}; expected one of .safetensors, {', '.join(NATIVE_SUFFIXES)}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    try:
        if suffix == ".keras":
            model = keras.saving.load_model(path, compile=False)
        else:
            model = build_model(spec)
            model.load_weights(path)
        return get_weights(model, spec)
    except OSError as e:  # h5py's or zipfile's own message for a truncated file
        raise ValueError(f"cannot read Keras weight file {path}: truncated or corrupt ({type(e).__name__}); "
                         "write it again") from e
    except (ValueError, KeyError) as e:
        raise ValueError(f"{path} does not hold {spec.name} weights ({e})") from e


def write_native(path: str | os.PathLike, spec: ModelSpec, arrays: dict[str, np.ndarray], source: str = "") -> Path:
    """Load ``arrays`` into a model (validating every key and shape), then save it as ``path`` says."""
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in (".safetensors", *NATIVE_SUFFIXES):
        raise ValueError(f"unknown Keras output {path}; expected one of .safetensors, {', '.join(NATIVE_SUFFIXES)}")
    model = build_model(spec)
    set_weights(model, spec, arrays)
    if suffix == ".safetensors":
        return save_weights(path, get_weights(model, spec),
                            {"spec": spec.to_json(), "framework": "keras", "source": source})
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keras insists on the file's suffix, so write into a temporary folder beside it, then rename.
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        tmp_path = Path(tmp) / f"model{suffix}"
        if suffix == ".keras":
            model.save(tmp_path)
        else:
            model.save_weights(tmp_path)
        os.replace(tmp_path, path)
    return path


def init_arrays(spec: ModelSpec) -> dict[str, np.ndarray]:
    """The Keras model's own fresh initialization (seeded), as canonical arrays."""
    return get_weights(build_model(spec, seed=0), spec)


def random_arrays(spec: ModelSpec, seed: int) -> dict[str, np.ndarray]:
    """Every weight and BN statistic random (``randomize_arrays``), shaped by the Keras model."""
    return randomize_arrays(spec, get_weights(build_model(spec), spec), seed)


def main(argv: list[str] | None = None) -> int:
    return convert_main("python -m keras_impl.convert", argv, read_native=read_native, write_native=write_native,
                        init_arrays=init_arrays, random_arrays=random_arrays)


if __name__ == "__main__":
    sys.exit(errors.run(main))
