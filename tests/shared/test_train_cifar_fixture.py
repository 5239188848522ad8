"""Both training CLIs on a CIFAR-10 fixture in the official python format (prepared by the real code path).

The fixture's images and labels are random, so this checks the plumbing and the cross-framework semantics,
not learning (learning is checked on the synthetic set): the run folders describe CIFAR-10 correctly, and
from one initial weight file the two frameworks see the same augmented batches (same pad/crop/flip plan),
so their first training losses agree and the run length and lr schedule are the recipe's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from shared import runs
from tests.conftest import run_module
from tests.shared.test_train_parity import INIT, _python


@pytest.fixture(scope="module")
def cifar_runs(tmp_path_factory) -> dict[str, Path]:
    from datasets.cifar import prepare
    from datasets.fixtures import LABEL_NAMES, write_cifar10_python

    tmp = tmp_path_factory.mktemp("cifar")
    write_cifar10_python(tmp / "data", images_per_batch=40, test_images=40)
    prepared = prepare(tmp / "data", val_size=40, download=False)
    assert prepared.manifest["splits"] == {"train": 160, "val": 40, "test": 40}
    assert prepared.manifest["class_names"] == LABEL_NAMES
    init = tmp / "init.safetensors"
    _python(INIT, "resnet8", str(init))
    args = ["--dataset", "cifar10", "--data-dir", str(tmp / "data"), "--model", "resnet8", "--batch-size", "32",
            "--epochs", "2", "--init", str(init), "--trace-steps", "10", "--threads", "1", "--no-progress",
            "--device", "cpu"]
    out = {}
    for fw, module in (("torch", "pytorch_impl.train"), ("keras", "keras_impl.train")):
        out[fw] = tmp / fw
        run_module(module, *args, "--out", str(out[fw]))
    return out


def test_run_folders_describe_cifar10(cifar_runs):
    from datasets.fixtures import LABEL_NAMES

    for fw, path in cifar_runs.items():
        run = runs.read_run(path)
        c = run["config"]
        assert (c["framework"], c["dataset"], c["synthetic"], c["model"]) == (fw, "cifar10", False, "resnet8")
        assert c["class_names"] == LABEL_NAMES and c["input_size"] == 32 and c["spec"]["num_classes"] == 10
        assert c["augmentation"] == {"pad": 4, "crop": 32, "hflip": True}
        assert c["recipe"]["recipe"] == "cifar-paper" and c["recipe"]["iters_per_epoch"] == 5
        assert c["recipe"]["milestones"] == [5, 8]  # 50% and 75% of 2 epochs x 5 iterations
        assert len(run["metrics"]) == 2 and run["finished"]
        assert all(math.isfinite(r[k]) for r in run["metrics"] for k in runs.METRICS_COLUMNS)
        # accuracy over the whole 40-image test split: a whole number of images, not a mean of batch means
        correct = run["results"]["test_acc"] * 40
        assert correct == pytest.approx(round(correct), abs=1e-6)


def test_same_augmented_batches_in_both_frameworks(cifar_runs):
    t = json.loads((cifar_runs["torch"] / "steps.json").read_text())
    k = json.loads((cifar_runs["keras"] / "steps.json").read_text())
    assert t["lr"] == k["lr"] == pytest.approx([0.1] * 5 + [0.01] * 3 + [0.001] * 2)
    # Identical weights and identical (augmented) first batch: the first loss is one forward pass.
    np.testing.assert_allclose(k["loss"][0], t["loss"][0], rtol=1e-5)
    np.testing.assert_allclose(k["loss"][:3], t["loss"][:3], rtol=1e-3)


@pytest.fixture(scope="module")
def cifar100_runs(tmp_path_factory) -> dict[str, Path]:
    """CIFAR-100 from its python-format fixture: coarse labels in both frameworks (one initial weight file,
    asked for as ``cifar100 --labels coarse`` in torch and as ``cifar100_coarse`` in Keras), fine labels in torch."""
    from datasets.cifar import prepare
    from datasets.fixtures import write_cifar100_python

    tmp = tmp_path_factory.mktemp("cifar100")
    write_cifar100_python(tmp / "data", train_images=200, test_images=100)
    for name in ("cifar100", "cifar100_coarse"):
        prepare(tmp / "data", name, val_size=40, download=False)
    init = tmp / "init20.safetensors"
    _python(INIT.replace("get_spec(sys.argv[1])", "get_spec(sys.argv[1], num_classes=int(sys.argv[3]))"),
            "resnet8", str(init), "20")
    common = ["--data-dir", str(tmp / "data"), "--model", "resnet8", "--batch-size", "32", "--epochs", "1",
              "--trace-steps", "5", "--threads", "1", "--no-progress"]
    out = {name: tmp / name for name in ("coarse-torch", "coarse-keras", "fine-torch")}
    run_module("pytorch_impl.train", "--dataset", "cifar100", "--labels", "coarse", "--init", str(init), *common,
               "--out", str(out["coarse-torch"]))
    run_module("keras_impl.train", "--dataset", "cifar100_coarse", "--init", str(init), *common,
               "--out", str(out["coarse-keras"]))
    run_module("pytorch_impl.train", "--dataset", "cifar100", *common, "--out", str(out["fine-torch"]))
    return out


def test_cifar100_runs_take_classes_from_the_data(cifar100_runs):
    from datasets.fixtures import CIFAR100_COARSE_NAMES, CIFAR100_FINE_NAMES

    for key, path in cifar100_runs.items():
        c = runs.read_run(path)["config"]
        fine = key.startswith("fine")
        assert c["dataset"] == ("cifar100" if fine else "cifar100_coarse")
        assert c["spec"]["num_classes"] == (100 if fine else 20)
        assert c["class_names"] == (CIFAR100_FINE_NAMES if fine else CIFAR100_COARSE_NAMES)
        assert c["recipe"]["recipe"] == "cifar-paper" and c["augmentation"] == {"pad": 4, "crop": 32, "hflip": True}
        assert c["data"]["splits"] == {"train": 160, "val": 40, "test": 100}
    t = json.loads((cifar100_runs["coarse-torch"] / "steps.json").read_text())
    k = json.loads((cifar100_runs["coarse-keras"] / "steps.json").read_text())
    assert len(t["loss"]) == len(k["loss"]) == 5  # 160 // 32 iterations
    # One initial weight file, the same augmented first batch of coarse labels: the same first loss.
    np.testing.assert_allclose(k["loss"][0], t["loss"][0], rtol=1e-5)


def test_cifar100_class_names_land_in_the_onnx_metadata(cifar100_runs, tmp_path):
    from PIL import Image

    from datasets.fixtures import CIFAR100_FINE_NAMES
    from export import infer

    run = cifar100_runs["fine-torch"]
    run_module("export.onnx_export", "--run", str(run))
    model = infer.load(run / "model.onnx")
    assert model.meta["class_names"] == CIFAR100_FINE_NAMES and model.meta["dataset"] == "cifar100"
    assert model.meta["resize"] == "stretch"
    img = tmp_path / "a.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(img)
    out = run_module("export.infer", str(run / "model.onnx"), str(img), "--topk", "100").stdout
    ranked = [line.split()[1] for line in out.splitlines() if line.startswith(("  ", " ")) and ". " in line]
    assert sorted(ranked) == sorted(CIFAR100_FINE_NAMES)  # 100 outputs, each named from the meta file


@pytest.mark.slow
def test_cats_vs_dogs_recipe_with_an_imagenet_resnet(tmp_path):
    """A prepared cats_vs_dogs folder (random 128x128 images): ResNet-18, 2 classes, the cosine recipe."""
    from datasets.prepared import prepared_dir, write_prepared
    from shared.recipes import CATS_VS_DOGS

    rng = np.random.default_rng(0)
    splits = {s: (rng.integers(0, 256, (n, 128, 128, 3), dtype=np.uint8), rng.integers(0, 2, n).astype(np.int64))
              for s, n in (("train", 32), ("val", 8), ("test", 8))}
    write_prepared(prepared_dir("cats_vs_dogs", tmp_path / "data"), splits,
                   {"name": "cats_vs_dogs", "class_names": ["cat", "dog"], "source": "fixture", "version": "4.0.1"})
    args = ["--dataset", "cats_vs_dogs", "--data-dir", str(tmp_path / "data"), "--model", "resnet18",
            "--batch-size", "8", "--iters", "3", "--trace-steps", "3", "--threads", "1", "--no-progress",
            "--device", "cpu"]
    for fw, module in (("torch", "pytorch_impl.train"), ("keras", "keras_impl.train")):
        run_module(module, *args, "--out", str(tmp_path / fw))
        run = runs.read_run(tmp_path / fw)
        c = run["config"]
        assert (c["input_size"], c["spec"]["num_classes"], c["spec"]["stem"]) == (128, 2, "imagenet")
        assert c["recipe"]["schedule"] == "cosine" and c["augmentation"]["pad"] == 16 and run["finished"]
        lrs = json.loads((tmp_path / fw / "steps.json").read_text())["lr"]
        assert lrs == pytest.approx([CATS_VS_DOGS.lr * 0.5 * (1 + math.cos(math.pi * i / 3)) for i in range(3)])
