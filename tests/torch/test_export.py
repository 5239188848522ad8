"""PyTorch ONNX export: checker, metadata, symbolic batch, and ORT logits equal to torch's."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from pytorch_impl.export import export_onnx, load_model, predict
from pytorch_impl.resnet import build_model
from pytorch_impl.weights import get_weights, set_weights
from shared.onnx_meta import DEFAULT_OPSET, REQUIRED_KEYS, Source, build_metadata, graph_opset, resolve_source
from shared.spec import MODEL_NAMES, get_spec
from tests.blocked_imports import blocked_env
from tests.conftest import run_module
from tests.export_helpers import assert_logits_match, fixture_images, make_run, randomize_bn


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return fixture_images(tmp_path_factory.mktemp("data"), n=64)


def _export(spec, path, seed=0, dynamo=True, opset=DEFAULT_OPSET):
    torch.manual_seed(seed)
    model = build_model(spec)
    set_weights(model, spec, randomize_bn(get_weights(model, spec), seed))
    model.eval()
    export_onnx(model, spec, path, build_metadata(Source(spec=spec, seed=seed), "torch", "test", opset), opset=opset,
                dynamo=dynamo)
    return model


def _ort_logits(path, x_nhwc):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))})[0]


# resnet50 at 32 px: the ImageNet stem and bottlenecks (export ~25 s; the graph does not depend on the size).
# The TorchScript exporter (dynamo=False) is the fallback where onnxscript is missing: the same contract.
@pytest.mark.parametrize("name,dynamo", [("resnet20", True), ("plain20", True), ("resnet50", True),
                                         ("resnet20", False)])
def test_export_matches_torch_on_fixture_set(name, dynamo, images, tmp_path):
    x, y = images
    spec = get_spec(name, num_classes=10, input_size=32)
    path = tmp_path / f"{name}.onnx"
    model = _export(spec, path, dynamo=dynamo)

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert set(REQUIRED_KEYS) <= set(meta) and meta["layout"] == "NCHW" and meta["framework"] == "torch"
    assert json.loads(meta["spec"]) == spec.to_dict() and meta["input_size"] == "32"
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["logits"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 32, 32]

    native = predict(model, x)
    with torch.no_grad():  # predict() transposes NHWC -> NCHW itself; check it against a direct call
        direct = model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    np.testing.assert_array_equal(native, direct)
    assert_logits_match(native, _ort_logits(path, x), y)
    for batch in (1, 5):  # the batch dimension is symbolic
        assert_logits_match(native[:batch], _ort_logits(path, x[:batch]))


def test_without_onnxscript_the_torchscript_exporter_takes_over(images, tmp_path):
    x, y = images
    run = make_run("torch", "resnet20", tmp_path / "run", tmp_path / "data")
    path = tmp_path / "fallback.onnx"
    proc = run_module("pytorch_impl.export", "onnx", "--run", run, "--out", path,
                      env=blocked_env(tmp_path / "block", ("onnxscript",)))
    notes = [line for line in proc.stderr.splitlines() if line.strip()]
    assert notes == ["note: onnxscript is not installed; exporting with torch's TorchScript-based ONNX exporter "
                     "(torch.onnx.export(dynamo=False))"]  # one line, no warnings or traceback
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["exporter"] == f"torch {torch.__version__} torch.onnx torchscript"
    native = predict(load_model(resolve_source(str(run))), x)
    assert_logits_match(native, _ort_logits(path, x), y)
    assert_logits_match(native[:3], _ort_logits(path, x[:3]))  # symbolic batch


def test_random_weights_are_seeded():
    spec = get_spec("resnet20")
    a, b, c = (get_weights(load_model(Source(spec=spec, seed=s)), spec) for s in (0, 0, 1))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["conv1.weight"], c["conv1.weight"])


def test_export_refuses_non_string_metadata(tmp_path):
    spec = get_spec("resnet20")
    with pytest.raises(TypeError, match="strings"):
        export_onnx(build_model(spec), spec, tmp_path / "m.onnx", {"input_size": 32})
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
    model = _export(spec, tmp_path / "m.onnx", opset=opset, dynamo=None)  # below 18: the TorchScript exporter
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert graph_opset(proto) == opset and {p.key: p.value for p in proto.metadata_props}["opset"] == str(opset)
    assert_logits_match(predict(model, x), _ort_logits(tmp_path / "m.onnx", x), y)
