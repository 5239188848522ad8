"""Data preparation without any framework: CIFAR-10 fixtures in the real python format, the synthetic
set, manifests and checksums, and the error paths (unknown name, offline, corrupt archive, mismatch)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import re
import sys

import numpy as np
import pytest

from datasets import DataError, cifar, load_prepared, prepare, prepared_dir, read_prepared, synthetic
from datasets.fixtures import (
    CIFAR100_COARSE_NAMES,
    CIFAR100_FINE_NAMES,
    CIFAR100_FINE_TO_COARSE,
    LABEL_NAMES,
    write_cifar10_python,
    write_cifar100_python,
)
from shared.data import DATASETS, augmentation, epoch_plan, with_labels
from shared.errors import UserError
from tests.data_fixtures import reference_batches

PER_BATCH, TEST = 20, 30  # 100 training images (90 train + 10 val), 30 test


def _prepare_fixture(tmp_path, archive: bool):
    arrays = write_cifar10_python(tmp_path, PER_BATCH, TEST, seed=1, archive=archive)
    return cifar.prepare(tmp_path, val_size=10, download=False), arrays


@pytest.fixture(scope="module")
def cifar_folder(tmp_path_factory):
    return _prepare_fixture(tmp_path_factory.mktemp("cifar_dir"), archive=False)


def test_cifar10_pixels_follow_the_official_row_layout(cifar_folder):
    """Prepared pixel [r, c, ch] is raw row value [ch*1024 + r*32 + c] (the format's definition), for every image."""
    prepared, _ = cifar_folder
    src = prepared.path.parent.parent / cifar.CIFAR10.folder
    raw = [pickle.loads((src / b).read_bytes(), encoding="bytes") for b in cifar.CIFAR10.train]
    data = np.concatenate([np.asarray(b[b"data"]) for b in raw])
    labels = np.concatenate([b[b"labels"] for b in raw])
    r, c, ch = np.meshgrid(np.arange(32), np.arange(32), np.arange(3), indexing="ij")
    expected = data[:, ch * 1024 + r * 32 + c]  # (100, 32, 32, 3)
    x_tr, y_tr = prepared.arrays("train")
    x_va, y_va = prepared.arrays("val")
    # train and val partition the 100 training images, each split in the original order
    joined = {img.tobytes(): lab for img, lab in zip(np.concatenate([x_tr, x_va]), np.concatenate([y_tr, y_va]))}
    assert len(x_tr) == 90 and len(x_va) == 10 and len(joined) == 100
    assert all(joined[img.tobytes()] == lab for img, lab in zip(expected, labels))
    order = [next(i for i in range(100) if np.array_equal(expected[i], img)) for img in x_va]
    assert order == sorted(order)
    test = pickle.loads((src / "test_batch").read_bytes(), encoding="bytes")
    x_te, y_te = prepared.arrays("test")
    np.testing.assert_array_equal(x_te, np.asarray(test[b"data"])[:, ch * 1024 + r * 32 + c])
    np.testing.assert_array_equal(y_te, test[b"labels"])
    assert x_te.dtype == np.uint8 and y_te.dtype == np.int64


def test_cifar10_manifest(cifar_folder):
    prepared, _ = cifar_folder
    m = prepared.manifest
    assert m["name"] == "cifar10" and m["class_names"] == LABEL_NAMES and m["num_classes"] == 10
    assert m["splits"] == {"train": 90, "val": 10, "test": TEST} and m["image_size"] == 32
    assert m["synthetic"] is False and m["val_size"] == 10
    x, _ = prepared.arrays("train")
    np.testing.assert_allclose(m["mean"], x.reshape(-1, 3).mean(axis=0) / 255, rtol=1e-9)
    np.testing.assert_allclose(m["std"], (x.reshape(-1, 3) / 255).std(axis=0), rtol=1e-7)
    for name, digest in m["checksums"].items():
        assert hashlib.sha256((prepared.path / name).read_bytes()).hexdigest() == digest


def test_cifar10_archive_gives_the_same_arrays(cifar_folder, tmp_path):
    folder, _ = cifar_folder
    archived, _ = _prepare_fixture(tmp_path, archive=True)
    assert not (tmp_path / cifar.CIFAR10.folder).exists()  # read from the .tar.gz, never extracted
    assert archived.manifest["checksums"] == folder.manifest["checksums"]
    assert archived.manifest["official_archive"] is False and len(archived.manifest["source_md5"]) == 32


def test_cifar10_cli_and_val_fraction(tmp_path, run):
    write_cifar10_python(tmp_path, PER_BATCH, TEST, seed=1)
    proc = run("datasets.prepare", "--dataset", "cifar10", "--data-dir", tmp_path, "--val-size", "0.2", "--no-download")
    assert "prepared cifar10" in proc.stdout and "train 80, val 20, test 30" in proc.stdout
    check = run("datasets.prepare", "--dataset", "cifar10", "--data-dir", tmp_path, "--check")
    assert "train 80, val 20, test 30" in check.stdout
    # --check reads every array back against its checksum: one flipped byte makes it fail, naming the file
    val_x = tmp_path / "prepared" / "cifar10" / "val_x.npy"
    data = bytearray(val_x.read_bytes())
    data[-1] ^= 0xFF
    val_x.write_bytes(bytes(data))
    bad = run("datasets.prepare", "--dataset", "cifar10", "--data-dir", tmp_path, "--check", check=False)
    assert bad.returncode == 2 and "checksum mismatch" in bad.stderr and "val_x.npy" in bad.stderr


def test_truncated_archive_is_named_and_leaves_nothing(tmp_path, run):
    write_cifar10_python(tmp_path, PER_BATCH, TEST, archive=True)
    path = tmp_path / cifar.CIFAR10.archive
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz is truncated or corrupt"):
        cifar.prepare(tmp_path, val_size=10, download=False)
    assert not (tmp_path / "prepared").exists() or not any((tmp_path / "prepared").iterdir())
    proc = run("datasets.prepare", "--dataset", "cifar10", "--data-dir", tmp_path, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and str(path.resolve()) in proc.stderr


def test_corrupt_batch_file_is_named(tmp_path):
    write_cifar10_python(tmp_path, PER_BATCH, TEST)
    (tmp_path / cifar.CIFAR10.folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=r"data_batch_3 is corrupt"):
        cifar.prepare(tmp_path, val_size=10, download=False)


def test_missing_offline_says_where_and_how(tmp_path):
    with pytest.raises(DataError) as e:
        cifar.prepare(tmp_path, download=False)
    msg = str(e.value)
    assert str((tmp_path / cifar.CIFAR10.folder).resolve()) in msg
    assert str((tmp_path / cifar.CIFAR10.archive).resolve()) in msg
    assert cifar.CIFAR10.url in msg and cifar.CIFAR10.md5 in msg and "make data DATASET=cifar10" in msg
    offline = dataclasses.replace(cifar.CIFAR10, url="http://127.0.0.1:9/cifar-10-python.tar.gz")  # nothing listens
    with pytest.raises(DataError, match="could not download") as e:
        cifar.prepare(tmp_path, offline)
    assert str((tmp_path / cifar.CIFAR10.archive).resolve()) in str(e.value)
    assert not list(tmp_path.iterdir())  # no .part file left behind


def test_checksum_mismatch_refuses_to_load(tmp_path, run):
    prepare("synthetic", tmp_path)
    f = prepared_dir("synthetic", tmp_path) / "val_x.npy"
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"checksum mismatch for .*val_x\.npy.*refusing to load"):
        read_prepared(prepared_dir("synthetic", tmp_path))
    with pytest.raises(DataError, match="checksum mismatch"):
        load_prepared("synthetic", tmp_path)
    proc = run("datasets.prepare", "--dataset", "synthetic", "--data-dir", tmp_path, "--check", check=False)
    assert proc.returncode != 0 and "checksum mismatch" in proc.stderr and "Traceback" not in proc.stderr


def test_a_failed_preparation_leaves_no_folder(tmp_path, monkeypatch):
    import datasets.prepared as prep

    def boom(*_a, **_k):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(prep, "channel_stats", boom)
    with pytest.raises(RuntimeError, match="interrupted"):
        prepare("synthetic", tmp_path)
    assert list((tmp_path / "prepared").iterdir()) == []  # neither the folder nor its temporary twin


def test_unknown_dataset_lists_choices(tmp_path, run):
    choices = "valid choices: cifar10, cifar100, cifar100_coarse, cats_vs_dogs, digits, synthetic, synthetic_cifar"
    with pytest.raises(ValueError, match=f"unknown dataset 'mnist'; {choices}"):
        load_prepared("mnist", tmp_path)
    proc = run("datasets.prepare", "--dataset", "mnist", "--data-dir", tmp_path, check=False)
    assert proc.returncode == 2 and choices in proc.stderr
    assert set(DATASETS) == {"cifar10", "cifar100", "cifar100_coarse", "cats_vs_dogs", "digits", "synthetic",
                             "synthetic_cifar"}


def test_synthetic_is_deterministic_cached_and_named(tmp_path):
    p = load_prepared("synthetic", tmp_path)
    m = p.manifest
    assert m["name"] == "synthetic" and m["synthetic"] is True and m["splits"] == synthetic.SIZES
    assert m["num_classes"] == 10 and m["image_size"] == 32
    mtime = (p.path / "manifest.json").stat().st_mtime_ns
    again = load_prepared("synthetic", tmp_path)  # cached: not regenerated
    assert (again.path / "manifest.json").stat().st_mtime_ns == mtime
    x, y = p.arrays("train")
    x2, y2 = synthetic.generate(synthetic.SIZES["train"], seed=0)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert np.bincount(y, minlength=10).tolist() == [200] * 10
    assert not np.array_equal(p.arrays("val")[0][:10], x[:10])


def test_synthetic_cifar_has_prepared_cifar10s_splits_and_shape_and_says_synthetic(tmp_path, run):
    proc = run("datasets.prepare", "--dataset", "synthetic_cifar", "--data-dir", tmp_path)
    assert "prepared synthetic_cifar (SYNTHETIC)" in proc.stdout and "train 45000, val 5000, test 10000" in proc.stdout
    p = read_prepared(prepared_dir("synthetic_cifar", tmp_path))  # every checksum verified
    m = p.manifest
    assert m["name"] == "synthetic_cifar" and m["synthetic"] is True and m["version"] == synthetic.GENERATOR_VERSION
    assert m["splits"] == {"train": 45_000, "val": 5_000, "test": 10_000}  # prepared CIFAR-10's (50k less 5k val)
    x, y = p.arrays("test")
    assert x.shape == (10_000, 32, 32, 3) and x.dtype == np.uint8 and np.bincount(y).tolist() == [1000] * 10
    x2, y2 = synthetic.generate(10_000, seed=2)  # the test split is stream 2 of seed 0
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)


def test_synthetic_pixels_do_not_depend_on_the_block_size(monkeypatch):
    whole = synthetic.generate(700, seed=3)
    monkeypatch.setattr(synthetic, "CHUNK", 64)
    blocks = synthetic.generate(700, seed=3)
    np.testing.assert_array_equal(whole[0], blocks[0])
    np.testing.assert_array_equal(whole[1], blocks[1])


def test_synthetic_is_learnable(tmp_path):
    """A nearest-centroid classifier on 4 hand features (chroma, stripe orientation) must reach 90%."""
    p = load_prepared("synthetic", tmp_path)

    def features(x):
        f = x.astype(np.float64) / 255
        chroma = (f - f.mean(axis=3, keepdims=True)).mean(axis=(1, 2))  # grey background has none
        rows = np.abs(np.diff(f.mean(axis=(2, 3)), axis=1)).mean(axis=1)  # horizontal stripes vary along rows
        cols = np.abs(np.diff(f.mean(axis=(1, 3)), axis=1)).mean(axis=1)
        return np.column_stack([chroma * 4, np.log(rows / cols)])

    x, y = p.arrays("train")
    fx = features(x)
    centroids = np.stack([fx[y == k].mean(axis=0) for k in range(10)])
    xt, yt = p.arrays("test")
    pred = np.argmin(((features(xt)[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (pred == yt).mean() >= 0.9


def test_epoch_plan_contract():
    plan = epoch_plan(1000, 128, train=True, pad=4, seed=3, epoch=2)
    assert len(plan) == 7 and plan.index.shape == (896,) and len(set(plan.index.tolist())) == 896
    again = epoch_plan(1000, 128, train=True, pad=4, seed=3, epoch=2)
    assert np.array_equal(plan.index, again.index) and np.array_equal(plan.dx, again.dx)
    other = epoch_plan(1000, 128, train=True, pad=4, seed=3, epoch=3)
    assert not np.array_equal(plan.index, other.index)
    ev = epoch_plan(1000, 128, train=False, pad=4)
    assert len(ev) == 8 and np.array_equal(ev.index, np.arange(1000)) and not ev.flip.any()
    assert set(np.unique(plan.dx)) == set(range(9)) and augmentation("cats_vs_dogs").offsets == 33
    with pytest.raises(ValueError, match="batch_size 128 is larger than the 100 images"):
        epoch_plan(100, 128, train=True, pad=4)


def test_reference_augmentation_is_a_shifted_window():
    """The numpy reference against a per-image slice of np.pad: shift by (dy-4, dx-4), then flip."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(64, 32, 32, 3), dtype=np.uint8)
    manifest = {"name": "cifar10", "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    (xb, _), = reference_batches(x, np.zeros(64), manifest, 64, train=True, seed=5)
    plan = epoch_plan(64, 64, train=True, pad=4, seed=5)
    for k in range(64):
        window = np.pad(x[plan.index[k]], ((4, 4), (4, 4), (0, 0)))[plan.dy[k]: plan.dy[k] + 32,
                                                                    plan.dx[k]: plan.dx[k] + 32]
        if plan.flip[k]:
            window = window[:, ::-1]
        np.testing.assert_allclose(xb[k], window / np.float32(255), rtol=0, atol=0)


def test_no_framework_imported():
    assert "torch" not in sys.modules and "tensorflow" not in sys.modules


def test_manifest_json_is_readable(cifar_folder):
    prepared, _ = cifar_folder
    m = json.loads((prepared.path / "manifest.json").read_text())
    assert set(m) >= {"name", "class_names", "num_classes", "image_size", "mean", "std", "splits", "synthetic",
                      "source", "version", "checksums"}


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server over ``tmp_path/served`` (stands in for the CIFAR-10 site)."""
    import functools
    import http.server
    import threading

    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_checks_md5_then_prepares(tmp_path, http_server):
    root, url = http_server
    write_cifar10_python(root, PER_BATCH, TEST, seed=3, archive=True)
    md5 = hashlib.md5((root / cifar.CIFAR10.archive).read_bytes()).hexdigest()
    served = dataclasses.replace(cifar.CIFAR10, url=f"{url}/{cifar.CIFAR10.archive}", md5="0" * 32)
    data = tmp_path / "data"
    with pytest.raises(DataError, match="download is corrupt"):
        cifar.prepare(data, served, val_size=10)
    assert list(data.iterdir()) == []  # the .part file is gone, nothing looks downloaded
    prepared = cifar.prepare(data, dataclasses.replace(served, md5=md5), val_size=10)
    assert (data / cifar.CIFAR10.archive).is_file() and prepared.manifest["official_archive"] is True
    assert prepared.manifest["splits"] == {"train": 90, "val": 10, "test": TEST}


def test_make_data_passes_its_variables():
    import subprocess

    from tests.conftest import ROOT

    out = subprocess.run(["make", "-n", "--no-print-directory", "data",
                          "DATASET=synthetic", "DATA_DIR=/x", "VAL_SIZE=0.2", "NO_DOWNLOAD=1"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    line = " ".join(out.replace("\\\n", " ").split()).split("-m datasets.prepare", 1)[1]
    assert line.split() == ["--dataset", "synthetic", "--data-dir", "/x", "--val-size", "0.2", "--no-download"]


def test_cats_vs_dogs_prepares_in_its_own_process(tmp_path):
    """From a framework-free process, cats_vs_dogs runs TFDS in a child; its offline error comes back whole."""
    with pytest.raises(DataError) as e:
        prepare("cats_vs_dogs", tmp_path, download=False)
    assert "is not there and downloading is off" in str(e.value)
    assert f"{(tmp_path / 'tfds').resolve()}/cats_vs_dogs/4.0.1/" in str(e.value)
    assert "tensorflow" not in sys.modules and "torch" not in sys.modules


# CIFAR-100 ------------------------------------------------------------------------------------------
C100_TRAIN, C100_TEST = 200, 100  # every fine class twice in train, once in test


@pytest.fixture(scope="module")
def cifar100(tmp_path_factory):
    """The CIFAR-100 fixture (folder) prepared twice, fine and coarse, as the real code path does it."""
    root = tmp_path_factory.mktemp("cifar100")
    arrays = write_cifar100_python(root, C100_TRAIN, C100_TEST, seed=4)
    fine = prepare("cifar100", root, val_size=20, download=False)
    coarse = cifar.prepare(root, "cifar100_coarse", val_size=20, download=False)
    raw = {name: pickle.loads((root / cifar.CIFAR100.folder / name).read_bytes(), encoding="bytes")
           for name in cifar.CIFAR100.files}
    return fine, coarse, raw, arrays


def test_cifar100_labels_round_trip_from_the_pickles(cifar100):
    """Every prepared label is the pickle's label of the same image: fine in cifar100, coarse in cifar100_coarse."""
    fine, coarse, raw, _ = cifar100
    r, c, ch = np.meshgrid(np.arange(32), np.arange(32), np.arange(3), indexing="ij")
    train_images = np.asarray(raw["train"][b"data"])[:, ch * 1024 + r * 32 + c]
    for prepared, key in ((fine, b"fine_labels"), (coarse, b"coarse_labels")):
        by_image = {img.tobytes(): lab for img, lab in zip(train_images, raw["train"][key])}
        x = np.concatenate([prepared.arrays("train")[0], prepared.arrays("val")[0]])
        y = np.concatenate([prepared.arrays("train")[1], prepared.arrays("val")[1]])
        assert len(by_image) == C100_TRAIN == len(x)
        assert [by_image[img.tobytes()] for img in x] == y.tolist()
        x_te, y_te = prepared.arrays("test")
        np.testing.assert_array_equal(x_te, np.asarray(raw["test"][b"data"])[:, ch * 1024 + r * 32 + c])
        np.testing.assert_array_equal(y_te, raw["test"][key])
    # one seeded split for both label sets: the same images in the same order
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(fine.arrays(split)[0], coarse.arrays(split)[0])


def test_cifar100_manifests_classes_and_fine_to_coarse(cifar100):
    fine, coarse, raw, _ = cifar100
    meta = raw["meta"]
    mf, mc = fine.manifest, coarse.manifest
    assert (mf["name"], mf["num_classes"], mf["labels"]) == ("cifar100", 100, "fine_labels")
    assert (mc["name"], mc["num_classes"], mc["labels"]) == ("cifar100_coarse", 20, "coarse_labels")
    assert mf["class_names"] == [n.decode() for n in meta[b"fine_label_names"]] == CIFAR100_FINE_NAMES
    assert mc["class_names"] == [n.decode() for n in meta[b"coarse_label_names"]] == CIFAR100_COARSE_NAMES
    assert mf["splits"] == mc["splits"] == {"train": 180, "val": 20, "test": C100_TEST}
    assert mf["version"] == "cifar-100-python (Krizhevsky 2009)" and mf["synthetic"] is False
    # The fine -> coarse table, read back from the pickles' (fine_labels, coarse_labels) pairs
    pairs = {(f, k) for name in ("train", "test")
             for f, k in zip(raw[name][b"fine_labels"], raw[name][b"coarse_labels"])}
    assert len(pairs) == 100 and sorted(pairs) == sorted(enumerate(mf["fine_to_coarse"]))
    assert mf["fine_to_coarse"] == mc["fine_to_coarse"] == CIFAR100_FINE_TO_COARSE
    assert np.bincount(mf["fine_to_coarse"]).tolist() == [5] * 20  # five fine classes per superclass
    assert CIFAR100_COARSE_NAMES[mf["fine_to_coarse"][0]] == "fruit_and_vegetables"
    table = np.asarray(mf["fine_to_coarse"])
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(table[fine.arrays(split)[1]], coarse.arrays(split)[1])


def test_cifar100_archive_gives_the_same_arrays(cifar100, tmp_path):
    fine, coarse, _, _ = cifar100
    write_cifar100_python(tmp_path, C100_TRAIN, C100_TEST, seed=4, archive=True)
    for folder in (fine, coarse):
        archived = cifar.prepare(tmp_path, folder.name, val_size=20, download=False)
        assert archived.manifest["checksums"] == folder.manifest["checksums"]
        assert archived.manifest["official_archive"] is False
    assert not (tmp_path / cifar.CIFAR100.folder).exists()  # read from the .tar.gz, never extracted


def test_cifar100_cli_labels(tmp_path, run):
    write_cifar100_python(tmp_path, C100_TRAIN, C100_TEST)
    base = ("datasets.prepare", "--dataset", "cifar100", "--data-dir", tmp_path)
    proc = run(*base, "--labels", "coarse", "--val-size", "0.1", "--no-download")
    assert "prepared cifar100_coarse in" in proc.stdout and "train 180, val 20, test 100" in proc.stdout
    assert "; 20 classes;" in proc.stdout
    assert "; 100 classes;" in run(*base, "--val-size", "20", "--no-download").stdout  # fine by default
    assert run(*base, "--labels", "coarse", "--check").returncode == 0
    assert run("datasets.prepare", "--dataset", "cifar100_coarse", "--data-dir", tmp_path, "--check").returncode == 0
    bad = run(*base, "--labels", "medium", check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].endswith("unknown labels 'medium' for dataset cifar100; "
                                                        "valid choices: fine, coarse")
    bad = run("datasets.prepare", "--dataset", "cifar10", "--labels", "coarse", "--data-dir", tmp_path, check=False)
    assert "unknown labels 'coarse' for dataset cifar10; valid choices: fine" in bad.stderr


def test_with_labels():
    assert with_labels("cifar100", None) == "cifar100" and with_labels("cifar100", "fine") == "cifar100"
    assert with_labels("cifar100", "coarse") == with_labels("cifar100_coarse", None) == "cifar100_coarse"
    assert with_labels("cifar100_coarse", "fine") == "cifar100" and with_labels("cifar10", "fine") == "cifar10"
    with pytest.raises(ValueError, match="unknown dataset 'cifar20'; valid choices: cifar10, cifar100"):
        with_labels("cifar20", "coarse")
    assert set(cifar.SOURCES) == {"cifar10", "cifar100", "cifar100_coarse"} <= set(DATASETS)


def _one_error_line(run, dataset, data_dir) -> str:
    proc = run("datasets.prepare", "--dataset", dataset, "--data-dir", data_dir, "--no-download", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    return lines[0]


def test_cifar10_archive_given_as_cifar100_is_named(tmp_path, run):
    write_cifar10_python(tmp_path, PER_BATCH, TEST, archive=True)
    wrong = tmp_path / cifar.CIFAR100.archive
    (tmp_path / cifar.CIFAR10.archive).rename(wrong)
    line = _one_error_line(run, "cifar100", tmp_path)
    assert line == (f"error: {wrong.resolve()} holds cifar-10-batches-py/: that is CIFAR-10, not CIFAR-100; put the "
                    f"CIFAR-100 archive cifar-100-python.tar.gz there ({cifar.CIFAR100.url}, md5 "
                    f"{cifar.CIFAR100.md5}), or prepare it as `make data DATASET=cifar10`")


def test_cifar100_folder_given_as_cifar10_is_named(tmp_path, run):
    write_cifar100_python(tmp_path, C100_TRAIN, C100_TEST)
    wrong = tmp_path / cifar.CIFAR10.folder
    (tmp_path / cifar.CIFAR100.folder).rename(wrong)
    line = _one_error_line(run, "cifar10", tmp_path)
    assert line.startswith(f"error: {wrong.resolve()} holds train, test, meta: that is CIFAR-100, not CIFAR-10; ")
    assert "put the CIFAR-10 folder cifar-10-batches-py/ there" in line and "DATASET=cifar100`" in line


def test_cifar100_archive_given_as_cifar10_and_cifar10_batches_given_as_cifar100(tmp_path):
    write_cifar100_python(tmp_path / "a", C100_TRAIN, C100_TEST, archive=True)
    wrong = tmp_path / "a" / cifar.CIFAR10.archive
    (tmp_path / "a" / cifar.CIFAR100.archive).rename(wrong)
    with pytest.raises(DataError, match=rf"^{re.escape(str(wrong.resolve()))} holds cifar-100-python/: that is "
                                        "CIFAR-100, not CIFAR-10"):
        cifar.prepare(tmp_path / "a", "cifar10", download=False)
    # CIFAR-10 batches under CIFAR-100's file names: the pickle's keys say what it is
    write_cifar10_python(tmp_path / "b", PER_BATCH, TEST)
    src, dst = tmp_path / "b" / cifar.CIFAR10.folder, tmp_path / "b" / cifar.CIFAR100.folder
    dst.mkdir()
    for a, b in (("data_batch_1", "train"), ("test_batch", "test"), ("batches.meta", "meta")):
        (dst / b).write_bytes((src / a).read_bytes())
    with pytest.raises(DataError, match=r"cifar-100-python/train has no 'fine_labels' entry \(it has 'labels': "
                                        r"a CIFAR-10 batch\): not a CIFAR-100 python batch"):
        cifar.prepare(tmp_path / "b", "cifar100", download=False)


def test_cifar100_offline_error_is_cifar10s_with_this_archive(tmp_path, run):
    """The same one-line error as CIFAR-10, with CIFAR-100's folder, archive, URL and md5 in it."""
    c10, c100 = _one_error_line(run, "cifar10", tmp_path), _one_error_line(run, "cifar100", tmp_path)
    for field in ("url", "md5", "archive", "folder", "title"):
        assert getattr(cifar.CIFAR100, field) in c100
        c100 = c100.replace(getattr(cifar.CIFAR100, field), getattr(cifar.CIFAR10, field))
    assert c100.replace("DATASET=cifar100 ", "DATASET=cifar10 ") == c10
    assert "DATASET=cifar100_coarse" in _one_error_line(run, "cifar100_coarse", tmp_path)


def test_make_data_passes_labels():
    import subprocess

    from tests.conftest import ROOT

    out = subprocess.run(["make", "-n", "--no-print-directory", "data", "DATASET=cifar100", "LABELS=coarse",
                          "DATA_DIR=/x"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    line = " ".join(out.replace("\\\n", " ").split()).split("-m datasets.prepare", 1)[1]
    assert line.split() == ["--dataset", "cifar100", "--labels", "coarse", "--data-dir", "/x"]


def test_loader_cli_dumps_the_first_batches_and_names_a_bad_folder(tmp_path, capsys):
    """The flow of ``python -m <package>.data``, driven here by the numpy reference pipeline."""
    from datasets.loading import loader_main
    from datasets.prepared import write_prepared
    from shared.data import loader_arg_parser

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), np.arange(40) % 10
    prepared = write_prepared(tmp_path / "p", {s: (x, y) for s in ("train", "val", "test")},
                              {"name": "cifar10", "class_names": [str(i) for i in range(10)], "synthetic": True,
                               "source": "test", "version": "test"})
    parser = loader_arg_parser("test", "test")
    args = parser.parse_args(["--prepared", str(prepared.path), "--train", "--batches", "2", "--batch-size", "8",
                              "--seed", "3", "--dump", str(tmp_path / "d.npz")])

    def batches(p):
        return 5, reference_batches(*p.arrays("train"), p.manifest, 8, train=True, seed=3)

    assert loader_main(args, bench=dict, batches=batches) == 0
    assert json.loads(capsys.readouterr().out) == {"batches": 2, "len": 5}
    dumped = np.load(tmp_path / "d.npz")
    assert sorted(dumped) == ["x0", "x1", "y0", "y1"]
    for i, (xb, yb) in zip(range(2), reference_batches(x, y, prepared.manifest, 8, train=True, seed=3)):
        np.testing.assert_array_equal(dumped[f"x{i}"], xb)
        np.testing.assert_array_equal(dumped[f"y{i}"], yb)
    with pytest.raises(UserError, match=f"{tmp_path / 'nowhere'}"):
        loader_main(parser.parse_args(["--prepared", str(tmp_path / "nowhere")]), bench=dict, batches=batches)
