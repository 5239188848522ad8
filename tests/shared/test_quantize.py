"""``make quantize``: int8 / fp16 files of both frameworks' exports, checked against independent numbers.

Independent sources: the float32 ONNX file in a bare ORT session, the prepared arrays normalized by
``shared/data.py`` (not by the quantizer's own reader), ORT's MinMax rule recomputed from the seeded
training sample, and ``onnx.reference.ReferenceEvaluator``. The run is a BN-randomized resnet20
(``tests/export_helpers.py``): the numbers are about the files, not about a trained model.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from export import quantize
from export.parity import REFERENCE_REL_BOUNDS, reference_checks
from tests.conftest import ROOT, run_module


@pytest.fixture(scope="module")
def qrun(tmp_path_factory, data_dir):
    run = tmp_path_factory.mktemp("qrun") / "resnet20"
    run_module("tests.export_helpers", "--framework", "torch", "--model", "resnet20", "--out", run,
               "--data-dir", data_dir, "--seed", "2")
    return run


def _quantize(run, data_dir, *extra):
    before = set(ROOT.iterdir())
    out = run_module("export.quantize", "--run", run, "--data-dir", data_dir, *extra).stdout
    stray = [f.name for f in set(ROOT.iterdir()) - before if f.suffix in (".onnx", ".data")]
    assert not stray  # ORT's pre-processing leaves no model or external-data file in the working directory
    path = Path(out.strip().splitlines()[-1].split()[1].rstrip(","))
    return path, json.loads(path.with_suffix(".json").read_text())


def _test_split(data_dir, layout):
    """The synthetic test split normalized by shared/data.py with the prepared manifest, in ``layout``."""
    from datasets import load_prepared
    from shared.data import norm_constants, normalize

    prepared = load_prepared("synthetic", data_dir)
    x, y = prepared.arrays("test")
    x = normalize(x, *norm_constants(prepared.manifest))
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if layout == "NCHW" else x), y


def _logits(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_int8_static_qdq_per_channel_calibrated_on_training_split(framework, qrun, data_dir):
    path, report = _quantize(qrun, data_dir, "--framework", framework, "--calibration", "64", "--seed", "3")
    float_path = qrun / ("model.onnx" if framework == "torch" else "model-keras.onnx")
    assert path == float_path.with_name(f"{float_path.stem}.int8.onnx") and path.with_suffix(".md").is_file()
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["precision"] == "int8" and meta["framework"] == framework and meta["float32_source"] == str(float_path)
    layout = meta["layout"]

    # QDQ, per-channel int8 weights: every Conv weight is dequantized with one scale per output channel.
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert convs and len(convs) >= 19  # resnet20: 19 convolutions
    for conv in convs:
        dq = producers[conv.input[1]]
        assert dq.op_type == "DequantizeLinear"
        w, scale, zero = (inits[i] for i in dq.input)
        assert w.dtype == np.int8 and zero.dtype == np.int8 and scale.shape == (w.shape[0],)

    # Calibration: ORT's MinMax rule on the seeded sample of the training split, normalized by shared/data.py.
    from datasets import load_prepared
    from shared.data import norm_constants, normalize

    prepared = load_prepared("synthetic", data_dir)
    x_train, _ = prepared.arrays("train")
    idx = np.sort(np.random.default_rng(3).choice(len(x_train), size=64, replace=False))
    calib = normalize(x_train[idx], *norm_constants(prepared.manifest))
    rmin, rmax = min(0.0, float(calib.min())), max(0.0, float(calib.max()))
    # The first QuantizeLinear after the graph input (Keras files transpose NHWC -> NCHW first: same range).
    feeds, q_in = {"input"}, None
    for node in proto.graph.node:
        if node.input and node.input[0] in feeds:
            if node.op_type == "QuantizeLinear":
                q_in = node
                break
            if node.op_type == "Transpose":
                feeds.add(node.output[0])
    assert q_in is not None
    assert inits[q_in.input[2]].dtype == np.uint8
    np.testing.assert_allclose(inits[q_in.input[1]], (rmax - rmin) / 255, rtol=1e-6)
    assert report["calibration_indices_head"] == idx[:8].tolist()
    assert report["quantization"]["calibration_split"] == "train" and report["quantization"]["calibration_images"] == 64

    # The report's numbers, recomputed from the float32 file and the int8 file in bare ORT sessions.
    x, y = _test_split(data_dir, layout)
    f32, q8 = _logits(float_path, x), _logits(path, x)
    assert report["n"] == 500 and report["split"] == "test"
    assert report["float32_acc"] == pytest.approx(np.mean(f32.argmax(1) == y), abs=1e-12)
    assert report["acc"] == pytest.approx(np.mean(q8.argmax(1) == y), abs=1e-12)
    assert report["top1_agreement_pct"] == pytest.approx(100 * np.mean(f32.argmax(1) == q8.argmax(1)), abs=1e-9)
    assert report["max_abs_logit_diff"] == pytest.approx(np.abs(f32 - q8).max(), rel=1e-5)
    # Quantization changed the numbers, within a few percent of the logit range.
    assert 1e-4 < report["max_abs_logit_diff"] < 0.15 * np.abs(f32).max()
    assert report["top1_agreement_pct"] >= 85.0  # an untrained, BN-randomized model: margins are small

    # The second runtime agrees with ORT on both files, each within its bound.
    ref = report["reference_evaluator"]
    assert ref["float32"]["ok"] and ref["float32"]["max_abs_diff"] < 1e-4
    assert ref["int8"]["ok"] and ref["int8"]["max_abs_diff"] <= REFERENCE_REL_BOUNDS["int8"] * max(
        1.0, ref["int8"]["max_abs_logit"])


@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_fp16_keeps_float32_io_and_tracks_float32(framework, qrun, data_dir):
    path, report = _quantize(qrun, data_dir, "--framework", framework, "--precision", "fp16")
    proto = onnx.load(str(path))
    io_types = {v.type.tensor_type.elem_type for v in (*proto.graph.input, *proto.graph.output)}
    assert io_types == {onnx.TensorProto.FLOAT}
    weights = [t for t in proto.graph.initializer if len(t.dims) == 4]  # conv kernels
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    assert any(n.op_type == "Cast" for n in proto.graph.node)

    float_path = Path(report["float32_file"])
    x, y = _test_split(data_dir, {p.key: p.value for p in proto.metadata_props}["layout"])
    f32, f16 = _logits(float_path, x), _logits(path, x)
    assert f16.dtype == np.float32
    diff = np.abs(f32 - f16).max()
    assert report["max_abs_logit_diff"] == pytest.approx(diff, rel=1e-5)
    assert 0 < diff < 1e-2 * max(1.0, np.abs(f32).max())  # half precision, not float32 and not garbage
    assert np.mean(f32.argmax(1) == f16.argmax(1)) >= 0.98
    assert report["reference_evaluator"]["fp16"]["ok"]


def test_parity_checks_quantized_files_with_the_second_runtime(qrun, data_dir):
    """`make onnx-parity`'s ReferenceEvaluator step covers the int8/fp16 files beside the float32 one."""
    from export.infer import load

    x, _ = _test_split(data_dir, "NHWC")
    if not (qrun / "model.int8.onnx").is_file():
        _quantize(qrun, data_dir, "--calibration", "32")
    files = {"torch": qrun / "model.onnx"}
    checks = reference_checks(files, {"torch": load(files["torch"])}, x[:3])
    assert str(qrun / "model.int8.onnx") in checks and all(c["ok"] for c in checks.values())
    assert checks[str(qrun / "model.onnx")]["max_abs_diff"] < 1e-4
    assert checks[str(qrun / "model.int8.onnx")]["precision"] == "int8"


def _error(*argv) -> str:
    from shared.errors import UserError

    with pytest.raises(UserError) as e:
        quantize.main([str(a) for a in argv])
    return f"error: {e.value}"


def test_quantize_bad_input_is_one_line(qrun, data_dir, tmp_path):
    assert _error("--run", qrun, "--precision", "int4") == "error: unknown precision 'int4'; valid choices: int8, fp16"
    msg = _error("--run", qrun, "--data-dir", tmp_path / "nodata")
    assert "is not prepared; run `make data DATASET=synthetic" in msg and msg.startswith("error: the run's data")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    assert _error("--run", qrun, "--onnx", garbage, "--data-dir", data_dir).startswith(
        f"error: cannot read ONNX model {garbage}: truncated or corrupt (")
    if (qrun / "model.int8.onnx").is_file():
        assert "is already int8; give the float32 export" in _error(
            "--run", qrun, "--onnx", qrun / "model.int8.onnx", "--data-dir", data_dir)
    proc = subprocess.run(["make", "-n", "-o", ".venv/.installed", "quantize", "RUN=r", "PRECISION=fp16",
                           "FRAMEWORK=keras"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "-m export.quantize --run r --framework keras" in proc.stdout and "--precision fp16" in proc.stdout


def test_calibration_sample_is_seeded_and_without_replacement():
    x = np.arange(100)[:, None]
    a, ia = quantize.calibration_sample(x, 10, seed=0)
    b, ib = quantize.calibration_sample(x, 10, seed=0)
    _, ic = quantize.calibration_sample(x, 10, seed=1)
    assert np.array_equal(ia, ib) and not np.array_equal(ia, ic) and len(set(ia.tolist())) == 10
    assert np.array_equal(a[:, 0], ia)
    assert len(quantize.calibration_sample(x, 500, seed=0)[1]) == 100
