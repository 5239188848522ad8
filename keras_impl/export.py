"""ONNX export of a Keras ResNet (``model.export(format="onnx")``), native predictions and timings.

Keras' own exporter runs on the TensorFlow backend (tf2onnx) and the PyTorch backend (torch.onnx). On the
JAX backend Keras asks for ``jax2onnx``, which pulls in flax, equinox, optax, orbax and huggingface-hub; the
route here is instead exact: the model's canonical weights (the same numbers on every backend) are written
to a safetensors file and exported by Keras on the PyTorch backend (TensorFlow where torch is absent), in
its own process. The file's metadata names both backends.

``python -m keras_impl.export onnx|predict|bench ...`` is what the framework-neutral drivers in
``export/`` run in a subprocess (this process must never import torch).
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from keras_impl.resnet import build_model
from keras_impl.weights import get_weights, set_weights
from shared.io import load_weights, save_weights
from shared.onnx_meta import (
    DEFAULT_OPSET,
    Source,
    check_metadata,
    export_cli,
    finalize_onnx,
)
from shared.spec import ModelSpec

FRAMEWORK = "keras"
LAYOUT = "NHWC"


BACKEND = keras.backend.backend()


def exporter_version(opset: int = DEFAULT_OPSET) -> str:
    """The exporter that writes this framework's files, with its version: Keras' own ``model.export``
    goes through tf2onnx on the TensorFlow backend and torch.onnx on the PyTorch backend."""
    if BACKEND == "torch":
        import torch

        return f"keras {keras.__version__} (torch backend) torch.onnx {torch.__version__}"
    if BACKEND == "jax":
        return f"keras {keras.__version__} (jax backend; canonical weights exported by Keras on {jax_route()})"
    import tf2onnx

    return f"keras {keras.__version__} tf2onnx {tf2onnx.__version__}"


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
        if BACKEND == "jax":
            _export_through(model, spec, raw, opset)
        else:
            model.export(str(raw), format="onnx", verbose=False, opset_version=opset)
        return finalize_onnx(raw, path, metadata)


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


def benchmark(model: keras.Model, spec: ModelSpec, repeats: int = 20, batch: int = 64) -> dict[str, float]:
    """CPU latency (batch 1, median ms) and throughput (batch ``batch``, images/s) in inference mode.

    Times the eager call ``model(x, training=False)`` (what ``predict`` above uses).
    """
    x1 = np.random.randn(1, spec.input_size, spec.input_size, spec.in_channels).astype(np.float32)
    xb = np.random.randn(batch, spec.input_size, spec.input_size, spec.in_channels).astype(np.float32)
    model(x1, training=False), model(xb, training=False)  # warm-up
    lat = []
    for _ in range(repeats):
        t = time.perf_counter()
        keras.ops.convert_to_numpy(model(x1, training=False))
        lat.append(time.perf_counter() - t)
    runs = max(2, repeats // 5)
    t = time.perf_counter()
    for _ in range(runs):
        keras.ops.convert_to_numpy(model(xb, training=False))
    dt = time.perf_counter() - t
    return {"latency_ms_b1": float(np.median(lat) * 1e3), "throughput_ips_b64": batch * runs / dt,
            "threads": _threads()}


def _threads() -> int:
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.config.threading.get_intra_op_parallelism_threads()
    if BACKEND == "torch":
        import torch

        return torch.get_num_threads()
    return 0  # XLA's CPU pool size is not exposed


def main(argv: list[str] | None = None) -> int:
    return export_cli(FRAMEWORK, sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
