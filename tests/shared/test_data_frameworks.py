"""Both frameworks' loaders against each other and against the numpy reference in shared/data.py.

Each framework runs in its own process (tests/shared/dump_batches.py) on a CIFAR-10 fixture prepared
from the official python format, on the digits prepared from scikit-learn's wheel, and on an "augmentation
probe": images whose pixels encode their own row and column, so the crop offset and the flip of every
augmented image can be read back from it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from datasets import cifar, load_prepared
from datasets.fixtures import write_cifar10_python
from datasets.prepared import write_prepared
from shared.data import augmentation, epoch_plan, norm_constants
from shared.process import FRAMEWORKS  # torch's Loader, Keras' tf.data pipeline
from tests import preload
from tests.conftest import ROOT
from tests.data_fixtures import reference_batches

# The EpochDataset that model.fit trains on, per Keras backend (JAX and torch without tensorflow).
# EpochDataset is numpy: the same code on every Keras backend. The fast suite reads it on TensorFlow; the slow test
# below reads it on JAX and PyTorch too, in processes where tensorflow cannot be imported.
KERAS_BACKENDS = ("keras-tensorflow",)
OTHER_BACKENDS = ("keras-jax", "keras-torch")
PROBE_N, PROBE_BATCH, PROBE_EPOCHS = 1000, 200, (0, 1, 2)
# chi-square critical value, 8 degrees of freedom (9 offsets), p = 0.001
CHI2_8DOF_P001 = 26.12


def probe_images(n: int) -> np.ndarray:
    """Red = 8*row + 4, green = 8*column + 4 (never 0, unlike the padding), blue = a diagonal pattern."""
    r, c = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    img = np.stack([8 * r + 4, 8 * c + 4, 8 * ((r + c) % 32) + 4], axis=-1).astype(np.uint8)
    return np.repeat(img[None], n, axis=0)


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("frameworks")
    write_cifar10_python(tmp, 40, 50, seed=2)
    fixture = cifar.prepare(tmp, "cifar10", val_size=40, download=False)  # train 160, val 40, test 50
    digits = load_prepared("digits", tmp / "digits")  # train 1078, val 359, test 360
    probe_x = probe_images(PROBE_N)
    probe_y = np.arange(PROBE_N) % 10
    splits = {s: (probe_x, probe_y) for s in ("train", "val", "test")}
    probe = write_prepared(tmp / "probe", splits, {"name": "cifar10", "class_names": [str(i) for i in range(10)],
                                                   "synthetic": True, "source": "augmentation probe",
                                                   "version": "test"})
    jobs = {
        "val": dict(prepared=str(fixture.path), split="val", batch_size=16, train=False, seed=0, epochs=[0]),
        "test": dict(prepared=str(fixture.path), split="test", batch_size=16, train=False, seed=0, epochs=[0]),
        "train": dict(prepared=str(fixture.path), split="train", batch_size=32, train=True, seed=7, epochs=[1, 2]),
        "digits-val": dict(prepared=str(digits.path), split="val", batch_size=128, train=False, seed=0, epochs=[0]),
        "digits-train": dict(prepared=str(digits.path), split="train", batch_size=128, train=True, seed=3,
                             epochs=[0, 1]),
        "probe": dict(prepared=str(probe.path), split="train", batch_size=PROBE_BATCH, train=True, seed=0,
                      epochs=list(PROBE_EPOCHS)),
    }
    loaded = dump(FRAMEWORKS + KERAS_BACKENDS, jobs, tmp)
    return {"fixture": fixture, "digits": digits, "probe": probe, "jobs": jobs, "batches": loaded}


def dump(labels: tuple[str, ...], jobs: dict[str, dict], tmp) -> dict[tuple[str, str], dict]:
    """Every job's batches from each loader (``tests/shared/dump_batches.py``), one process per loader at once."""
    procs = {}
    for fw in labels:
        fw_jobs = [{**job, "out": str(tmp / f"{fw}-{name}.npz")} for name, job in jobs.items()]
        backend = {"KERAS_BACKEND": fw.split("-", 1)[1]} if fw.startswith("keras-") else {}
        procs[fw] = preload.popen([sys.executable, "-m", "tests.shared.dump_batches", fw, json.dumps(fw_jobs)],
                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, **backend})
    for fw, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{fw} loader failed:\n{err[-3000:]}"
    return {(fw, name): dict(np.load(tmp / f"{fw}-{name}.npz")) for fw in labels for name in jobs}


@pytest.mark.slow
def test_every_keras_backend_reads_the_same_batches(dumps, tmp_path):
    """EpochDataset on JAX and on PyTorch (tensorflow unimportable there), every job, bit for bit the torch loader's."""
    other = dump(OTHER_BACKENDS, dumps["jobs"], tmp_path)
    for (fw, name), d in other.items():
        ref = dumps["batches"][("torch", name)]
        assert d.keys() == ref.keys() and all(np.array_equal(d[k], ref[k]) for k in d), (fw, name)


def _batches(d: dict, epoch: int) -> list[tuple[np.ndarray, np.ndarray]]:
    n = sum(1 for k in d if k.startswith(f"e{epoch}_x"))
    return [(d[f"e{epoch}_x{i}"], d[f"e{epoch}_y{i}"]) for i in range(n)]


@pytest.mark.parametrize("data,name", [("fixture", "val"), ("fixture", "test"), ("fixture", "train"),
                                       ("digits", "digits-val"), ("digits", "digits-train")])
def test_frameworks_give_identical_batches(dumps, data, name):
    """Batch by batch, bit for bit: torch == keras == numpy reference (augmentation off, and on)."""
    job = dumps["jobs"][name]
    prepared = dumps[data]
    assert job["prepared"] == str(prepared.path)
    x, y = prepared.arrays(job["split"])
    for epoch in job["epochs"]:
        ref = list(reference_batches(x, y, prepared.manifest, job["batch_size"], train=job["train"],
                                     seed=job["seed"], epoch=epoch))
        torch_b = _batches(dumps["batches"][("torch", name)], epoch)
        assert len(torch_b) == len(ref) > 1
        for other in ("keras", *KERAS_BACKENDS):
            keras_b = _batches(dumps["batches"][(other, name)], epoch)
            assert len(keras_b) == len(ref), other
            for (tx, ty), (kx, ky), (rx, ry) in zip(torch_b, keras_b, ref):
                assert tx.dtype == kx.dtype == np.float32 and tx.shape == kx.shape == rx.shape, other
                assert np.array_equal(tx, kx) and np.array_equal(tx, rx), other
                assert np.array_equal(ty, ky) and np.array_equal(ty, ry), other
        if not job["train"]:  # every image once, in order, last batch partial
            mean, std = norm_constants(prepared.manifest)
            everything = np.concatenate([b[0] for b in torch_b])
            assert len(torch_b[-1][0]) == (len(x) % job["batch_size"] or job["batch_size"])
            np.testing.assert_array_equal(everything, ((x / np.float32(255)).astype(np.float32) - mean) / std)
        else:
            assert all(len(b[0]) == job["batch_size"] for b in torch_b) and len(torch_b) == len(x) // job["batch_size"]


def decode(x: np.ndarray, manifest: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dy, dx, flip) of each augmented probe image, read from its pixels."""
    mean, std = norm_constants(manifest)
    u8 = np.round((x * std + mean) * 255).astype(np.int64)
    pad, size = 4, 32
    dys, dxs, flips = [], [], []
    for img in u8:
        real = img[..., 0] > 0
        i = int(np.argmax(real.sum(axis=1)))  # the row with the most image pixels
        js = np.flatnonzero(real[i])
        r, c0, c1 = (img[i, js[0], 0] - 4) // 8, (img[i, js[0], 1] - 4) // 8, (img[i, js[-1], 1] - 4) // 8
        flip = c1 < c0
        dys.append(r - i + pad)
        dxs.append(c0 + js[0] - (size - 1) + pad if flip else c0 - js[0] + pad)
        flips.append(flip)
    return np.array(dys), np.array(dxs), np.array(flips)


def test_augmentation_statistics_agree(dumps):
    """Crop offsets uniform over 0..8 per axis (chi-square) and flip rate 0.5, the same in both frameworks,
    read back from the augmented pixels; and each image's crop and flip are the ones the epoch plan drew."""
    probe = dumps["probe"]
    pad = augmentation("cifar10").pad
    stats = {}
    for fw in FRAMEWORKS:
        d = dumps["batches"][(fw, "probe")]
        decoded = [decode(np.concatenate([b[0] for b in _batches(d, e)]), probe.manifest) for e in PROBE_EPOCHS]
        dy, dx, flip = (np.concatenate(parts) for parts in zip(*decoded))
        plans = [epoch_plan(PROBE_N, PROBE_BATCH, train=True, pad=pad, seed=0, epoch=e) for e in PROBE_EPOCHS]
        np.testing.assert_array_equal(dy, np.concatenate([p.dy for p in plans]))
        np.testing.assert_array_equal(dx, np.concatenate([p.dx for p in plans]))
        np.testing.assert_array_equal(flip, np.concatenate([p.flip for p in plans]))
        n = len(dy)
        assert n == PROBE_N * len(PROBE_EPOCHS)
        for offsets in (dy, dx):
            hist = np.bincount(offsets, minlength=2 * pad + 1)
            assert len(hist) == 9
            chi2 = ((hist - n / 9) ** 2 / (n / 9)).sum()
            assert chi2 < CHI2_8DOF_P001, (fw, hist.tolist(), chi2)
        assert abs(flip.mean() - 0.5) < 3 * np.sqrt(0.25 / n), flip.mean()
        stats[fw] = (np.bincount(dy, minlength=9), np.bincount(dx, minlength=9), flip.mean())
    for a, b in zip(stats["torch"], stats["keras"]):
        np.testing.assert_array_equal(a, b)
