"""The digits dataset (scikit-learn's 8x8 handwritten digits, prepared to 32x32 RGB), with no framework and no network.

The prepared bytes are checked against ``load_digits`` read here independently: every pixel against the
stated scaling (computed in float64, not with the preparation's integer formula), every 4x4 block
constant, R = G = B, labels and the split recorded in the manifest, and the split stratified and seeded.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from datasets import load_prepared, read_prepared
from datasets.digits import split_indices
from shared.data import DATASETS, augmentation
from shared.export_meta import DATASET_RESIZE
from shared.recipes import recipe_for
from shared.spec import get_spec
from tests.blocked_imports import blocked_env
from tests.conftest import ROOT

N, CLASSES = 1797, 10


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from sklearn.datasets import load_digits

    data = tmp_path_factory.mktemp("data")
    return load_prepared("digits", data), load_digits()


def test_registry_entries():
    assert "digits" in DATASETS and augmentation("digits").pad == 4 and DATASET_RESIZE["digits"] == "stretch"
    recipe = recipe_for("digits", get_spec("resnet56"))
    assert (recipe.batch_size, recipe.lr, recipe.epochs, recipe.milestones) == (32, 0.025, 30, (0.5, 0.75))


def test_pixels_are_the_digits_upsampled_and_scaled(digits):
    prepared, source = digits
    m = prepared.manifest
    assert m["name"] == "digits" and m["synthetic"] is False and m["image_size"] == 32 and m["num_classes"] == CLASSES
    assert sum(m["splits"].values()) == N and m["class_names"] == [str(d) for d in range(CLASSES)]
    for key in ("upsample", "pixels", "split", "source_sha256", "version"):
        assert m[key], key
    seen = []
    for split, index in m["split_index"].items():
        x, y = prepared.arrays(split)
        index = np.asarray(index)
        assert x.dtype == np.uint8 and x.shape == (len(index), 32, 32, 3) and len(y) == m["splits"][split]
        np.testing.assert_array_equal(y, source.target[index])
        assert (x == x[..., :1]).all()  # grey: R = G = B
        blocks = x[..., 0].reshape(len(x), 8, 4, 8, 4)
        assert (blocks == blocks[:, :, :1, :, :1]).all()  # each 8x8 value fills one 4x4 block
        expected = np.floor(source.images[index] * (255 / 16) + 0.5)  # v/16 of 255, halves up
        np.testing.assert_array_equal(x[:, ::4, ::4, 0], expected)
        seen.append(index)
    everything = np.sort(np.concatenate(seen))
    np.testing.assert_array_equal(everything, np.arange(N))  # the splits partition the 1,797 images
    x, _ = prepared.arrays("train")
    assert x.min() == 0 and x.max() == 255


def test_split_is_stratified_and_seeded(digits):
    prepared, source = digits
    m = prepared.manifest
    assert m["split"]["seed"] == 0 and m["splits"] == {"train": 1078, "val": 359, "test": 360}
    overall = np.bincount(source.target, minlength=CLASSES) / N
    for split, n in m["splits"].items():
        counts = np.bincount(prepared.arrays(split)[1], minlength=CLASSES)
        assert np.abs(counts - overall * n).max() <= 1, (split, counts.tolist())
    again = split_indices(source.target, seed=0)
    other = split_indices(source.target, seed=1)
    assert all(np.array_equal(again[s], m["split_index"][s]) for s in again)
    assert not np.array_equal(other["test"], again["test"])


def test_preparing_again_gives_the_same_bytes(digits, tmp_path):
    prepared, _ = digits
    again = load_prepared("digits", tmp_path)
    assert again.manifest["checksums"] == prepared.manifest["checksums"]
    mtime = (again.path / "manifest.json").stat().st_mtime_ns
    assert (load_prepared("digits", tmp_path).path / "manifest.json").stat().st_mtime_ns == mtime  # cached


NO_NETWORK = """\
import socket

def _refuse(*args, **kwargs):
    with open({log!r}, "a") as f:
        f.write(repr(args[:2]) + "\\n")
    raise OSError("network disabled by the test")

socket.socket.connect = socket.socket.connect_ex = _refuse
socket.create_connection = socket.getaddrinfo = _refuse
"""


def test_make_data_digits_needs_no_network(tmp_path):
    """`make data DATASET=digits` with every socket connection and name lookup refused, in every process."""
    site = tmp_path / "site"
    site.mkdir()
    log = tmp_path / "network-attempts.log"
    (site / "sitecustomize.py").write_text(NO_NETWORK.format(log=str(log)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    # SYSTEM_PYTHON: this interpreter, without the venv's install step (which would need the package index)
    proc = subprocess.run(["make", "--no-print-directory", "data", "DATASET=digits", f"DATA_DIR={tmp_path / 'data'}",
                           "SYSTEM_PYTHON=1", f"PYTHON3={sys.executable}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "prepared digits in" in proc.stdout and "train 1078, val 359, test 360" in proc.stdout
    assert not log.exists(), log.read_text()
    assert read_prepared(tmp_path / "data" / "prepared" / "digits").manifest["name"] == "digits"


def test_missing_scikit_learn_is_one_line_saying_what_to_install(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "datasets.prepare", "--dataset", "digits", "--data-dir",
                           str(tmp_path)], cwd=ROOT, env=blocked_env(tmp_path, ("sklearn",)),
                          capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: the digits dataset needs scikit-learn")
    assert "pip install scikit-learn==1.9.1" in lines[0]
    assert not (tmp_path / "prepared" / "digits").exists()

