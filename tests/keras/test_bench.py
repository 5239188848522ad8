"""Keras benchmark variants: each times what it claims (a real SGD step, graph vs eager vs XLA,
the mixed-precision policy set before building and reset after), and failures become reasons."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_impl import bench as kbench
from shared import bench
from shared.bench import TimingPlan
from shared.spec import get_spec
from tests.conftest import run_module

SPEC = get_spec("resnet8")
TINY = TimingPlan(batch_size=4, iters=1, repeats=2, warmup=1, latency_iters=2)


def _weights(model: keras.Model) -> dict[str, np.ndarray]:
    return {v.path: np.array(v) for v in model.variables}


def test_variants_compile_as_named():
    # jit_compile is pinned: Keras' default "auto" would switch XLA on wherever a GPU is present.
    for variant, expected in (("eager", (True, False)), ("graph", (False, False)), ("jit_compile", (False, True)),
                              ("mixed_precision", (False, False))):
        work = kbench.build_workload(SPEC, variant, 4, "cpu")
        assert (work.model.run_eagerly, work.model.jit_compile) == expected, variant
        work.cleanup()


def test_the_loop_variant_is_the_step_the_training_script_compiles():
    from keras_impl import train
    from shared.bench import LOOP_VARIANT
    from shared.recipes import make_plan, recipe_for

    work = kbench.build_workload(SPEC, LOOP_VARIANT["keras-tensorflow"], 4, "cpu")
    model = kbench.build_model(SPEC)
    train.compile_model(model, make_plan(recipe_for("cifar10", SPEC), 8, epochs=1, batch_size=4), False, False)
    assert (work.model.run_eagerly, work.model.jit_compile) == (model.run_eagerly, model.jit_compile)
    assert type(work.model.optimizer) is type(model.optimizer)
    work.cleanup()


@pytest.mark.parametrize("backend, first", [("jax", "jit_compile"), ("torch", "eager")])
def test_worker_runs_on_the_other_backends_without_tensorflow(tmp_path, backend, first):
    out = tmp_path / "k.json"
    run_module("tests.no_tensorflow", "keras_impl.bench", "--model", "resnet8", "--variants", first, "--batch-size",
               "4", "--iters", "1", "--repeats", "2", "--warmup", "1", "--latency-iters", "2", "--min-time", "0",
               "--json-out", out, env={"KERAS_BACKEND": backend})
    result = json.loads(out.read_text())
    assert result["framework"] == f"keras-{backend}" and result["backend"] == backend
    (row,) = result["rows"]
    assert row["error"] is None and row["info"]["jit_compile"] == (backend == "jax")
    assert row["info"]["run_eagerly"] is False  # as keras_impl.train compiles it
    for metric in bench.METRICS:
        assert row[metric]["n"] == 2 and row[metric]["min"] > 0


@pytest.mark.parametrize("variant", ["eager", "graph"])
def test_train_step_is_an_sgd_step_and_inference_changes_nothing(variant):
    work = kbench.build_workload(SPEC, variant, 4, "cpu")
    model = work.model
    before = _weights(model)
    work.train_step()
    after = _weights(model)
    for name in ("conv1/kernel", "fc/bias", "bn1/moving_mean"):  # weights and BN statistics move
        key = next(k for k in after if k.endswith(name))
        assert not np.array_equal(before[key], after[key]), key
    out = work.infer_step()
    assert out.shape == (4, SPEC.num_classes)
    assert all(np.array_equal(v, np.array(w)) for (k, v), w in zip(after.items(), model.variables))
    assert work.latency_step().shape == (1, SPEC.num_classes)
    work.cleanup()


def test_mixed_precision_policy_is_set_before_building_and_reset_after():
    assert keras.mixed_precision.global_policy().name == "float32"
    work = kbench.build_workload(SPEC, "mixed_precision", 4, "cpu")
    conv = work.model.get_layer("conv1")
    assert conv.compute_dtype == "bfloat16" and conv.variable_dtype == "float32"
    assert work.model.get_layer("fc").compute_dtype == "float32"  # logits stay float32
    work.train_step()
    work.cleanup()
    assert keras.mixed_precision.global_policy().name == "float32"
    assert kbench.low_precision("cuda") == "mixed_float16"


def test_a_failing_build_resets_the_policy_and_is_reported(monkeypatch):
    def broken(*_a, **_k):
        raise tf.errors.InternalError(None, None, "XLA compilation failed\nHLO dump ...")

    monkeypatch.setattr(kbench, "build_model", broken)
    row = bench.measure_workload(lambda: kbench.build_workload(SPEC, "mixed_precision", 4, "cpu"), TINY)
    assert row["error"] == "InternalError: XLA compilation failed"
    assert all(row[m] == {"error": row["error"]} for m in bench.METRICS)
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="device 'cuda' requested but the Keras tensorflow backend sees no GPU"):
        kbench.build_workload(SPEC, "graph", 4, "cuda")


def test_export_failure_becomes_a_reason(monkeypatch, tmp_path):
    import keras_impl.export

    def broken(*_a, **_k):
        raise ValueError("tf2onnx cannot convert")

    monkeypatch.setattr(keras_impl.export, "export_onnx", broken)
    assert kbench.export_for_ort(SPEC, tmp_path / "m.onnx") == {
        "error": "export failed: ValueError: tf2onnx cannot convert"}


def test_worker_cli_writes_positive_figures(tmp_path):
    out = tmp_path / "keras.json"
    assert kbench.main(["--model", "resnet8", "--variants", "graph", "--batch-size", "4", "--iters", "1",
                        "--repeats", "2", "--warmup", "1", "--latency-iters", "2", "--json-out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["framework"] == "keras-tensorflow" and result["versions"]["keras"] == keras.__version__
    (row,) = result["rows"]
    assert row["variant"] == "graph" and row["error"] is None
    for metric in bench.METRICS:
        assert row[metric]["n"] == 2 and row[metric]["min"] > 0
