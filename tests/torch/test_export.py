"""PyTorch ONNX export: checker, metadata, symbolic batch, and ORT logits equal to torch's."""

import numpy as np
import onnx
import pytest
import torch

from pytorch_impl.export import export_onnx, load_model, predict
from pytorch_impl.resnet import build_model
from pytorch_impl.weights import get_weights, set_weights
from shared.export_meta import DEFAULT_OPSET, build_metadata
from shared.export_source import Source, resolve_source
from shared.spec import get_spec
from tests.blocked_imports import blocked_env
from tests.conftest import run_module
from tests.export_helpers import ExportContract, assert_logits_match, fixture_images, make_run, ort_logits, randomize_bn


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return fixture_images(tmp_path_factory.mktemp("data"), n=64)


class TestTorchExport(ExportContract):
    framework, layout = "torch", "NCHW"
    load_model, get_weights, predict = staticmethod(load_model), staticmethod(get_weights), staticmethod(predict)

    def export(self, spec, path, seed=0, opset=DEFAULT_OPSET, dynamo=None):
        """``dynamo=None``: export_onnx's own choice (dynamo from opset 18 where onnxscript is installed)."""
        torch.manual_seed(seed)
        model = build_model(spec)
        set_weights(model, spec, randomize_bn(get_weights(model, spec), seed))
        model.eval()
        meta = build_metadata(Source(spec=spec, seed=seed), "torch", "test", opset)
        export_onnx(model, spec, path, meta, opset=opset, dynamo=dynamo)
        return model

    # resnet50 at 32 px: the ImageNet stem and bottlenecks (export ~25 s; the graph does not depend on the size).
    # The TorchScript exporter (dynamo=False) is the fallback where onnxscript is missing: the same contract.
    @pytest.mark.parametrize("name,dynamo", [("resnet20", True), ("plain20", True), ("resnet50", True),
                                             ("resnet20", False)])
    def test_export_matches_torch_on_fixture_set(self, name, dynamo, images, tmp_path):
        x, y = images
        spec = get_spec(name, num_classes=10, input_size=32)
        model = self.export(spec, tmp_path / f"{name}.onnx", dynamo=dynamo)
        self.check_onnx_file(tmp_path / f"{name}.onnx", spec)
        with torch.no_grad():  # predict() transposes NHWC -> NCHW itself; check it against a direct call
            direct = model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
        np.testing.assert_array_equal(predict(model, x), direct)
        self.check_logits(model, tmp_path / f"{name}.onnx", x, y)


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
    assert_logits_match(native, ort_logits(path, x, "NCHW"), y)
    assert_logits_match(native[:3], ort_logits(path, x[:3], "NCHW"))  # symbolic batch


def test_export_refuses_non_string_metadata(tmp_path):
    spec = get_spec("resnet20")
    with pytest.raises(TypeError, match="strings"):
        export_onnx(build_model(spec), spec, tmp_path / "m.onnx", {"input_size": 32})
    assert not (tmp_path / "m.onnx").exists()
