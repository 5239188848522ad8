"""Keras side of the cross-framework parity check: one JSON job file in, files and a JSON report out.

    python -m keras_impl.parity JOBS.json     # {"jobs": [job, ...], "report": path}

The mirror image of ``pytorch_impl/parity.py`` (the job keys: docs/harness.md), on any Keras backend; arrays are NHWC.
"""

from __future__ import annotations

import sys
from typing import Any

import keras
import numpy as np

from keras_impl.backend_table import CURRENT as BACKEND
from keras_impl.convert import read_native
from keras_impl.optim import make_sgd
from keras_impl.resnet import build_model
from keras_impl.summary import summarize
from keras_impl.weights import get_weights, set_weights
from shared import errors
from shared.harness.parity.randomize import randomize_arrays
from shared.harness.parity.run import serve_jobs
from shared.harness.summary import dump
from shared.io import atomic_write_text, save_weights
from shared.names import canonical_name, canonical_weights, keras_name, to_torch_layout
from shared.spec import ModelSpec


def layer_outputs(model: keras.Model, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """Eval-mode outputs of the named canonical layers (a sub-model on their outputs) and the logits."""
    try:
        tensors = [model.get_layer(keras_name(n)).output for n in names]
    except ValueError as e:
        raise KeyError(f"the Keras model lacks a layer: {e}") from e
    probe = keras.Model(model.inputs, tensors + [model.outputs[0]])
    values = probe(x, training=False)
    if not isinstance(values, (list, tuple)):  # a one-output model returns the tensor itself
        values = [values]
    out = {n: keras.ops.convert_to_numpy(v) for n, v in zip(names, values[:-1])}
    out["logits"] = keras.ops.convert_to_numpy(values[-1])
    return out


def bn_counts(model: keras.Model, x: np.ndarray) -> dict[str, int]:
    """For every BN layer (canonical name), the number of values per channel it normalizes over (batch x H x W)."""
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    probe = keras.Model(model.inputs, [layer.input for layer in bns])
    values = probe(x, training=False)
    return {canonical_name(layer.name): int(np.prod(v.shape[:-1])) for layer, v in zip(bns, values)}


def with_dtype(model: keras.Model, dtype: str) -> keras.Model:
    """A copy of ``model`` whose every layer (the float32 classifier included) computes in ``dtype``."""
    if dtype == "float64":
        BACKEND.enable_float64()

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        return layer.__class__.from_config({**layer.get_config(), "dtype": dtype})

    inputs = keras.Input(model.inputs[0].shape[1:], dtype=dtype, name=model.inputs[0].name)
    other = keras.models.clone_model(model, input_tensors=inputs, clone_function=clone)
    other.set_weights(model.get_weights())
    return other


def canonical_arrays(model: keras.Model, spec: ModelSpec) -> dict[str, np.ndarray]:
    """Every canonical tensor in the model's own dtype, PyTorch layout (``get_weights`` gives float32)."""
    variables = {v.path: v for v in model.weights}
    return {w.key: np.ascontiguousarray(to_torch_layout(w.kind, keras.ops.convert_to_numpy(variables[w.keras_path])))
            for w in canonical_weights(spec)}


def train_step(model: keras.Model, x: np.ndarray, y: np.ndarray, lr: float, momentum: float,
               weight_decay: float) -> float:
    """One SGD step in train mode (BN uses and updates batch statistics), as ``fit`` takes it on any
    backend (``compile`` + ``train_on_batch``: Keras' own ``train_step``); returns the loss, computed in the
    model's dtype (a Keras loss computes in floatx, float32, unless told otherwise). The one step runs eagerly: tracing
    it into a graph costs more than the step (the eight steps of the fast parity tests: 94 s traced, 9 s eager,
    the float64 copies included) and changes none of its arithmetic."""
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=model.outputs[0].dtype)
    model.compile(optimizer=make_sgd(lr, momentum, weight_decay), loss=loss, run_eagerly=True)
    return float(model.train_on_batch(x, y, return_dict=True)["loss"])


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Execute a parity job (see ``pytorch_impl/parity.py``); returns the report."""
    keras.backend.clear_session()  # one process runs many jobs: drop the previous models' graphs
    spec = ModelSpec.from_dict(job["spec"])
    model = build_model(spec, seed=0)
    report: dict[str, Any] = {"framework": "keras", "backend": BACKEND.name, "model": spec.name}
    if job.get("summary"):
        atomic_write_text(job["summary"], dump(summarize(model, spec)))
    if job.get("randomize") is not None:
        set_weights(model, spec, randomize_arrays(spec, get_weights(model, spec), int(job["randomize"])))
    if job.get("weights"):
        set_weights(model, spec, read_native(job["weights"], spec))
    if job.get("save_weights"):
        save_weights(job["save_weights"], get_weights(model, spec),
                     {"spec": spec.to_json(), "framework": "keras"})
    if job.get("forward"):
        fw = job["forward"]
        outputs = layer_outputs(model, np.load(fw["input"]), list(fw["layers"]))
        np.savez(fw["out"], **outputs)
    if job.get("train_step"):
        ts = job["train_step"]
        dtype = ts.get("dtype", "float32")
        x = np.load(ts["input"])
        y = np.load(ts["labels"]).astype(np.int32)
        counts = bn_counts(model, x)
        if dtype != "float32":
            model = with_dtype(model, dtype)
        loss = train_step(model, x.astype(dtype), y, ts["lr"], ts["momentum"], ts["weight_decay"])
        save_weights(ts["out"], canonical_arrays(model, spec), {"spec": spec.to_json(), "framework": "keras"})
        report["train_step"] = {"loss": loss, "bn_counts": counts, "dtype": dtype}
    return report


def main(argv: list[str] | None = None) -> int:
    return serve_jobs("python -m keras_impl.parity", run_job, argv)


if __name__ == "__main__":
    sys.exit(errors.run(main))
