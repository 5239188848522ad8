"""Exports of a Keras ResNet through Keras' own ``model.export`` (ONNX, SavedModel, LiteRT, OpenVINO IR, ``.pt2``) and
native predictions.

``python -m keras_impl.export onnx|export|predict ...`` is what the drivers in ``export/`` run in a subprocess, each
format on the backends Keras supports for it. On JAX the canonical weights are exported by Keras on the PyTorch
backend, in its own process (docs/export.md, docs/keras-backends.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np

from keras_impl.backend_table import CURRENT as BACKEND
from keras_impl.resnet import build_model
from keras_impl.weights import get_weights, set_weights
from shared import errors
from shared.export_cli import export_cli
from shared.export_meta import (
    DEFAULT_OPSET,
    PT2_METADATA,
    RT_INFO_SECTION,
    SAVED_MODEL_METADATA,
    check_metadata,
    check_route,
    sidecar_path,
)
from shared.export_source import Source
from shared.io import atomic_write_json, load_weights, save_weights
from shared.onnx_file import finalize_onnx
from shared.spec import ModelSpec

FRAMEWORK = "keras"
LAYOUT = "NHWC"




# Keras' own names of the formats (model.export(format=...)).
KERAS_FORMATS = {"onnx": "onnx", "saved_model": "tf_saved_model", "litert": "litert", "openvino": "openvino",
                 "pt2": "torch"}


def exporter_version(opset: int = DEFAULT_OPSET, fmt: str = "onnx") -> str:
    """The exporter that writes this framework's ``fmt`` files, with its version: Keras' own ``model.export``
    (for ONNX: tf2onnx on the TensorFlow backend, torch.onnx on the PyTorch backend)."""
    if fmt != "onnx":
        return f"keras {keras.__version__} ({BACKEND.name} backend) model.export(format={KERAS_FORMATS[fmt]!r})"
    if BACKEND.onnx_exporter is None:
        return f"keras {keras.__version__} ({BACKEND.name} backend; canonical weights exported by Keras on " \
               f"{jax_route()})"
    package = importlib.import_module(BACKEND.onnx_exporter.split(".")[0])
    return f"keras {keras.__version__} ({BACKEND.name} backend) {BACKEND.onnx_exporter} {package.__version__}"


def jax_route() -> str:
    """The backend that exports for the JAX backend: torch when installed, else tensorflow."""
    for backend in ("torch", "tensorflow"):
        if importlib.util.find_spec(backend) is not None:
            return backend
    raise ValueError("ONNX export from the Keras JAX backend needs the torch or tensorflow package (Keras' own "
                     "route, jax2onnx, is not used here): .venv/bin/pip install torch==2.14.1")


def _export_through(model: keras.Model, spec: ModelSpec, raw: Path, opset: int) -> None:
    """Write ``raw`` from ``model``'s canonical weights with Keras on :func:`jax_route`'s backend (exact: the
    weights are the same numbers on every backend)."""
    from shared import process

    weights = raw.with_suffix(".safetensors")
    save_weights(weights, get_weights(model, spec), {"spec": spec.to_json()})
    backend = jax_route()
    cmd = process.module_command("keras", "export", "onnx", "--run", weights, "--out", raw, "--opset", opset)
    done = process.run(cmd, echo=False, capture_stdout=True, env=process.child_env(KERAS_BACKEND=backend))
    if not done.ok:
        raise ValueError(f"the Keras {backend} backend could not export the JAX model's weights: {done.reason()}")


def export_onnx(model: keras.Model, spec: ModelSpec, path: str | Path, metadata: dict[str, str],
                opset: int = DEFAULT_OPSET) -> Path:
    """Export ``model`` (inference mode) to ``path``: input ``input`` NHWC, output ``logits``, symbolic batch.

    The model must have a batch-free input shape, e.g. ``build_model(spec, input_shape=(s, s, 3))``.
    ``onnx.checker`` runs before the file is written (atomically); ``metadata`` goes to metadata_props.
    """
    check_metadata(metadata)
    if model.inputs and model.inputs[0].shape[0] is not None:
        raise ValueError(f"the model's batch dimension must be None; got input shape {model.inputs[0].shape}")
    # Keras exports only models that have been called once.
    model(np.zeros((1, spec.input_size, spec.input_size, spec.in_channels), np.float32), training=False)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        if BACKEND.onnx_exporter is None:
            _export_through(model, spec, raw, opset)
        else:
            model.export(str(raw), format="onnx", verbose=False, opset_version=opset)
        return finalize_onnx(raw, path, metadata)


def _replace(tmp: Path, path: Path) -> Path:
    """Move a finished file or folder into place (an old folder of the same name is removed first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if tmp.is_dir() and path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


def _with_saved_model_metadata(raw: Path, metadata: dict[str, str]) -> None:
    atomic_write_json(raw / SAVED_MODEL_METADATA, metadata)


def _with_litert_sidecar(path: Path, metadata: dict[str, str]) -> None:
    atomic_write_json(sidecar_path(path), metadata)


def _openvino_with_rt_info(raw: Path, path: Path, metadata: dict[str, str]) -> Path:
    """The IR again, with ``metadata`` in its rt_info section; float32 weights kept (no fp16 compression)."""
    import openvino as ov

    model = ov.Core().read_model(str(raw))
    for key, value in metadata.items():
        model.set_rt_info(value, [RT_INFO_SECTION, key])
    out = raw.parent / "final" / path.name
    ov.save_model(model, str(out), compress_to_fp16=False)
    _replace(out.with_suffix(".bin"), path.with_suffix(".bin"))
    return _replace(out, path)


def _pt2_with_metadata(raw: Path, path: Path, metadata: dict[str, str]) -> Path:
    import torch

    program = torch.export.load(str(raw))
    out = raw.parent / "final.pt2"
    torch.export.save(program, str(out), extra_files={PT2_METADATA: json.dumps(metadata)})
    return _replace(out, path)


def export_format(model: keras.Model, spec: ModelSpec, fmt: str, path: str | Path, metadata: dict[str, str],
                  opset: int = DEFAULT_OPSET) -> Path:
    """Write ``model`` in deployment format ``fmt`` with Keras' ``model.export`` on this backend, ``metadata``
    where the format keeps it (``shared.export_meta.FORMATS``); the file appears only once complete."""
    check_metadata(metadata)
    check_route(fmt, FRAMEWORK, BACKEND.name)
    if fmt == "onnx":
        return export_onnx(model, spec, path, metadata, opset=opset)
    path = Path(path)
    kwargs = {}
    if fmt == "pt2":
        if "tensorflow" in sys.modules:  # torch.export crashes the interpreter when TensorFlow shares it
            raise ValueError("torch.export must run before anything imports tensorflow: list pt2 (and onnx) "
                             "before the other formats, or export it in its own process")
        import torch

        kwargs["dynamic_shapes"] = {0: torch.export.Dim("batch", min=1)}
    model(np.zeros((1, spec.input_size, spec.input_size, spec.in_channels), np.float32), training=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        raw = Path(tmp) / f"raw{path.suffix}"
        model.export(str(raw), format=KERAS_FORMATS[fmt], verbose=False, **kwargs)
        if fmt == "saved_model":
            _with_saved_model_metadata(raw, metadata)
            return _replace(raw, path)
        if fmt == "litert":
            _with_litert_sidecar(path, metadata)
            return _replace(raw, path)
        if fmt == "openvino":
            return _openvino_with_rt_info(raw, path, metadata)
        return _pt2_with_metadata(raw, path, metadata)


def load_model(source: Source) -> keras.Model:
    """The source's model (input (None, s, s, C)): its canonical weights, or seeded random weights."""
    spec = source.spec
    model = build_model(spec, input_shape=(spec.input_size, spec.input_size, spec.in_channels), seed=source.seed)
    if source.weights is not None:
        arrays, _ = load_weights(source.weights)
        set_weights(model, spec, arrays)
    return model


def predict(model: keras.Model, x_nhwc: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Logits for normalized NHWC float32 images (inference mode)."""
    out = [keras.ops.convert_to_numpy(model(x_nhwc[i:i + batch_size], training=False)).astype(np.float32)
           for i in range(0, len(x_nhwc), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def main(argv: list[str] | None = None) -> int:
    return export_cli(FRAMEWORK, sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(errors.run(main))
