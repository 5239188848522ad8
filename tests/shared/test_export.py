"""Export across frameworks (subprocesses), parity reports, the ORT-only inference CLI, bad input.

This process imports neither torch nor tensorflow: every framework step runs in a subprocess.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export import infer, model_file
from export.parity import compare
from shared.export_meta import build_metadata
from shared.export_source import Source, default_onnx_path, resolve_source
from shared.spec import get_spec
from tests.conftest import ROOT, run_module


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def _make_run(framework, model, out, data_dir, seed=0):
    run_module("tests.export_helpers", "--framework", framework, "--model", model, "--out", out,
               "--data-dir", data_dir, "--seed", seed)
    return out


def _parity(run, data_dir, *extra):
    run_module("export.parity", "--run", run, "--data-dir", data_dir, *extra)
    return json.loads((Path(run) / "parity.json").read_text())


def _assert_parity_ok(report, native):
    assert report["native_framework"] == native and report["ok"] is True
    for fw in ("torch", "keras"):
        c = report["native_vs_ort"][fw]
        assert c["max_abs_diff"] <= c["tolerance"] and c["top1_agreement_pct"] == 100.0
        assert c["reference_acc"] == c["other_acc"]
    cross = report["torch_onnx_vs_keras_onnx"]
    assert cross["max_abs_diff"] <= cross["tolerance"] and cross["top1_agreement_pct"] == 100.0
    # The second runtime (onnx.reference.ReferenceEvaluator) computes what ORT computes, on both files.
    ref = report["reference_evaluator"]
    assert set(report["onnx_files"].values()) <= set(ref)
    assert all(c["ok"] and c["max_abs_diff"] < 1e-4 for c in ref.values() if c["precision"] == "float32")


@pytest.fixture(scope="module")
def torch_run(tmp_path_factory, data_dir):
    """A torch resnet20 run (BN-randomized weights) with both frameworks' exports and a parity report."""
    run = _make_run("torch", "resnet20", tmp_path_factory.mktemp("run") / "resnet20", data_dir)
    return run, _parity(run, data_dir, "--limit", "200")


def test_parity_torch_run_resnet20_both_exports(torch_run):
    run, report = torch_run
    _assert_parity_ok(report, "torch")
    assert report["n"] == 200 and report["split"] == "test"
    assert report["onnx_files"] == {"torch": str(run / "model.onnx"), "keras": str(run / "model-keras.onnx")}
    assert report["opsets"] == {"torch": 18, "keras": 18}  # the default, the same in both frameworks
    metas = {fw: infer.load(p).meta for fw, p in report["onnx_files"].items()}
    assert (metas["torch"]["layout"], metas["keras"]["layout"]) == ("NCHW", "NHWC")
    assert metas["torch"]["class_names"] == json.loads((run / "config.json").read_text())["class_names"]
    assert "# ONNX parity: resnet20" in (run / "parity.md").read_text()


@pytest.mark.slow  # fast guard: the deploy matrix exports both frameworks at opsets 18 and 17
def test_parity_keras_run_plain20_both_exports_at_an_older_opset(tmp_path, data_dir):
    """The torch run above checks the default opset (18); this one both exporters at 17 (torch: TorchScript)."""
    run = _make_run("keras", "plain20", tmp_path / "plain20", data_dir, seed=3)
    report = _parity(run, data_dir, "--limit", "200", "--opset", "17")
    _assert_parity_ok(report, "keras")
    assert report["opsets"] == {"keras": 17, "torch": 17}
    import onnx

    from shared.onnx_file import graph_opset

    for fw, path in report["onnx_files"].items():
        proto = onnx.load(path)
        assert graph_opset(proto) == 17, fw
        assert {p.key: p.value for p in proto.metadata_props}["opset"] == "17"
    assert "torchscript" in infer.load(report["onnx_files"]["torch"]).meta["exporter"]
    assert report["onnx_files"]["keras"].endswith("model.onnx")
    assert report["onnx_files"]["torch"].endswith("model-torch.onnx")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet50", "plain50"])
def test_parity_imagenet_stem_both_exports(name, tmp_path, data_dir):
    run = _make_run("torch", name, tmp_path / name, data_dir, seed=1)
    _assert_parity_ok(_parity(run, data_dir, "--limit", "100"), "torch")


def test_parity_with_onnx_override_and_out(torch_run, tmp_path, data_dir):
    run, first = torch_run
    assert first["exported_now"] == [str(run / "model.onnx"), str(run / "model-keras.onnx")]
    weights = run / "best.safetensors"
    later = (run / "model.onnx").stat().st_mtime + 10
    os.utime(weights, (later, later))  # as if training went on: the default model.onnx is now stale
    run_module("export.parity", "--run", run, "--onnx", run / "model-keras.onnx", "--data-dir", data_dir,
               "--limit", "50", "--out", tmp_path)
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["onnx_under_test"] == str(run / "model-keras.onnx") and report["ok"] and report["n"] == 50
    assert report["exported_now"] == [str(run / "model.onnx")]  # re-exported; the explicit file is kept


def test_compare_catches_disagreement():
    ref = np.array([[3.0, 1.0], [0.0, 2.0]], np.float32)
    assert compare(ref, ref + 1e-5, np.array([0, 1]))["ok"]
    flipped = compare(ref, ref[:, ::-1].copy(), np.array([0, 1]))
    assert not flipped["ok"] and flipped["top1_agreement_pct"] == 0.0 and flipped["other_acc"] == 0.0
    off = compare(ref, ref + 1e-3)  # tolerance is 1e-4 * max(1, 3)
    assert not off["within_tolerance"] and off["tolerance"] == pytest.approx(3e-4)


def test_infer_imports_neither_framework(torch_run):
    run, _ = torch_run
    img = run / "probe.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    code = (
        "import sys; from export import infer; infer.main([sys.argv[1], sys.argv[2]]); "
        "bad = [m for m in ('torch', 'tensorflow', 'keras', 'jax') if m in sys.modules]; "
        "assert not bad, bad; print('clean')"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(run / "model.onnx"), str(img)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("clean") and "probe.png" in proc.stdout


def _write_images(folder: Path, x: np.ndarray) -> list[Path]:
    paths = []
    for i, img in enumerate(x):
        paths.append(folder / f"img{i}.png")
        Image.fromarray(img).save(paths[-1])
    return paths


def test_make_infer_classifies_images_from_trained_synthetic_run(tmp_path, data_dir):
    """Train (briefly) with the real CLI, `make export`, `make infer`: ORT top-1 = the native model's."""
    from datasets import load_prepared
    from shared.data import norm_constants, normalize

    run = tmp_path / "run"
    run_module("pytorch_impl.train", "--model", "resnet20", "--dataset", "synthetic", "--data-dir", data_dir,
               "--iters", "4", "--batch-size", "32", "--out", run, "--no-progress", "--device", "cpu")
    make = ["make", "-s", "-o", ".venv/.installed", f"PY={sys.executable}"]
    env = {**os.environ, "MAKEFLAGS": ""}
    subprocess.run([*make, "export", f"RUN={run}"], cwd=ROOT, check=True, capture_output=True, env=env)
    assert (run / "model.onnx").is_file()

    prepared = load_prepared("synthetic", data_dir)
    x, y = prepared.arrays("test")
    x, y = x[:6], y[:6]
    paths = _write_images(tmp_path, x)
    proc = subprocess.run([*make, "infer", f"ONNX={run / 'model.onnx'}", f"IMAGES={' '.join(map(str, paths))}",
                           "TOPK=3"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    blocks = re.findall(r"^(\S+\.png)\n  1\. (\S+)\s+([0-9.]+)\n  2\. ", proc.stdout, flags=re.M)
    assert [Path(b[0]).name for b in blocks] == [p.name for p in paths], proc.stdout

    # The same pixels through the framework: normalize with the manifest, native logits in torch.
    model = infer.load(run / "model.onnx")
    size, resize = model.meta["input_size"], model.meta["resize"]  # as make infer reads them from the file
    pre = np.stack([infer.preprocess_array(infer.decode_image(p, size, resize)[0], model) for p in paths])  # NCHW
    mean, std = norm_constants(prepared.manifest)
    np.testing.assert_allclose(pre, normalize(x, mean, std).transpose(0, 3, 1, 2), rtol=0, atol=1e-6)
    np.save(tmp_path / "x.npy", normalize(x, mean, std))
    run_module("pytorch_impl.export", "predict", "--run", run, "--inputs", tmp_path / "x.npy",
               "--logits", tmp_path / "native.npy")
    native = np.load(tmp_path / "native.npy")
    names = prepared.manifest["class_names"]
    assert [b[1] for b in blocks] == [names[i] for i in native.argmax(1)]
    np.testing.assert_allclose([float(b[2]) for b in blocks], infer.softmax(native).max(1), atol=1e-4)
    print(f"infer: {sum(b[1] == names[t] for b, t in zip(blocks, y))}/6 correct vs labels")

    # Parity over the whole test split: native accuracy is the trainer's own results.json test_acc.
    report = _parity(run, data_dir)
    _assert_parity_ok(report, "torch")
    assert report["n"] == 500 and report["native_acc"] == pytest.approx(report["run_test_acc"], abs=1e-12)


# Bad input -------------------------------------------------------------------------------------------
@pytest.fixture
def onnx_file(torch_run):
    return torch_run[0] / "model.onnx"


def _infer_error(*argv) -> str:
    from shared.errors import UserError

    with pytest.raises(UserError) as e:
        infer.main([str(a) for a in argv])
    return f"error: {e.value}"


def test_infer_missing_and_truncated_onnx(onnx_file, tmp_path):
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    assert _infer_error(tmp_path / "nope.onnx", img) == f"error: ONNX file not found: {tmp_path / 'nope.onnx'}"
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(onnx_file.read_bytes()[: onnx_file.stat().st_size // 3])
    msg = _infer_error(truncated, img)
    assert msg.startswith(f"error: cannot read ONNX model {truncated}: truncated or corrupt ("), msg
    assert msg.endswith("); export it again (make export)") and "\n" not in msg and "Protobuf" not in msg
    proc = subprocess.run([sys.executable, "-m", "export.infer", str(truncated), str(img)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and str(truncated) in proc.stderr


def test_infer_onnx_without_metadata(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(proto, tmp_path / "foreign.onnx")
    msg = _infer_error(tmp_path / "foreign.onnx", "--npy", tmp_path / "x.npy")
    assert "lacks the metadata keys framework" in msg and "foreign.onnx" in msg


def _ort_probs(onnx_file, pixels_nhwc):
    """Independent of infer's pipeline: shared/data.py normalization and a bare ORT session."""
    import onnxruntime as ort

    from shared.data import normalize

    model = infer.load(onnx_file)
    norm = model.meta["normalization"]
    x = normalize(pixels_nhwc, np.asarray(norm["mean"], np.float32), np.asarray(norm["std"], np.float32))
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    return infer.softmax(sess.run(None, {"input": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0])


@pytest.fixture
def image_tree(tmp_path):
    """7 good PNGs (two nested folders deep), a corrupt JPEG, a broken symlink, a text file, an empty folder."""
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 255, (7, 32, 32, 3), dtype=np.uint8)
    root = tmp_path / "imgs"
    good = []
    for i, img in enumerate(pixels):
        folder = root / ("a" if i < 3 else "b/c")
        folder.mkdir(parents=True, exist_ok=True)
        good.append(folder / f"img{i}.png")
        Image.fromarray(img).save(good[-1])
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (root / "b" / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (root / "notes.txt").write_text("not an image")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    return root, good, pixels


def test_infer_folder_survives_bad_files_and_writes_csv(onnx_file, image_tree, tmp_path, capsys):
    root, good, pixels = image_tree
    out = tmp_path / "preds.csv"
    assert infer.main([str(onnx_file), str(root), "--topk", "3", "--batch-size", "3", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "classified 7 of 9 images; 2 failed"
    assert any(ln.startswith("failed: cannot decode image") and "broken.jpg" in ln for ln in err)
    assert f"failed: broken symlink: {root / 'b' / 'dangling.png'} -> {tmp_path / 'nowhere.png'}" in err
    rows = {r["path"]: r for r in csv.DictReader(out.open())}
    assert set(rows) == {*map(str, good), str(root / "a" / "broken.jpg"), str(root / "b" / "dangling.png")}
    broken = rows[str(root / "a" / "broken.jpg")]
    assert broken["status"] == "error" and broken["class_1"] == "" and broken["error"].startswith("cannot decode image")
    assert "broken symlink" in rows[str(root / "b" / "dangling.png")]["error"]
    probs = _ort_probs(onnx_file, pixels)
    names = infer.load(onnx_file).meta["class_names"]
    for path, p in zip(good, probs):
        row, order = rows[str(path)], np.argsort(-p)[:3]
        assert row["status"] == "ok" and row["error"] == ""
        assert [row[f"class_{i}"] for i in (1, 2, 3)] == [names[j] for j in order]
        np.testing.assert_allclose([float(row[f"prob_{i}"]) for i in (1, 2, 3)], p[order], atol=2e-6)


def test_infer_glob_json_and_batch_size_do_not_change_results(onnx_file, image_tree, tmp_path, capsys):
    root, good, pixels = image_tree
    assert infer.main([str(onnx_file), str(root / "**" / "*.png"), "--out", str(tmp_path / "p.json"), "--quiet"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == "classified 7 of 8 images; 1 failed"  # no .jpg
    rows = json.loads((tmp_path / "p.json").read_text())
    assert [r["image"] for r in rows if r["status"] == "ok"] == sorted(map(str, good))
    assert infer.main([str(onnx_file), *map(str, good), "--json", "--batch-size", "2"]) == 0
    captured = capsys.readouterr()
    small = json.loads(captured.out)
    assert captured.err.strip().splitlines()[-1] == "classified 7 of 7 images; 0 failed"
    by_path = {r["image"]: r["top"] for r in rows}
    assert all(r["top"] == by_path[r["image"]] for r in small)
    np.testing.assert_allclose([r["top"][0]["prob"] for r in small], _ort_probs(onnx_file, pixels).max(1), atol=2e-6)


def test_infer_bad_inputs_are_one_line_errors(onnx_file, image_tree, tmp_path):
    root, good, _ = image_tree
    empty = tmp_path / "empty"
    assert _infer_error(onnx_file, empty).startswith(f"error: no images in folder {empty} (searched recursively")
    assert _infer_error(onnx_file, tmp_path / "x*.png").startswith(f"error: no images match '{tmp_path / 'x*.png'}'")
    assert _infer_error(onnx_file, good[0], "--out", tmp_path / "p.txt") == (
        f"error: --out must end in .csv or .json; got {tmp_path / 'p.txt'}")
    import onnxruntime as ort

    offered = ", ".join(k for k, v in model_file.PROVIDERS.items() if v in ort.get_available_providers())
    assert _infer_error(onnx_file, good[0], "--provider", "tpu").startswith(
        f"error: unknown provider 'tpu' for onnxruntime {ort.__version__}; valid choices here: {offered} (it offers ")
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        msg = _infer_error(onnx_file, good[0], "--provider", "tensorrt")
        assert msg.startswith("error: provider 'tensorrt' (TensorrtExecutionProvider) is not available") and (
            f"valid choices here: {offered} " in msg), msg
    assert _infer_error(good[0], good[0]).startswith(f"error: cannot read ONNX model {good[0]}: truncated or corrupt")


def test_infer_missing_file_is_reported_per_file(onnx_file, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    assert infer.main([str(onnx_file), str(bad), str(tmp_path / "gone.png")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"failed: cannot decode image {bad}")
    assert err[1:] == [f"failed: image not found: {tmp_path / 'gone.png'}", "classified 0 of 2 images; 2 failed"]


def test_infer_wrong_input_shape_names_expected_and_got(onnx_file, tmp_path):
    np.save(tmp_path / "nhwc.npy", np.zeros((2, 32, 32, 3), np.float32))  # NHWC given to an NCHW file
    msg = _infer_error(onnx_file, "--npy", tmp_path / "nhwc.npy")
    assert msg == ("error: input shape mismatch: model.onnx expects (batch, 3, 32, 32) in NCHW layout; "
                   "got (2, 32, 32, 3)")
    np.save(tmp_path / "gray.npy", np.zeros((2, 1, 32, 32), np.float32))
    assert "got (2, 1, 32, 32)" in _infer_error(onnx_file, "--npy", tmp_path / "gray.npy")
    model = infer.load(onnx_file)
    with pytest.raises(infer.InferenceError, match=r"expects \(batch, 3, 32, 32\).*got \(3, 32, 32\)"):
        model.logits(np.zeros((3, 32, 32), np.float32))


def test_infer_converts_grayscale_rgba_and_resizes(onnx_file, tmp_path, capsys):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 60), dtype=np.uint8)).save(tmp_path / "gray.png")
    Image.fromarray(rng.integers(0, 255, (32, 32, 4), dtype=np.uint8), "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)).save(tmp_path / "big.jpg")
    assert infer.main([str(onnx_file), *(str(tmp_path / n) for n in ("gray.png", "rgba.png", "big.jpg")),
                       "--topk", "2"]) == 0
    out = capsys.readouterr().out
    assert "gray.png  [L image converted to RGB]" in out and "rgba.png  [RGBA image converted to RGB]" in out
    assert re.search(r"big\.jpg\n  1\. \S+ +0\.\d{4}\n  2\. ", out)
    model = infer.load(onnx_file)
    # Grayscale: three equal channels before normalization; "crop" keeps the center of a wide image.
    pixels, note = infer.decode_image(tmp_path / "gray.png", model.meta["input_size"], "crop")
    x = infer.preprocess_array(pixels, model)
    norm = model.meta["normalization"]
    pixels = x.transpose(1, 2, 0) * np.asarray(norm["std"]) + np.asarray(norm["mean"])
    assert x.shape == (3, 32, 32) and note and np.allclose(pixels[..., 0], pixels[..., 2], atol=1e-5)


# Export driver ---------------------------------------------------------------------------------------
def test_export_driver_errors(tmp_path):
    for args, expected in (
        (["--run", str(tmp_path / "missing")], f"error: run folder or checkpoint not found: {tmp_path / 'missing'}"),
        (["--run", str(tmp_path)], "not a run folder"),
        (["--model", "resnet21"], "unknown model 'resnet21'; valid choices: resnet20"),
        (["--model", "resnet20", "--framework", "jax"], "unknown framework 'jax'; valid choices: torch, keras"),
        (["--model", "resnet20", "--opset", "21"], "unsupported ONNX opset 21; valid choices: 13..18 (default 18)"),
    ):
        proc = run_module("export.onnx_export", *args, check=False)
        assert proc.returncode != 0 and expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_export_paths_and_make_dispatch(tmp_path):
    spec = get_spec("resnet20")
    run = Source(spec=spec, framework="torch", run_dir=tmp_path)
    assert default_onnx_path(run, "torch") == tmp_path / "model.onnx"
    assert default_onnx_path(run, "keras") == tmp_path / "model-keras.onnx"
    assert default_onnx_path(run, "keras", "x/y.onnx") == Path("x/y.onnx")
    assert default_onnx_path(Source(spec=spec), "keras", "out") == Path("out/resnet20-keras.onnx")
    assert default_onnx_path(Source(spec=spec), "torch") == Path("artifacts/export/resnet20-torch.onnx")
    # Inference resizes as the training images were prepared (cats_vs_dogs: shorter side + centre crop).
    resize = lambda d, m: build_metadata(Source(spec=get_spec(m), config={"dataset": d}), "torch", "x")["resize"]
    assert (resize("cats_vs_dogs", "resnet18"), resize("synthetic", "resnet18"), resize("cifar10", "resnet20")) == (
        "crop", "stretch", "stretch")
    dry = lambda *a: subprocess.run(["make", "-n", "-o", ".venv/.installed", *a], cwd=ROOT, capture_output=True,
                                    text=True, check=True).stdout
    assert "--framework" not in dry("export", "RUN=r")  # the run's own framework
    assert "--run r --framework keras" in dry("export", "RUN=r", "FRAMEWORK=keras")
    assert "--opset 17" in dry("export", "RUN=r", "OPSET=17")
    assert "--opset 17" in dry("onnx-parity", "RUN=r", "OPSET=17")
    assert "--model resnet50" in dry("export", "MODEL=resnet50", "FRAMEWORK=keras") and "--framework keras" in dry(
        "export", "MODEL=resnet50", "FRAMEWORK=keras")
    # infer: each IMAGES word quoted, so the shell leaves patterns for Python (recursive **, no-match errors)
    infer_cmd = " ".join(dry("infer", "ONNX=m.onnx", "IMAGES=a.jpg d/ x/**/*.png", "OUT=p.csv", "PROVIDER=cuda")
                         .replace("\\\n", " ").split())
    assert "m.onnx 'a.jpg' 'd/' 'x/**/*.png' --out p.csv --provider cuda" in infer_cmd, infer_cmd


def test_export_random_weights_cli_and_checkpoint_source(torch_run, tmp_path):
    out = run_module("export.onnx_export", "--model", "plain20", "--framework", "keras", "--out", tmp_path).stdout
    assert f"wrote {tmp_path / 'plain20-keras.onnx'}" in out and "batch 5 -> [5, 10]" in out
    meta = infer.load(tmp_path / "plain20-keras.onnx").meta
    assert meta["source"] == "random:seed=0" and meta["dataset"] == "none" and meta["layout"] == "NHWC"
    run, _ = torch_run
    source = resolve_source(run / "best.safetensors")  # a checkpoint path resolves to its run
    assert source.framework == "torch" and source.run_dir == run and source.spec.name == "resnet20"
