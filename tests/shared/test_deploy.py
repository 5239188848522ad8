"""``make deploy-check``, ``make export FORMAT=``, ``make infer RUNTIME=`` and unwritable outputs.

The numbers are checked against an independent source: the native model's own logits, computed here by
``python -m pytorch_impl.export predict`` / ``keras_impl.export predict`` on the test split normalized by
``shared/data.py`` (not by the tool's evaluation code), compared with the logits each runtime wrote. This
process imports neither torch nor tensorflow; every framework and every torch- or tensorflow-bound runtime
runs in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export import infer, model_file
from export.runtimes import INFER_RUNTIMES, RUNTIMES, opset_advice
from shared.export_meta import FORMATS, read_metadata
from tests.blocked_imports import blocked_env
from tests.conftest import ROOT, run_code, run_module
from tests.export_helpers import assert_logits_match

LIMIT = 32
INSTALLED = [name for name, r in RUNTIMES.items() if r.installed]


def _test_split(data_dir: Path, n: int = LIMIT) -> tuple[np.ndarray, np.ndarray]:
    from datasets import load_prepared
    from shared.data import norm_constants, normalize

    prepared = load_prepared("synthetic", data_dir)
    x, y = prepared.arrays("test")
    return normalize(x[:n], *norm_constants(prepared.manifest)), y[:n].astype(np.int64)


def _native(framework: str, run: Path, x: np.ndarray, tmp: Path, backend: str = "tensorflow") -> np.ndarray:
    np.save(tmp / "x.npy", x)
    out = tmp / f"native-{framework}-{backend}.npy"
    run_module(f"{'pytorch_impl' if framework == 'torch' else 'keras_impl'}.export", "predict", "--run", run,
               "--inputs", tmp / "x.npy", "--logits", out, env={"KERAS_BACKEND": backend})
    return np.load(out)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory, data_dir):
    """A torch resnet8 run (BN-randomized weights) through deploy-check: torch and Keras-on-TensorFlow sources,
    every format, ONNX at opsets 17 and 18, every runtime, 32 test images, no timing."""
    tmp = tmp_path_factory.mktemp("deploy")
    run = tmp / "resnet8"
    run_module("tests.export_helpers", "--framework", "torch", "--model", "resnet8", "--out", run,
               "--data-dir", data_dir, "--seed", "4")
    proc = run_module("export.deploy_check", "--run", run, "--data-dir", data_dir, "--limit", LIMIT,
                      "--opsets", "18,17", "--no-speed", "--logits-dir", tmp / "logits", "--out", tmp / "report")
    report = json.loads((tmp / "report" / "deploy-check.json").read_text())
    return run, report, tmp, proc


def _cells(report, **match):
    return [c for c in report["cells"] if all(c.get(k) == v for k, v in match.items())]


def test_every_installed_runtime_loads_a_file_and_agrees_with_the_native_model(matrix, data_dir):
    run, report, tmp, proc = matrix
    x, y = _test_split(data_dir)
    natives = {"torch": _native("torch", run, x, tmp), "keras-tensorflow": _native("keras", run, x, tmp)}
    assert_logits_match(natives["torch"], natives["keras-tensorflow"], y)  # one set of canonical weights
    logits_dir = tmp / "logits"
    checked = set()
    for cell in report["cells"]:
        f = report["files"][cell["file_index"]]
        if cell["load"] != "ok" or (cell["runtime"] == "onnx2torch" and f["opset"] == 18):
            continue
        cell_id = f"c{cell['file_index']}-{cell['runtime']}"
        logits = np.load(logits_dir / f"{cell_id}.npy")
        native = natives[cell["source"]][: cell["n"]]
        diff = assert_logits_match(native, logits, y[: cell["n"]])  # the bar, from independent logits
        assert cell["agreement"]["max_abs_diff"] == pytest.approx(diff, rel=1e-6, abs=1e-12)
        assert cell["agreement"]["top1_agreement_pct"] == 100.0 and cell["ok"]
        checked.add(cell["runtime"])
    assert checked == set(INSTALLED), f"runtimes never checked: {set(INSTALLED) - checked}"
    assert report["ok"] and proc.returncode == 0
    # Each format reached at least one runtime, from the source that writes it.
    loaded = {(c["source"], c["format"]) for c in report["cells"] if c.get("ok")}
    assert {("torch", "onnx"), ("torch", "pt2"), ("keras-tensorflow", "onnx"), ("keras-tensorflow", "saved_model"),
            ("keras-tensorflow", "litert"), ("keras-tensorflow", "openvino")} <= loaded


def test_matrix_cells_say_where_a_file_cannot_go(matrix):
    _, report, tmp, _ = matrix
    by_file = {(f["source"], f["format"], f["opset"]): f for f in report["files"]}
    assert by_file[("torch", "litert", None)]["error"].startswith("no route: litert is written by keras")
    assert by_file[("keras-tensorflow", "pt2", None)]["error"].startswith("no route")
    # OpenVINO reads every Keras format but .pt2; LiteRT only .tflite; TensorFlow only the SavedModel.
    assert {c["format"] for c in _cells(report, runtime="openvino-f32", source="keras-tensorflow")} == {
        "onnx", "openvino", "litert", "saved_model"}
    assert {c["format"] for c in _cells(report, runtime="litert")} == {"litert"}
    assert {c["format"] for c in _cells(report, runtime="tensorflow")} == {"saved_model"}
    # The precision hint of each OpenVINO cell is named; f32 where asked for.
    assert {c["info"]["precision_hint"] for c in _cells(report, runtime="openvino-f32")} == {"f32"}
    from shared.machine import cpu_has_bf16

    default_hints = {c["info"]["precision_hint"] for c in _cells(report, runtime="openvino")}
    assert default_hints == ({"bf16"} if cpu_has_bf16() else {"f32"})
    md = (tmp / "report" / "deploy-check.md").read_text()
    assert "| source · format | " + " | ".join(RUNTIMES) + " |" in md and "**Verdict: PASS**" in md
    grid = (tmp / "report" / "matrix.md").read_text()  # the README's block: the same grid, without the cells
    assert grid.split("| source · format |")[1] in md and "## Every cell" not in grid and "**Verdict: PASS**" in grid


@pytest.mark.skipif("onnx2torch" not in INSTALLED, reason="onnx2torch is not installed")
def test_opset_advice_is_what_the_matrix_measured(matrix):
    _, report, _, _ = matrix
    support = report["opset_support"]["onnx2torch"]
    assert support["17"] == "ok" and "Pad" in support["18"] and "version=18" in support["18"]
    assert all(per["18"] == "ok" and per["17"] == "ok" for rt, per in report["opset_support"].items()
               if rt != "onnx2torch")
    assert opset_advice(18) == ["onnx2torch reads ONNX up to opset 17: export with OPSET=17 for it"]
    assert opset_advice(17) == []


def test_metadata_travels_with_every_format(matrix):
    run, report, _, _ = matrix
    config = json.loads((run / "config.json").read_text())
    for f in report["files"]:
        if "path" not in f:
            continue
        meta = read_metadata(f["path"])
        assert meta["format"] == f["format"] and meta["class_names"] == config["class_names"]
        assert meta["normalization"]["mean"] == pytest.approx(config["normalization"]["mean"])
        assert meta["layout"] == ("NCHW" if f["source"] == "torch" else "NHWC")
        assert meta.get("backend") == (None if f["source"] == "torch" else "tensorflow")
    sidecars = [Path(f["path"] + ".json") for f in report["files"] if f["format"] == "litert" and "path" in f]
    assert sidecars and all(p.is_file() for p in sidecars)  # LiteRT has no place inside: a sidecar
    assert FORMATS["litert"].metadata.startswith("sidecar") and FORMATS["openvino"].metadata.startswith("inside")


def test_a_missing_runtime_is_a_not_installed_row(tmp_path, data_dir, matrix):
    run, _, _, _ = matrix
    proc = run_module("export.deploy_check", "--run", run, "--data-dir", data_dir, "--limit", "8", "--sources",
                      "torch", "--formats", "onnx", "--opsets", "17", "--runtimes", "onnxruntime,opencv",
                      "--no-speed", "--out", tmp_path, env=blocked_env(tmp_path / "block", ("cv2",)))
    report = json.loads((tmp_path / "deploy-check.json").read_text())
    opencv = _cells(report, runtime="opencv")
    assert [c["load"] for c in opencv] == ["not installed"] and "opencv-python-headless==" in opencv[0]["reason"]
    assert report["runtimes"]["opencv"]["installed"] is False and report["ok"] and proc.returncode == 0
    assert _cells(report, runtime="onnxruntime")[0]["ok"]
    assert "not installed" in (tmp_path / "deploy-check.md").read_text()


# make infer RUNTIME= ------------------------------------------------------------------------------------
def test_infer_runtimes_agree_with_onnx_runtime_on_images(matrix, tmp_path, capsys):
    _, report, _, _ = matrix
    onnx_file = next(f["path"] for f in report["files"] if f["source"] == "torch" and f["opset"] == 17)
    ir_file = next(f["path"] for f in report["files"] if f["format"] == "openvino" and "path" in f)
    pixels = np.random.default_rng(1).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    paths = []
    for i, img in enumerate(pixels):
        paths.append(tmp_path / f"i{i}.png")
        Image.fromarray(img).save(paths[-1])
    results = {}
    for runtime, path in [*((r, onnx_file) for r in INFER_RUNTIMES if RUNTIMES[r].installed), ("openvino", ir_file)]:
        assert infer.main([path, *map(str, paths), "--runtime", runtime, "--json", "--topk", "3"]) == 0
        results[(runtime, path)] = json.loads(capsys.readouterr().out)
    base = results[("onnxruntime", onnx_file)]
    for key, rows in results.items():
        assert [r["top"][0]["class"] for r in rows] == [r["top"][0]["class"] for r in base], key
        np.testing.assert_allclose([r["top"][0]["prob"] for r in rows], [r["top"][0]["prob"] for r in base],
                                   atol=1e-5)


def test_infer_runtime_and_provider_errors_are_one_line(matrix, tmp_path):
    import onnxruntime as ort

    _, report, _, _ = matrix
    onnx_file = next(f["path"] for f in report["files"] if f["format"] == "onnx" and "path" in f)
    pt2 = next(f["path"] for f in report["files"] if f["format"] == "pt2" and "path" in f)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")

    def error(*argv):
        proc = subprocess.run([sys.executable, "-m", "export.infer", *map(str, argv)], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        return lines[0]

    assert error(onnx_file, tmp_path / "a.png", "--runtime", "tvm") == (
        f"error: unknown runtime 'tvm'; valid choices: {', '.join(INFER_RUNTIMES)}")
    if "openvino" in INSTALLED:
        assert error(pt2, tmp_path / "a.png", "--runtime", "openvino").startswith(
            "error: openvino does not read pt2 files; it reads: onnx, openvino")
    offered = [k for k, v in model_file.PROVIDERS.items() if v in ort.get_available_providers()]
    missing = next(k for k in model_file.PROVIDERS if k not in offered)
    assert f"valid choices here: {', '.join(offered)} " in error(onnx_file, tmp_path / "a.png", "--provider", missing)
    help_text = run_module("export.infer", "--help").stdout
    assert f"this build offers: {', '.join(offered)} (default cpu)" in " ".join(help_text.split())


# Unwritable outputs: one line, exit 2, before any work ---------------------------------------------------
NOPE = "/proc/nope"  # cannot be created, even by root


def _refused(module, *argv):
    proc = subprocess.run([sys.executable, "-m", module, *map(str, argv)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: cannot write"), proc.stderr
    assert NOPE in lines[0] and proc.stdout == "", proc.stdout  # nothing ran: no result printed
    return lines[0]


def test_unwritable_outputs_are_refused_before_any_work(matrix, tmp_path, data_dir):
    run, report, _, _ = matrix
    onnx_file = next(f["path"] for f in report["files"] if f["format"] == "onnx" and "path" in f)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    assert _refused("export.infer", onnx_file, tmp_path / "a.png", "--out", f"{NOPE}/p.csv") == (
        f"error: cannot write predictions file {NOPE}/p.csv: cannot create the folder {NOPE} (No such file or "
        "directory)")
    _refused("export.onnx_export", "--run", run, "--out", f"{NOPE}/m.onnx")
    _refused("export.onnx_export", "--run", run, "--format", "pt2", "--out", f"{NOPE}/m.pt2")
    _refused("export.quantize", "--run", run, "--data-dir", data_dir, "--out", f"{NOPE}/q.onnx")
    _refused("export.deploy_check", "--run", run, "--data-dir", data_dir, "--out", f"{NOPE}/report")
    _refused("export.bench_deploy", "--run", run, "--data-dir", data_dir, "--out", f"{NOPE}/report")
    assert not list(tmp_path.glob("*.csv"))


# make export FORMAT= --------------------------------------------------------------------------------------
def test_export_format_errors_and_make_dispatch(matrix):
    run, _, _, _ = matrix
    for args, expected in (
        (["--format", "tflite"], "error: unknown format 'tflite'; valid choices: onnx, pt2, saved_model, litert, "
                                 "openvino"),
        (["--format", "litert"], "error: torch has no route to litert (it is written by keras); torch writes: "
                                 "onnx, pt2"),
        (["--format", "pt2", "--framework", "keras"], "error: Keras writes pt2 on the torch backend, not on "
                                                      "tensorflow (make ... BACKEND=torch)"),
    ):
        proc = run_module("export.onnx_export", "--run", run, *args, check=False)
        assert proc.returncode == 2 and proc.stderr.strip() == expected, proc.stderr
    def dry(*a: str) -> str:
        out = subprocess.run(["make", "-n", "-o", ".venv/.installed", *a], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout
        return " ".join(out.replace("\\\n", " ").split())

    assert "--format pt2" in dry("export", "RUN=r", "FORMAT=pt2")
    assert "--runtime openvino" in dry("infer", "ONNX=m.onnx", "IMAGES=a.png", "RUNTIME=openvino")
    assert "export.deploy_check --run r --data-dir data --sources torch,keras-torch --out o" in dry(
        "deploy-check", "RUN=r", "SOURCES=torch,keras-torch", "OUT=o")


def test_export_pt2_through_make_runs_in_torch_export_load(matrix, tmp_path, data_dir):
    """The user's path: make export FORMAT=pt2, then the file in torch.export.load equals the native model."""
    run, _, _, _ = matrix
    out = run_module("export.onnx_export", "--run", run, "--format", "pt2", "--out", tmp_path).stdout
    path = tmp_path / "model.pt2"
    assert out.startswith(f"wrote {path} (resnet8, pt2, torch exporter") and read_metadata(path)["format"] == "pt2"
    x, y = _test_split(data_dir, 8)
    np.save(tmp_path / "x.npy", x.transpose(0, 3, 1, 2))
    code = ("import sys, numpy as np, torch; m = torch.export.load(sys.argv[1]).module(); "
            "np.save(sys.argv[3], m(torch.from_numpy(np.load(sys.argv[2]))).detach().numpy())")
    run_code(code, path, tmp_path / "x.npy", tmp_path / "l.npy")
    assert_logits_match(_native("torch", run, x, tmp_path), np.load(tmp_path / "l.npy"), y)


@pytest.mark.slow
@pytest.mark.parametrize("model,framework", [("resnet20", "torch"), ("resnet50", "keras")])
def test_full_matrix_with_speed(model, framework, tmp_path, data_dir):
    """Every format from both sources in every runtime, with images/s at batch 1 and 64."""
    run = tmp_path / model
    run_module("tests.export_helpers", "--framework", framework, "--model", model, "--out", run,
               "--data-dir", data_dir, "--seed", "5")
    run_module("export.deploy_check", "--run", run, "--data-dir", data_dir, "--limit", "128", timeout=3600)
    report = json.loads((run / "deploy-check.json").read_text())
    assert report["ok"]
    for cell in report["cells"]:
        if cell.get("ok"):
            assert cell["speed"]["b1"]["median"] > 0 and cell["speed"]["b64"]["median"] > 0
    assert {c["runtime"] for c in report["cells"] if c.get("ok")} == set(INSTALLED)
