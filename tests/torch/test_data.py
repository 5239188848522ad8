"""pytorch_impl/data.py: the Loader contract, and its crop/flip/normalize against torchvision."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from datasets import load_prepared
from datasets.prepared import write_prepared
from pytorch_impl.data import Loader
from shared.data import augmentation, epoch_plan, norm_constants


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return load_prepared("synthetic", tmp_path_factory.mktemp("data"))


def _random_prepared(path, name: str, size: int, n: int = 64):
    rng = np.random.default_rng(1)
    splits = {s: (rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), rng.integers(0, 2, n))
              for s in ("train", "val", "test")}
    return write_prepared(path, splits, {"name": name, "class_names": ["a", "b"], "synthetic": True,
                                         "source": "random", "version": "test"})


def test_loader_contract(synthetic):
    train = Loader(synthetic, "train", 128, train=True, seed=3)
    assert len(train) == 2000 // 128
    batches = list(train)
    assert len(batches) == len(train)
    x, y = batches[0]
    assert x.dtype == torch.float32 and x.shape == (128, 3, 32, 32) and x.device.type == "cpu"
    assert y.dtype == torch.int64 and y.shape == (128,)
    assert all(len(b[1]) == 128 for b in batches)  # the last incomplete batch is dropped
    val = Loader(synthetic, "val", 128, train=False)
    assert len(val) == 4 and [len(b[1]) for b in val] == [128, 128, 128, 116]
    np.testing.assert_array_equal(torch.cat([b[1] for b in val]).numpy(), synthetic.arrays("val")[1])


def test_order_and_augmentation_are_a_function_of_seed_and_epoch(synthetic):
    def first(seed, epoch):
        loader = Loader(synthetic, "train", 64, train=True, seed=seed)
        loader.set_epoch(epoch)
        return next(iter(loader))

    a, b = first(0, 1), first(0, 1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(first(0, 2)[0], a[0]) and not torch.equal(first(1, 1)[0], a[0])
    loader = Loader(synthetic, "train", 64, train=True, seed=0)
    loader.set_epoch(1)
    assert torch.equal(next(iter(loader))[0], a[0])  # set_epoch on a reused loader: the same epoch again


@pytest.mark.parametrize("name,size", [("cifar10", 32), ("cats_vs_dogs", 48)])
def test_augmentation_matches_torchvision(tmp_path, name, size):
    """Each augmented image == torchvision pad(pad) -> crop(dy, dx) -> hflip, normalized by torchvision."""
    prepared = _random_prepared(tmp_path / name, name, size)
    pad = augmentation(name).pad
    loader = Loader(prepared, "train", 32, train=True, seed=4)
    plan = epoch_plan(64, 32, train=True, pad=pad, seed=4, epoch=0)
    x_np, _ = prepared.arrays("train")
    mean, std = norm_constants(prepared.manifest)
    for i, (xb, _) in enumerate(loader):
        idx, dy, dx, flip = plan.batch(i)
        for k in range(len(idx)):
            img = torch.from_numpy(np.array(x_np[idx[k]])).permute(2, 0, 1)
            img = TF.crop(TF.pad(img, [pad], fill=0), int(dy[k]), int(dx[k]), size, size)
            img = TF.horizontal_flip(img) if flip[k] else img
            expected = TF.normalize(img.float() / 255.0, mean.tolist(), std.tolist())
            assert torch.equal(xb[k], expected), (i, k)
    assert plan.flip.any() and not plan.flip.all() and len(set(plan.dx.tolist())) > 3


def test_eval_batches_are_plain_normalized_images(synthetic):
    x_np, y_np = synthetic.arrays("test")
    mean, std = norm_constants(synthetic.manifest)
    xb, yb = next(iter(Loader(synthetic, "test", 50, train=False)))
    expected = TF.normalize(torch.from_numpy(np.array(x_np[:50])).permute(0, 3, 1, 2).float() / 255.0,
                            mean.tolist(), std.tolist())
    assert torch.equal(xb, expected) and torch.equal(yb, torch.from_numpy(y_np[:50]))


def test_bad_arguments(synthetic):
    with pytest.raises(ValueError, match="unknown split 'training'; valid choices: train, val, test"):
        Loader(synthetic, "training", 8, train=True)
    with pytest.raises(ValueError, match="batch_size 4096 is larger than the 2000 images"):
        Loader(synthetic, "train", 4096, train=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_resident_loader_matches_cpu(synthetic):
    cpu = Loader(synthetic, "train", 64, train=True, seed=2)
    gpu = Loader(synthetic, "train", 64, train=True, seed=2, device="cuda")
    for (a, ya), (b, yb) in zip(cpu, gpu):
        assert b.device.type == "cuda" and torch.equal(a, b.cpu()) and torch.equal(ya, yb.cpu())


@pytest.mark.parametrize("name,key", [("cifar100", b"fine_labels"), ("cifar100_coarse", b"coarse_labels")])
def test_cifar100_from_the_python_format_to_tensors(tmp_path, name, key):
    """The real preparation of the CIFAR-100 fixture, then the loader: the pickle's labels and pixels come out."""
    from tests.data_fixtures import prepared_cifar100_fixture

    prepared, test = prepared_cifar100_fixture(tmp_path, name)
    batches = list(Loader(prepared, "test", 32, train=False))
    y = torch.cat([b[1] for b in batches])
    assert y.tolist() == list(test[key]) and int(y.max()) < prepared.manifest["num_classes"]
    mean, std = norm_constants(prepared.manifest)
    pixels = torch.from_numpy(np.asarray(test[b"data"]).reshape(-1, 3, 32, 32))  # the format's CHW rows
    expected = TF.normalize(pixels.float() / 255.0, mean.tolist(), std.tolist())
    assert torch.equal(torch.cat([b[0] for b in batches]), expected)
    x, yb = next(iter(Loader(prepared, "train", 32, train=True, seed=1)))
    assert x.shape == (32, 3, 32, 32) and set(yb.tolist()) <= set(range(prepared.manifest["num_classes"]))
