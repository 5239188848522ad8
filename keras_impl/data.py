"""Input pipelines of a prepared dataset for Keras, the mirror of ``pytorch_impl/data.py``.

Both implement ``shared/data.py`` exactly: the epoch plan (order, crop offsets, flips) comes from
``shared.data.epoch_plan(seed, epoch)``, the crop and flip are one gather into the zero-padded uint8
batch, and normalization is ``(x / 255 - mean) / std`` in float32.

* :class:`EpochDataset` (``keras.utils.PyDataset``, numpy only) is what ``model.fit`` trains on, on
  every backend: it never imports tensorflow, so the JAX and PyTorch backends run without it.
  :class:`SetEpoch` hands ``fit``'s epoch number to it, as ``Loader.set_epoch`` does on the torch side.
* :func:`make_dataset` is the same pipeline in ``tf.data`` (TensorFlow only): a generator of uint8
  batches, a parallel ``map`` for the augmentation and ``prefetch``; ``make bench-data`` times it.

``python -m keras_impl.data --dataset synthetic --bench`` measures images/s; ``--dump FILE.npz``
writes batches for the cross-framework tests.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import keras
import numpy as np

from shared import errors
from shared.data import (
    augment_reference,
    augmentation,
    check_split,
    epoch_plan,
    loader_arg_parser,
    norm_constants,
    normalize,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@dataclass(frozen=True)
class Part:
    """This process's part of every global batch under data parallelism: the ``index``-th of ``count``
    equal slices, with batches split over ``devices`` devices in all (every process's)."""

    index: int = 0
    count: int = 1
    devices: int = 1

    def slice(self, size: int) -> slice:
        per = size // self.count
        return slice(self.index * per, (self.index + 1) * per)


class EpochDataset(keras.utils.PyDataset):
    """One split as (x float32 NHWC normalized, y int32) batches, in numpy: any Keras backend.

    ``train=True``: shuffled and augmented by the plan of the epoch chosen with :meth:`set_epoch`, the
    last incomplete batch dropped; otherwise in order and complete. Under data parallelism each process
    yields its ``part`` of every global batch, and an evaluation batch that does not split over the
    devices is padded with images of sample weight 0 (the compiled metrics are weighted).

    ``start`` > 0: every epoch begins at that batch of its plan (the rest of an epoch a stop signal ended).
    ``ahead`` > 0: a background thread prepares the next ``ahead`` batches while the step runs. A batch is a
    pure function of (seed, epoch, index), so a prepared batch is the one asked for whatever the order of
    requests. (Keras' own ``workers`` > 1 enqueuer is not used: it replays the batches it had prefetched
    when an iteration stopped early, as the JAX and torch trainers' first peek and MirroredStrategy do,
    into the next one.)
    """

    def __init__(self, prepared, split: str, batch_size: int, *, train: bool, seed: int = 0,
                 ahead: int = 0, part: Part = Part(), start: int = 0) -> None:
        super().__init__(workers=1, use_multiprocessing=False)
        self.start = start  # each epoch's batches begin at this one (the rest of an epoch a stop signal ended)
        check_split(split)
        self.x_np, y_np = prepared.arrays(split)
        self.y_np = np.asarray(y_np, dtype=np.int32)
        self.batch_size, self.train, self.seed, self.part = batch_size, train, seed, part
        if batch_size % part.devices:
            raise ValueError(f"batch size {batch_size} is not divisible by the {part.devices} devices")
        self.pad = augmentation(prepared.manifest["name"]).pad
        self.mean, self.std = norm_constants(prepared.manifest)
        self.set_epoch(0)
        # An evaluation's last batch may not split over the devices: then every batch carries sample
        # weights, and that one is padded with weight-0 copies of its last image.
        self.weighted = not train and len(self.x_np) % batch_size % part.devices != 0
        self.ahead = ahead
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="batches") if ahead else None
        self._pending: dict[tuple[int, int], Future] = {}  # (epoch, index) -> the batch being prepared

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration produces."""
        self.epoch = int(epoch)
        self._plan = epoch_plan(len(self.x_np), self.batch_size, train=self.train, pad=self.pad,
                                seed=self.seed, epoch=self.epoch)

    def __len__(self) -> int:
        return len(self._plan) - self.start

    def __getitem__(self, i: int) -> tuple[np.ndarray, ...]:
        if not 0 <= i < len(self):
            raise IndexError(f"batch {i} out of range (0..{len(self) - 1})")
        i += self.start
        if not self.ahead:
            return self._batch(self._plan, i)
        ready = self._pending.pop((self.epoch, i), None)
        self._pending = {k: f for k, f in self._pending.items() if k[0] == self.epoch and k[1] > i}
        for j in range(i + 1, min(i + 1 + self.ahead, len(self._plan))):
            if (self.epoch, j) not in self._pending:
                self._pending[self.epoch, j] = self._pool.submit(self._batch, self._plan, j)
        return ready.result() if ready is not None else self._batch(self._plan, i)

    def _batch(self, plan, i: int) -> tuple[np.ndarray, ...]:
        """Batch ``i`` of ``plan``: (x, y), or (x, y, sample weights) when :attr:`weighted`."""
        idx, dy, dx, flip = plan.batch(i)
        weights = np.ones(len(idx), np.float32)
        if self.weighted and len(idx) % self.part.devices:
            extra = self.part.devices - len(idx) % self.part.devices
            idx = np.concatenate([idx, np.repeat(idx[-1:], extra)])
            weights = np.concatenate([weights, np.zeros(extra, np.float32)])
        mine = self.part.slice(len(idx))
        idx, weights = idx[mine], weights[mine]
        xb = self.x_np[idx]
        if self.train:
            xb = augment_reference(xb, dy[mine], dx[mine], flip[mine], self.pad)
        x, y = normalize(xb, self.mean, self.std), self.y_np[idx]
        return (x, y, weights) if self.weighted else (x, y)


class SetEpoch(keras.callbacks.Callback):
    """Before every epoch of ``fit``, point the :class:`EpochDataset` at that epoch's plan.

    ``fit`` fetches an epoch's first batch only after ``on_epoch_begin``; after a resume the first epoch
    ``fit`` runs is the restored one, so the data follows.
    """

    def __init__(self, dataset: EpochDataset) -> None:
        super().__init__()
        self.dataset = dataset

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.dataset.set_epoch(epoch)


def augment(xb, dy, dx, flip, pad: int):
    """Zero-pad, crop at (dy, dx) and flip where ``flip``: uint8 NHWC in and out (one gather).

    Output pixel (i, j) of image b reads padded pixel (dy + i, dx + j), or (dy + i, dx + s-1-j) when
    flipped, as a flat index into the padded image (the same indices as the torch loader).
    """
    import tensorflow as tf

    n, s = tf.shape(xb)[0], tf.shape(xb)[1]
    padded = tf.reshape(tf.pad(xb, [[0, 0], [pad, pad], [pad, pad], [0, 0]]), [n, -1, 3])
    ar = tf.range(s)
    rows = dy[:, None] + ar[None, :]
    cols = tf.where(flip[:, None], dx[:, None] + (s - 1) - ar[None, :], dx[:, None] + ar[None, :])
    flat = tf.reshape(rows[:, :, None] * (s + 2 * pad) + cols[:, None, :], [n, s * s])
    return tf.reshape(tf.gather(padded, flat, axis=1, batch_dims=1), [n, s, s, 3])


def normalize_tf(xb, mean, std):
    """uint8 NHWC -> float32 NHWC, ``(x / 255 - mean) / std`` (tf ops)."""
    import tensorflow as tf

    return (tf.cast(xb, tf.float32) / 255.0 - mean) / std


def make_dataset(prepared, split: str, batch_size: int, *, train: bool, seed: int = 0,
                 epoch: int = 0):
    """One epoch of one split as a ``tf.data.Dataset`` of (x float32 NHWC normalized, y int32) batches.

    ``train=True``: shuffled, augmented, the last incomplete batch dropped; otherwise in order and
    complete. Order and augmentation are a function of (seed, epoch), the same as the torch loader's.
    """
    import tensorflow as tf

    check_split(split)
    x_np, y_np = prepared.arrays(split)
    pad = augmentation(prepared.manifest["name"]).pad
    mean, std = (tf.constant(a) for a in norm_constants(prepared.manifest))
    plan = epoch_plan(len(x_np), batch_size, train=train, pad=pad, seed=seed, epoch=epoch)
    size = int(x_np.shape[1])

    def batches():
        for i in range(len(plan)):
            idx, dy, dx, flip = plan.batch(i)
            yield x_np[idx], y_np[idx].astype(np.int32), dy, dx, flip

    vec = lambda dtype: tf.TensorSpec((None,), dtype)  # noqa: E731
    ds = tf.data.Dataset.from_generator(batches, output_signature=(
        tf.TensorSpec((None, size, size, 3), tf.uint8), vec(tf.int32), vec(tf.int32), vec(tf.int32), vec(tf.bool)))

    def transform(xb, yb, dy, dx, flip):
        if train:
            xb = augment(xb, dy, dx, flip, pad)
        return normalize_tf(xb, mean, std), yb

    ds = ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.apply(tf.data.experimental.assert_cardinality(len(plan))).prefetch(tf.data.AUTOTUNE)


def bench(prepared, batch_size: int = 128, batches: int = 100, train: bool = True, device: str = "cpu") -> dict:
    """Images/s of the training input pipeline (gather + augment + normalize), after one warm-up batch."""
    from shared.bench.timing import TimingPlan, rate

    def forever():
        epoch = 0
        while True:
            yield from (x for x, _ in make_dataset(prepared, "train", batch_size, train=train, epoch=epoch))
            epoch += 1

    it, sizes = forever(), []
    # the one timing loop: one warm-up batch (tracing), then one block of `batches` batches (an eval epoch ends short)
    speed = rate(lambda: sizes.append(int(next(it).shape[0])), 1,
                 TimingPlan(batch_size, iters=batches, repeats=1, warmup=1))
    n, dt = sum(sizes[1:]), batches / speed["median"]
    return {"framework": "keras", "images_per_s": n / dt, "images": n, "seconds": dt, "batch_size": batch_size,
            "train": train, "device": device, "tensorflow": _tf_version()}


def _tf_version() -> str:
    import tensorflow as tf

    return tf.__version__


def numpy_batches(prepared, split: str, batch_size: int, *, train: bool, seed: int = 0, epoch: int = 0):
    """(batches in the epoch, the ``tf.data`` batches as NHWC numpy (x, y)), for ``--dump``."""
    ds = make_dataset(prepared, split, batch_size, train=train, seed=seed, epoch=epoch)
    return int(ds.cardinality()), ((x.numpy(), y.numpy()) for x, y in ds)


def main(argv: list[str] | None = None) -> int:
    from datasets.loading import loader_main

    args = loader_arg_parser("python -m keras_impl.data", "dump or time the pipeline").parse_args(argv)
    return loader_main(
        args,
        bench=lambda prepared: bench(prepared, args.batch_size, args.batches or 100, args.train, args.device),
        batches=lambda prepared: numpy_batches(prepared, args.split, args.batch_size, train=args.train,
                                               seed=args.seed, epoch=args.epoch),
    )


if __name__ == "__main__":
    sys.exit(errors.run(main))
