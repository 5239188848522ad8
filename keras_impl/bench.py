"""Keras side of ``make bench``, on the backend ``KERAS_BACKEND`` names: the step as ``keras_impl.train`` compiles it,
and the fast paths each backend offers (docs/bench.md).

    KERAS_BACKEND=jax python -m keras_impl.bench --model resnet20 --device cpu --variants jit_compile,eager
                                                 --json-out k.json [--onnx model.onnx]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from keras_impl.backend_table import CURRENT as BACKEND
from keras_impl.optim import make_sgd
from keras_impl.resnet import build_model
from shared import errors
from shared.backends import framework_label
from shared.bench import Workload, first_line, worker_main
from shared.spec import ModelSpec

FRAMEWORK = framework_label("keras", BACKEND.name)
LAYOUT = "NHWC"


def check_device(device: str) -> str:
    """The backend's name for ``cpu``/``cuda``; a GPU the backend cannot see is an error (never a silent CPU run)."""
    if device != "cuda":
        return BACKEND.cpu_name
    missing = BACKEND.gpu_missing()
    if missing:
        raise RuntimeError(f"device 'cuda' requested but the Keras {BACKEND.name} backend sees no GPU ({missing})")
    return BACKEND.gpu_name


def low_precision(device: str) -> str:
    """mixed_bfloat16 on CPU, mixed_float16 (with Keras' automatic loss scaling) on GPU."""
    return "mixed_bfloat16" if device == "cpu" else "mixed_float16"


def compile_flags(variant: str) -> dict[str, bool]:
    """``run_eagerly``/``jit_compile`` of a variant on this backend; the first variant of each backend
    (``shared.bench.catalog.KERAS_VARIANTS``) is exactly what ``keras_impl.train`` compiles."""
    jit = variant == "jit_compile" or (BACKEND.always_jit and variant == "mixed_precision")
    # Where run_eagerly changes nothing (the torch backend runs eagerly unless jit_compile), the loop's False is kept.
    return {"run_eagerly": variant == "eager" and BACKEND.run_eagerly_counts, "jit_compile": jit}


def build_workload(spec: ModelSpec, variant: str, batch_size: int, device: str) -> Workload:
    """The three timed steps of one variant, on one random batch that stays on the device."""
    name = check_device(device)
    info: dict[str, Any] = {"backend": BACKEND.name, "device": name, **compile_flags(variant)}
    if variant == "mixed_precision":
        # The policy must be set before the layers are built; it is reset in cleanup().
        keras.mixed_precision.set_global_policy(low_precision(device))
        info["policy"] = low_precision(device)
    try:
        with BACKEND.device_scope(name):
            model = build_model(spec, input_shape=(spec.input_size, spec.input_size, spec.in_channels), seed=0)
            model.compile(optimizer=make_sgd(0.1, 0.9, 1e-4),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc")], **compile_flags(variant))
            rng = np.random.default_rng(0)
            shape = (batch_size, spec.input_size, spec.input_size, spec.in_channels)
            host = rng.standard_normal(shape, dtype=np.float32)
            x, x1 = keras.ops.convert_to_tensor(host), keras.ops.convert_to_tensor(host[:1])
            y = keras.ops.convert_to_tensor(rng.integers(0, spec.num_classes, batch_size, dtype=np.int32))
    except BaseException:
        keras.mixed_precision.set_global_policy("float32")
        raise

    def on_device(fn):
        def step():
            with BACKEND.device_scope(name):
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
    from shared.export_meta import build_metadata
    from shared.export_source import Source

    try:
        model = build_model(spec, seed=0)
        t0 = time.perf_counter()
        out = export_onnx(model, spec, path, build_metadata(Source(spec=spec), "keras", exporter_version()))
        return {"path": str(out or path), "layout": LAYOUT, "seconds": time.perf_counter() - t0}
    except Exception as e:  # any exporter failure becomes the ONNX Runtime rows' reason
        return {"error": f"export failed: {first_line(e)}"}


def framework_info(device: str) -> dict[str, Any]:
    """Versions of Keras and its backend's package."""
    info: dict[str, Any] = {"versions": {"keras": keras.__version__, BACKEND.name: BACKEND.version()},
                            "backend": BACKEND.name, "device": device}
    if BACKEND.thread_record() is not None:
        info["threads"] = BACKEND.thread_record()
    return info


def main(argv: list[str] | None = None) -> int:
    return worker_main(FRAMEWORK, "python -m keras_impl.bench", argv, check_device=check_device,
                       build_workload=build_workload, export_for_ort=export_for_ort, framework_info=framework_info)


if __name__ == "__main__":
    sys.exit(errors.run(main))
