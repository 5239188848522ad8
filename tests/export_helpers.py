"""Run folders for the export tests, in the run-folder layout of shared/runs.py, with randomized weights.

``python -m tests.export_helpers --framework torch|keras --model resnet20 --out DIR [--data-dir D]``
builds the model in that framework (in this process: call it as a subprocess), randomizes every BN
parameter and running statistic (so a swapped or missing mapping cannot pass by accident; convs and
the classifier keep the framework's random init), and writes ``config.json`` + ``best.safetensors``
(+ ``last.safetensors``) for the synthetic dataset. Nothing here is a trained result.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from shared.export_meta import DEFAULT_OPSET, REQUIRED_KEYS
from shared.export_source import Source
from shared.io import save_weights
from shared.onnx_file import graph_opset
from shared.process import FRAMEWORKS
from shared.runs import write_config
from shared.spec import MODEL_NAMES, get_spec


def randomize_bn(arrays: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """A copy with every BN tensor replaced by seeded random values of a plausible range."""
    rng = np.random.default_rng(seed)
    out = dict(arrays)
    for key, value in arrays.items():
        if key.endswith("running_var"):
            out[key] = rng.uniform(0.5, 2.0, value.shape).astype(np.float32)
        elif key.endswith("running_mean"):
            out[key] = rng.normal(0.0, 0.2, value.shape).astype(np.float32)
        elif key.endswith(".weight") and value.ndim == 1:  # BN gamma
            out[key] = rng.uniform(0.5, 1.5, value.shape).astype(np.float32)
        elif key.endswith(".bias") and not key.startswith("fc."):  # BN beta
            out[key] = rng.normal(0.0, 0.2, value.shape).astype(np.float32)
    return out


def _initial_weights(framework: str, spec, seed: int) -> dict[str, np.ndarray]:
    if framework == "torch":
        import torch

        from pytorch_impl.resnet import build_model
        from pytorch_impl.weights import get_weights

        torch.manual_seed(seed)
        return get_weights(build_model(spec), spec)

    from keras_impl.resnet import build_model
    from keras_impl.weights import get_weights

    return get_weights(build_model(spec, input_shape=(spec.input_size, spec.input_size, 3), seed=seed), spec)


def make_run(framework: str, model: str, out: Path, data_dir: Path, seed: int = 0) -> Path:
    """Write a synthetic-dataset run folder with BN-randomized weights of ``model`` (10 classes, 32 px)."""
    from datasets import load_prepared

    manifest = load_prepared("synthetic", data_dir).manifest
    spec = get_spec(model, num_classes=int(manifest["num_classes"]), input_size=int(manifest["image_size"]))
    arrays = randomize_bn(_initial_weights(framework, spec, seed), seed)
    meta = {"spec": spec.to_json(), "framework": framework, "epoch": "0"}
    out.mkdir(parents=True, exist_ok=True)
    save_weights(out / "best.safetensors", arrays, meta)
    save_weights(out / "last.safetensors", arrays, meta)
    write_config(out, {
        "model": spec.name, "framework": framework, "dataset": "synthetic", "synthetic": True,
        "spec": spec.to_dict(), "class_names": list(manifest["class_names"]), "input_size": spec.input_size,
        "normalization": {"mean": list(manifest["mean"]), "std": list(manifest["std"])},
        "recipe": {"note": "test fixture: random weights, not trained"}, "versions": {}, "git_commit": None,
        "device": "cpu",
    })
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.export_helpers")
    p.add_argument("--framework", choices=FRAMEWORKS, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--data-dir", default="data")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    path = make_run(args.framework, args.model, Path(args.out), Path(args.data_dir), args.seed)
    print(json.dumps({"run": str(path)}))
    return 0


def assert_logits_match(reference: np.ndarray, other: np.ndarray, labels: np.ndarray | None = None) -> float:
    """The issue's bar: |diff| <= 1e-4*max(1, max|reference|), 100% top-1 agreement, equal accuracy."""
    assert reference.shape == other.shape, (reference.shape, other.shape)
    diff = float(np.abs(reference.astype(np.float64) - other).max())
    tol = 1e-4 * max(1.0, float(np.abs(reference).max()))
    assert diff <= tol, f"max |logit diff| {diff:.3g} > tolerance {tol:.3g}"
    assert np.array_equal(reference.argmax(1), other.argmax(1)), "top-1 predictions differ"
    if labels is not None:
        assert np.mean(reference.argmax(1) == labels) == np.mean(other.argmax(1) == labels)
    return diff


def fixture_images(data_dir: str | Path, n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` images of the synthetic test split, normalized NHWC float32, and their labels."""
    from datasets import load_prepared
    from shared.data import norm_constants, normalize

    prepared = load_prepared("synthetic", data_dir)
    x, y = prepared.arrays("test")
    mean, std = norm_constants(prepared.manifest)
    return normalize(x[:n], mean, std), y[:n].astype(np.int64)


def ort_logits(path: str | Path, x_nhwc: np.ndarray, layout: str) -> np.ndarray:
    """ONNX Runtime's logits for NHWC images, transposed first when the model's ``layout`` is NCHW."""
    import onnxruntime as ort

    x = x_nhwc.transpose(0, 3, 1, 2) if layout == "NCHW" else x_nhwc
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": np.ascontiguousarray(x)})[0]


class ExportContract:
    """The ONNX export tests both frameworks must pass; ``tests/<framework>/test_export.py`` subclasses it.

    A subclass names its ``framework`` and ``layout`` and gives the framework's ``load_model``,
    ``get_weights``, ``predict`` and ``export(spec, path, seed=0, opset=DEFAULT_OPSET)`` (a model with
    BN-randomized weights, exported to ``path``); its module defines the ``images`` fixture.
    """

    framework: str
    layout: str

    def ort_logits(self, path: Path, x_nhwc: np.ndarray) -> np.ndarray:
        return ort_logits(path, x_nhwc, self.layout)

    def check_onnx_file(self, path: Path, spec) -> None:
        """Checker, metadata, input/output names and the symbolic batch dimension of an exported file."""
        import onnx

        proto = onnx.load(str(path))
        onnx.checker.check_model(proto, full_check=True)
        meta = {p.key: p.value for p in proto.metadata_props}
        assert set(REQUIRED_KEYS) <= set(meta) and meta["layout"] == self.layout
        assert meta["framework"] == self.framework
        assert json.loads(meta["spec"]) == spec.to_dict() and meta["input_size"] == str(spec.input_size)
        assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["logits"]
        dims = proto.graph.input[0].type.tensor_type.shape.dim
        size, channels = spec.input_size, spec.in_channels
        assert dims[0].dim_param == "batch"
        assert [d.dim_value for d in dims[1:]] == ([channels, size, size] if self.layout == "NCHW"
                                                   else [size, size, channels])

    def check_logits(self, model, path: Path, x: np.ndarray, y: np.ndarray) -> None:
        """ORT's logits equal the framework's, on the whole set and on batches of 1 and 5 (symbolic batch)."""
        native = self.predict(model, x)
        assert_logits_match(native, self.ort_logits(path, x), y)
        for batch in (1, 5):
            assert_logits_match(native[:batch], self.ort_logits(path, x[:batch]))

    def test_random_weights_are_seeded(self):
        spec = get_spec("resnet20")
        a, b, c = (self.get_weights(self.load_model(Source(spec=spec, seed=s)), spec) for s in (0, 0, 1))
        assert all(np.array_equal(a[k], b[k]) for k in a)
        assert not np.array_equal(a["conv1.weight"], c["conv1.weight"])

    @pytest.mark.slow
    @pytest.mark.parametrize("name", [n for n in MODEL_NAMES if not n.endswith("1202")])
    def test_every_registry_model_exports(self, name, tmp_path):
        spec = get_spec(name)
        spec = spec.with_overrides(input_size=64) if spec.stem == "imagenet" else spec
        model = self.export(spec, tmp_path / "m.onnx")
        x = np.random.default_rng(0).standard_normal((3, spec.input_size, spec.input_size, 3)).astype(np.float32)
        assert_logits_match(self.predict(model, x), self.ort_logits(tmp_path / "m.onnx", x))

    @pytest.mark.parametrize("opset", [DEFAULT_OPSET, 17, 13])
    def test_export_writes_the_requested_opset(self, opset, images, tmp_path):
        import onnx

        x, y = images
        model = self.export(get_spec("resnet20"), tmp_path / "m.onnx", opset=opset)
        proto = onnx.load(str(tmp_path / "m.onnx"))
        assert graph_opset(proto) == opset and {p.key: p.value for p in proto.metadata_props}["opset"] == str(opset)
        assert_logits_match(self.predict(model, x), self.ort_logits(tmp_path / "m.onnx", x), y)


if __name__ == "__main__":
    sys.exit(main())
