"""Keras ONNX export: checker, metadata, symbolic batch, and ORT logits equal to Keras'."""

import json

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from keras_impl.export import export_onnx, load_model, predict
from keras_impl.resnet import build_model
from keras_impl.weights import get_weights, set_weights
from shared.onnx_meta import DEFAULT_OPSET, REQUIRED_KEYS, Source, build_metadata, graph_opset
from shared.spec import MODEL_NAMES, get_spec
from tests.export_helpers import assert_logits_match, fixture_images, randomize_bn


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return fixture_images(tmp_path_factory.mktemp("data"), n=64)


def _build(spec):
    return build_model(spec, input_shape=(spec.input_size, spec.input_size, spec.in_channels))


def _export(spec, path, seed=0, opset=DEFAULT_OPSET):
    keras.utils.set_random_seed(seed)
    model = _build(spec)
    set_weights(model, spec, randomize_bn(get_weights(model, spec), seed))
    export_onnx(model, spec, path, build_metadata(Source(spec=spec, seed=seed), "keras", "test", opset), opset=opset)
    return model


def _ort_logits(path, x_nhwc):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": np.ascontiguousarray(x_nhwc)})[0]


def _check_export(name, images, tmp_path):
    x, y = images
    spec = get_spec(name, num_classes=10, input_size=32)
    path = tmp_path / f"{name}.onnx"
    model = _export(spec, path)

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert set(REQUIRED_KEYS) <= set(meta) and meta["layout"] == "NHWC" and meta["framework"] == "keras"
    assert json.loads(meta["spec"]) == spec.to_dict() and meta["input_size"] == "32"
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["logits"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [32, 32, 3]

    native = predict(model, x)
    np.testing.assert_array_equal(native, keras.ops.convert_to_numpy(model(x, training=False)))
    assert_logits_match(native, _ort_logits(path, x), y)
    for batch in (1, 5):  # the batch dimension is symbolic
        assert_logits_match(native[:batch], _ort_logits(path, x[:batch]))


# resnet18 at 32 px keeps an ImageNet-stem model in the fast suite; Keras' resnet50 export (tf2onnx)
# takes over a minute and ~7 GB of memory, so it runs with the slow cases.
@pytest.mark.parametrize("name", ["resnet20", "plain20", "resnet18"])
def test_export_matches_keras_on_fixture_set(name, images, tmp_path):
    _check_export(name, images, tmp_path)


@pytest.mark.slow
def test_export_resnet50_matches_keras(images, tmp_path):
    _check_export("resnet50", images, tmp_path)


def test_random_weights_are_seeded():
    spec = get_spec("resnet20")
    a, b, c = (get_weights(load_model(Source(spec=spec, seed=s)), spec) for s in (0, 0, 1))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["conv1.weight"], c["conv1.weight"])


def test_export_refuses_bad_metadata_and_fixed_batch(tmp_path):
    spec = get_spec("resnet20")
    with pytest.raises(TypeError, match="strings"):
        export_onnx(_build(spec), spec, tmp_path / "m.onnx", {"input_size": 32})
    fixed = keras.Model(*(lambda i: (i, _build(spec)(i)))(keras.Input(shape=(32, 32, 3), batch_size=4)))
    with pytest.raises(ValueError, match="batch dimension must be None"):
        export_onnx(fixed, spec, tmp_path / "m.onnx", {})
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in MODEL_NAMES if not n.endswith("1202")])
def test_every_registry_model_exports(name, tmp_path):
    spec = get_spec(name)
    spec = spec.with_overrides(input_size=64) if spec.stem == "imagenet" else spec
    model = _export(spec, tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((3, spec.input_size, spec.input_size, 3)).astype(np.float32)
    assert_logits_match(predict(model, x), _ort_logits(tmp_path / "m.onnx", x))


@pytest.mark.parametrize("opset", [DEFAULT_OPSET, 17, 13])
def test_export_writes_the_requested_opset(opset, images, tmp_path):
    x, y = images
    spec = get_spec("resnet20")
    model = _export(spec, tmp_path / "m.onnx", opset=opset)
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert graph_opset(proto) == opset and {p.key: p.value for p in proto.metadata_props}["opset"] == str(opset)
    assert_logits_match(predict(model, x), _ort_logits(tmp_path / "m.onnx", x), y)
