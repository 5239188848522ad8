"""keras_impl/data.py: the make_dataset contract and its crop/flip against tf.image; the cats_vs_dogs
preparation run for real on TFDS mock data (tfds.testing.mock_data), offline errors included."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from datasets import DataError, cats_vs_dogs, load_prepared
from datasets.prepared import write_prepared
from keras_impl.data import make_dataset
from shared.data import augmentation, epoch_plan, norm_constants


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return load_prepared("synthetic", tmp_path_factory.mktemp("data"))


def test_dataset_contract(synthetic):
    train = make_dataset(synthetic, "train", 128, train=True, seed=3)
    assert int(train.cardinality()) == 2000 // 128
    batches = list(train)
    assert len(batches) == 15 and all(len(y) == 128 for _, y in batches)
    x, y = batches[0]
    assert x.dtype == tf.float32 and tuple(x.shape) == (128, 32, 32, 3) and y.dtype == tf.int32
    val = list(make_dataset(synthetic, "val", 128, train=False))
    assert [len(y) for _, y in val] == [128, 128, 128, 116]
    np.testing.assert_array_equal(np.concatenate([y.numpy() for _, y in val]), synthetic.arrays("val")[1])


def test_order_and_augmentation_are_a_function_of_seed_and_epoch(synthetic):
    first = lambda seed, epoch: next(iter(make_dataset(synthetic, "train", 64, train=True, seed=seed, epoch=epoch)))
    a, b = first(0, 1), first(0, 1)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(first(0, 2)[0], a[0]) and not np.array_equal(first(1, 1)[0], a[0])


@pytest.mark.parametrize("name,size", [("cifar10", 32), ("cats_vs_dogs", 48)])
def test_augmentation_matches_tf_image(tmp_path, name, size):
    """Each augmented image == tf.image pad_to_bounding_box -> crop_to_bounding_box -> flip_left_right."""
    rng = np.random.default_rng(1)
    splits = {s: (rng.integers(0, 256, (64, size, size, 3), dtype=np.uint8), rng.integers(0, 2, 64))
              for s in ("train", "val", "test")}
    prepared = write_prepared(tmp_path / name, splits, {"name": name, "class_names": ["a", "b"], "synthetic": True,
                                                        "source": "random", "version": "test"})
    pad = augmentation(name).pad
    plan = epoch_plan(64, 32, train=True, pad=pad, seed=4, epoch=0)
    x_np, _ = prepared.arrays("train")
    mean, std = norm_constants(prepared.manifest)
    for i, (xb, _) in enumerate(make_dataset(prepared, "train", 32, train=True, seed=4)):
        idx, dy, dx, flip = plan.batch(i)
        for k in range(len(idx)):
            img = tf.image.pad_to_bounding_box(np.array(x_np[idx[k]]), pad, pad, size + 2 * pad, size + 2 * pad)
            img = tf.image.crop_to_bounding_box(img, int(dy[k]), int(dx[k]), size, size)
            img = tf.image.flip_left_right(img) if flip[k] else img
            expected = (tf.cast(img, tf.float32) / 255.0 - mean) / std
            assert np.array_equal(xb[k].numpy(), expected.numpy()), (i, k)


def _mock_images(n: int):
    """TFDS-shaped examples of known content: 100x200, left half red, right half blue, plus a 90x60 portrait."""
    def as_dataset(self, *args, **kwargs):
        def gen():
            for i in range(n):
                img = np.zeros((100, 200, 3), np.uint8) if i % 2 == 0 else np.zeros((90, 60, 3), np.uint8)
                w = img.shape[1]
                img[:, : w // 2, 0] = 200
                img[:, w // 2:, 2] = 150
                yield {"image": img, "image/filename": f"{i}.jpg", "label": i % 2}

        return tf.data.Dataset.from_generator(gen, output_signature={
            "image": tf.TensorSpec((None, None, 3), tf.uint8), "image/filename": tf.TensorSpec((), tf.string),
            "label": tf.TensorSpec((), tf.int64)})

    return as_dataset


def test_cats_vs_dogs_preparation_on_tfds_mock(tmp_path):
    """The real preparation code on `tfds.testing.mock_data` (random images of TFDS' declared features)."""
    with tfds.testing.mock_data(num_examples=60):
        prepared = cats_vs_dogs.prepare(tmp_path, download=False)
    m = prepared.manifest
    assert m["name"] == "cats_vs_dogs" and m["class_names"] == ["cat", "dog"] and m["version"] == "4.0.1"
    assert m["splits"] == {"train": 48, "val": 6, "test": 6} and m["image_size"] == cats_vs_dogs.IMAGE_SIZE
    assert m["synthetic"] is False
    x, y = prepared.arrays("train")
    assert x.shape == (48, 128, 128, 3) and x.dtype == np.uint8 and set(np.unique(y)) <= {0, 1}
    batch = next(iter(make_dataset(prepared, "train", 16, train=True)))
    assert tuple(batch[0].shape) == (16, 128, 128, 3)
    assert load_prepared("cats_vs_dogs", tmp_path).manifest["checksums"] == m["checksums"]


def test_cats_vs_dogs_resize_and_split(tmp_path):
    """Shorter side to 128 then centre crop: a landscape image keeps its middle (red left, blue right)."""
    with tfds.testing.mock_data(as_dataset_fn=_mock_images(20)):
        prepared = cats_vs_dogs.prepare(tmp_path, download=False)
    assert prepared.manifest["splits"] == {"train": 16, "val": 2, "test": 2}
    xs = {s: prepared.arrays(s) for s in ("train", "val", "test")}
    idx = cats_vs_dogs.split_indices(20, 0.1, 0.1)
    for split, (x, y) in xs.items():
        np.testing.assert_array_equal(y, idx[split] % 2)  # labels follow the seeded split of the TFDS order
        for img in x:
            # both shapes: left half red (200, 0, 0), right half blue (0, 0, 150), centre column the boundary
            np.testing.assert_array_equal(img[64, 10], [200, 0, 0])
            np.testing.assert_array_equal(img[64, 117], [0, 0, 150])
            assert img.shape == (128, 128, 3)
    assert sorted(np.concatenate(list(idx.values())).tolist()) == list(range(20))


def test_cats_vs_dogs_offline_error_names_the_tfds_layout(tmp_path):
    with pytest.raises(DataError) as e:
        cats_vs_dogs.prepare(tmp_path, download=False)
    msg = str(e.value)
    assert str((tmp_path / "tfds").resolve()) in msg and "cats_vs_dogs/4.0.1/" in msg
    assert "make data DATASET=cats_vs_dogs" in msg and "tfds build cats_vs_dogs" in msg
    assert not (tmp_path / "prepared" / "cats_vs_dogs").exists()
    with pytest.raises(DataError, match="nonexistent.invalid is unreachable"):
        cats_vs_dogs.check_network(tmp_path, host="nonexistent.invalid", timeout=5)


@pytest.mark.parametrize("name,key", [("cifar100", b"fine_labels"), ("cifar100_coarse", b"coarse_labels")])
def test_cifar100_from_the_python_format_to_tensors(tmp_path, name, key):
    """The real preparation of the CIFAR-100 fixture, then the dataset: the pickle's labels and pixels come out."""
    from tests.data_fixtures import prepared_cifar100_fixture

    prepared, test = prepared_cifar100_fixture(tmp_path, name)
    batches = list(make_dataset(prepared, "test", 32, train=False))
    y = np.concatenate([b[1].numpy() for b in batches])
    assert y.tolist() == list(test[key]) and int(y.max()) < prepared.manifest["num_classes"]
    mean, std = norm_constants(prepared.manifest)
    pixels = np.asarray(test[b"data"]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # the format's CHW rows
    expected = (tf.cast(pixels, tf.float32) / 255.0 - mean) / std
    assert np.array_equal(np.concatenate([b[0].numpy() for b in batches]), expected.numpy())
    x, yb = next(iter(make_dataset(prepared, "train", 32, train=True, seed=1)))
    assert tuple(x.shape) == (32, 32, 32, 3)
    assert set(yb.numpy().tolist()) <= set(range(prepared.manifest["num_classes"]))


def test_each_process_feeds_its_own_slice_of_every_global_batch(synthetic):
    """Under data parallelism over several processes, the processes' parts of a batch, in process order, are the
    global batch one process alone would feed: no image twice, none left out (what the two-process training test
    shows end to end, make test-all)."""
    from keras_impl.data import EpochDataset, Part

    whole = EpochDataset(synthetic, "train", 100, train=True, seed=2)
    parts = [EpochDataset(synthetic, "train", 100, train=True, seed=2, part=Part(i, 2, 2)) for i in range(2)]
    for ds in (whole, *parts):
        ds.set_epoch(1)
    for i in (0, len(whole) - 1):
        x, y = whole[i]
        slices = [p[i] for p in parts]
        assert [len(s[1]) for s in slices] == [50, 50]
        np.testing.assert_array_equal(np.concatenate([s[0] for s in slices]), x)
        np.testing.assert_array_equal(np.concatenate([s[1] for s in slices]), y)


def test_an_evaluation_batch_that_does_not_split_over_the_devices_is_padded_with_weight_zero(synthetic):
    """500 validation images in batches of 96 over 3 devices: the last batch of 20 gets one weight-0 copy (21 split
    into 3), so the weighted metrics count every image once (end to end on JAX: make test-all)."""
    from keras_impl.data import EpochDataset, Part

    val = EpochDataset(synthetic, "val", 96, train=False, part=Part(0, 1, 3))
    batches = [val[i] for i in range(len(val))]
    assert val.weighted and [len(b[1]) for b in batches] == [96] * 5 + [21]
    weights = np.concatenate([b[2] for b in batches])
    assert weights.sum() == 500 and set(np.unique(weights)) == {0.0, 1.0} and batches[-1][2][-1] == 0
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches])[weights == 1], synthetic.arrays("val")[1])
