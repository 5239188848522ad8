"""Keras side of the benchmark: eager, graph (tf.function), jit_compile (XLA) and mixed precision.

    python -m keras_impl.bench --model resnet20 --device cpu --variants graph,jit_compile --json-out k.json
                               [--onnx model.onnx]

Started by ``python -m shared.bench`` (which owns the timing loops, statistics and report); run
alone it writes the same JSON. ``--onnx`` also exports the model with ``keras_impl.export`` for
the ONNX Runtime rows. Steps go through ``train_on_batch`` / ``predict_on_batch``, which return
NumPy values, so each timed step has finished on the device when it returns.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

if keras.backend.backend() != "tensorflow":  # its variants are tf.function / XLA / tf.device ones
    raise SystemExit(f"error: keras_impl.bench times the TensorFlow backend's variants; got KERAS_BACKEND="
                     f"{keras.backend.backend()}: run make bench with BACKEND=tensorflow (the training loop's "
                     "images/s on every backend is in each run's metrics.csv)")
import tensorflow as tf  # noqa: E402

from keras_impl.resnet import build_model
from shared.bench import Workload, first_line, worker_main
from shared.spec import ModelSpec

FRAMEWORK = "keras"
LAYOUT = "NHWC"


def check_device(device: str) -> str:
    """The TensorFlow device string for ``cpu``/``cuda``; a GPU TensorFlow cannot see is an error."""
    if device == "cuda":
        if not tf.config.list_physical_devices("GPU"):
            raise RuntimeError("device 'cuda' requested but TensorFlow sees no GPU "
                               "(tf.config.list_physical_devices('GPU') is empty)")
        return "/GPU:0"
    return "/CPU:0"


def low_precision(device: str) -> str:
    """mixed_bfloat16 on CPU, mixed_float16 (with Keras' automatic loss scaling) on GPU."""
    return "mixed_bfloat16" if device == "cpu" else "mixed_float16"


def build_workload(spec: ModelSpec, variant: str, batch_size: int, device: str) -> Workload:
    """The three timed steps of one variant, on one random batch that stays on the device."""
    tf_device = check_device(device)
    keras.utils.set_random_seed(0)
    info: dict[str, Any] = {"tf_device": tf_device}
    if variant == "mixed_precision":
        # The policy must be set before the layers are built; it is reset in cleanup().
        keras.mixed_precision.set_global_policy(low_precision(device))
        info["policy"] = low_precision(device)
    try:
        with tf.device(tf_device):
            model = build_model(spec, input_shape=(spec.input_size, spec.input_size, spec.in_channels))
            # The paper's optimizer (Keras' weight decay is decoupled; the cost per step is the same).
            model.compile(
                optimizer=keras.optimizers.SGD(learning_rate=0.1, momentum=0.9, weight_decay=1e-4),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                run_eagerly=variant == "eager",
                # Keras' default "auto" turns XLA on where a GPU is present; pin it per variant.
                jit_compile=variant == "jit_compile",
            )
            rng = np.random.default_rng(0)
            shape = (batch_size, spec.input_size, spec.input_size, spec.in_channels)
            x = tf.constant(rng.standard_normal(shape, dtype=np.float32))
            y = tf.constant(rng.integers(0, spec.num_classes, batch_size, dtype=np.int32))
            x1 = tf.identity(x[:1])
    except BaseException:
        keras.mixed_precision.set_global_policy("float32")
        raise

    def on_device(fn):
        def step():
            with tf.device(tf_device):
                return fn()
        return step

    def cleanup() -> None:
        keras.mixed_precision.set_global_policy("float32")
        keras.backend.clear_session()  # free this variant's graphs before the next one is built

    return Workload(
        on_device(lambda: model.train_on_batch(x, y)),
        on_device(lambda: model.predict_on_batch(x)),
        on_device(lambda: model.predict_on_batch(x1)),
        cleanup=cleanup, info=info, model=model,
    )


def export_for_ort(spec: ModelSpec, path: str | Path) -> dict[str, Any]:
    """Export a float32 model with ``keras_impl.export.export_onnx`` for ONNX Runtime.

    Returns ``{"path", "layout", "seconds"}`` or ``{"error": reason}`` when the export fails.
    """
    from keras_impl.export import export_onnx, exporter_version
    from shared.onnx_meta import Source, build_metadata

    try:
        keras.utils.set_random_seed(0)
        model = build_model(spec)
        t0 = time.perf_counter()
        out = export_onnx(model, spec, path, build_metadata(Source(spec=spec), FRAMEWORK, exporter_version()))
        return {"path": str(out or path), "layout": LAYOUT, "seconds": time.perf_counter() - t0}
    except Exception as e:  # any exporter failure becomes the ONNX Runtime rows' reason
        return {"error": f"export failed: {first_line(e)}"}


def framework_info(device: str) -> dict[str, Any]:
    """Versions and the devices as TensorFlow sees them."""
    gpus = tf.config.list_physical_devices("GPU")
    return {
        "versions": {"keras": keras.__version__, "tensorflow": tf.__version__, "backend": keras.backend.backend()},
        "device": device,
        "threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                    "inter_op": tf.config.threading.get_inter_op_parallelism_threads()},
        "gpu": gpus[0].name if gpus and device == "cuda" else None,
    }


def main(argv: list[str] | None = None) -> int:
    return worker_main(FRAMEWORK, "python -m keras_impl.bench", argv, check_device=check_device,
                       build_workload=build_workload, export_for_ort=export_for_ort, framework_info=framework_info)


if __name__ == "__main__":
    sys.exit(main())
