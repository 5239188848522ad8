"""``make ... SYSTEM_PYTHON=1`` on a machine like a GPU container: its own Python with torch and
onnxruntime but no tensorflow, keras, torchinfo or onnxscript (blocked here), and no venv touched."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest

from shared import runs
from tests.blocked_imports import blocked_python
from tests.conftest import ROOT


def make(env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), *args], capture_output=True, text=True,
                          timeout=900, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"make {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}"
                             f"\n--- stderr\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def container(tmp_path_factory) -> tuple[dict, list[str]]:
    """(environment with the blocked python3 first on PATH, make variables that keep the venv out of reach)."""
    tmp = tmp_path_factory.mktemp("container")
    env = blocked_python(tmp)
    return env, ["SYSTEM_PYTHON=1", f"VENV={tmp / 'no-venv'}"]


def test_blocked_python_really_lacks_the_packages(container):
    env, _ = container
    code = ("import importlib.util as u, sys; import torch, onnxruntime; "
            "print([n for n in ('tensorflow', 'keras', 'torchinfo', 'onnxscript') if u.find_spec(n)])")
    proc = subprocess.run(["python3", "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr[-2000:]
    proc = subprocess.run(["python3", "-c", "import tensorflow"], capture_output=True, text=True, env=env, timeout=60)
    assert "ModuleNotFoundError" in proc.stderr


def test_train_export_infer_without_tensorflow_keras_or_the_venv(container, tmp_path):
    from datasets import load_prepared

    env, system = container
    data = tmp_path / "data"
    load_prepared("synthetic", data)
    run_dir = tmp_path / "run"
    make(env, "train-torch", *system, "DATASET=synthetic", f"DATA_DIR={data}", "MODEL=resnet8", "EPOCHS=1",
         "BATCH_SIZE=100", "THREADS=1", "DEVICE=cpu", f"OUT={run_dir}")
    assert runs.read_run(run_dir)["finished"]

    proc = make(env, "export", *system, f"RUN={run_dir}")
    assert "note: onnxscript is not installed" in proc.stderr  # the TorchScript exporter took over
    meta = {p.key: p.value for p in onnx.load(str(run_dir / "model.onnx")).metadata_props}
    assert "torchscript" in meta["exporter"] and meta["framework"] == "torch"

    from PIL import Image

    image = tmp_path / "cat.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(image)
    proc = make(env, "infer", *system, f"ONNX={run_dir / 'model.onnx'}", f"IMAGES={image}", "TOPK=2")
    assert "cat.png" in proc.stdout
    assert not Path(system[1].removeprefix("VENV=")).exists()  # no venv was built or used


@pytest.mark.parametrize("target,extra,missing", [
    ("train-keras", [], "keras, tensorflow"),
    ("summary", ["FRAMEWORK=torch"], "torchinfo"),
    ("bench", ["BENCH_VARIANTS=torch,keras"], "keras, tensorflow"),
])
def test_a_missing_package_is_one_line_naming_it(container, target, extra, missing):
    env, system = container
    proc = make(env, target, *system, *extra, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and len(errors) == 1, proc.stderr
    assert f"needs the package(s) {missing}," in errors[0] and "Traceback" not in proc.stderr


def test_make_without_system_python_still_uses_the_venv(container):
    env, system = container
    plain = subprocess.run(["make", "-n", "-C", str(ROOT), "train-torch", "NPROC=2"], capture_output=True,
                           text=True, timeout=60)
    assert ".venv/bin/python -m pytorch_impl.train" in plain.stdout and "--nproc 2" in plain.stdout
    system_py = make(env, "-n", "train-torch", "NPROC=2", *system)
    assert "python3 -m pytorch_impl.train" in system_py.stdout and ".venv" not in system_py.stdout
