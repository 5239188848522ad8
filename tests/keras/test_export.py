"""Keras ONNX export: checker, metadata, symbolic batch, and ORT logits equal to Keras'."""

import os
from pathlib import Path

import keras
import numpy as np
import onnx
import pytest

from keras_impl.export import export_onnx, load_model, predict
from keras_impl.resnet import build_model
from keras_impl.weights import get_weights, set_weights
from shared.export_meta import DEFAULT_OPSET, build_metadata
from shared.export_source import Source
from shared.spec import get_spec
from tests.conftest import run_module
from tests.export_helpers import ExportContract, assert_logits_match, fixture_images, ort_logits, randomize_bn


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return fixture_images(tmp_path_factory.mktemp("data"), n=64)


def _build(spec, seed=None):
    return build_model(spec, input_shape=(spec.input_size, spec.input_size, spec.in_channels), seed=seed)


class TestKerasExport(ExportContract):
    framework, layout = "keras", "NHWC"
    load_model, get_weights, predict = staticmethod(load_model), staticmethod(get_weights), staticmethod(predict)

    def export(self, spec, path, seed=0, opset=DEFAULT_OPSET):
        model = _build(spec, seed)
        set_weights(model, spec, randomize_bn(get_weights(model, spec), seed))
        meta = build_metadata(Source(spec=spec, seed=seed), "keras", "test", opset)
        export_onnx(model, spec, path, meta, opset=opset)
        return model

    def check_export(self, name, images, tmp_path):
        x, y = images
        spec = get_spec(name, num_classes=10, input_size=32)
        model = self.export(spec, tmp_path / f"{name}.onnx")
        self.check_onnx_file(tmp_path / f"{name}.onnx", spec)
        np.testing.assert_array_equal(predict(model, x), keras.ops.convert_to_numpy(model(x, training=False)))
        self.check_logits(model, tmp_path / f"{name}.onnx", x, y)

    # resnet18 at 32 px keeps an ImageNet-stem model in the fast suite; Keras' resnet50 export (tf2onnx)
    # takes over a minute and ~7 GB of memory, so it runs with the slow cases.
    @pytest.mark.parametrize("name", ["resnet20", "plain20", "resnet18"])
    def test_export_matches_keras_on_fixture_set(self, name, images, tmp_path):
        self.check_export(name, images, tmp_path)

    @pytest.mark.slow
    def test_export_resnet50_matches_keras(self, images, tmp_path):
        self.check_export("resnet50", images, tmp_path)


def test_export_refuses_bad_metadata_and_fixed_batch(tmp_path):
    spec = get_spec("resnet20")
    with pytest.raises(TypeError, match="strings"):
        export_onnx(_build(spec), spec, tmp_path / "m.onnx", {"input_size": 32})
    fixed = keras.Model(*(lambda i: (i, _build(spec)(i)))(keras.Input(shape=(32, 32, 3), batch_size=4)))
    with pytest.raises(ValueError, match="batch dimension must be None"):
        export_onnx(fixed, spec, tmp_path / "m.onnx", {})
    assert not (tmp_path / "m.onnx").exists()


def test_jax_backend_exports_its_canonical_weights_exactly(images, tmp_path):
    # The JAX route: the model's canonical weights exported by Keras on the torch backend, in its own process.
    x, y = images
    np.save(tmp_path / "x.npy", x)
    env = {"KERAS_BACKEND": "jax"}
    args = ("--model", "resnet8", "--num-classes", "10", "--input-size", "32", "--seed", "3")
    path = tmp_path / "m.onnx"
    run_module("tests.no_tensorflow", "keras_impl.export", "onnx", *args, "--out", path, env=env)
    run_module("tests.no_tensorflow", "keras_impl.export", "predict", *args, "--inputs", tmp_path / "x.npy",
               "--logits", tmp_path / "native.npy", env=env)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["framework"] == "keras" and meta["layout"] == "NHWC"
    assert "jax backend" in meta["exporter"] and "torch" in meta["exporter"], meta["exporter"]
    native = np.load(tmp_path / "native.npy")  # the JAX model's own logits
    assert_logits_match(native, ort_logits(path, x, "NHWC"), y)
    # Both JAX processes compiled through the test run's compilation cache (tests/run.py)
    assert any(Path(os.environ["JAX_COMPILATION_CACHE_DIR"]).glob("jit_*-cache")), "JAX's compilation cache is off"
