"""tf.data pipeline of a prepared dataset for Keras, the mirror of ``pytorch_impl/data.py``.

Implements ``shared/data.py`` exactly: the epoch plan (order, crop offsets, flips) comes from
``shared.data.epoch_plan(seed, epoch)``; a generator hands out uint8 batches gathered from the
memory-mapped arrays, and a parallel ``map`` pads, crops and flips them with one gather per axis and
normalizes with ``(x / 255 - mean) / std`` in float32, then ``prefetch`` overlaps it with training.

``python -m keras_impl.data --dataset synthetic --bench`` measures images/s; ``--dump FILE.npz``
writes batches for the cross-framework tests.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

from shared.data import augmentation, check_split, epoch_plan, loader_arg_parser, norm_constants  # noqa: E402


def augment(xb: tf.Tensor, dy: tf.Tensor, dx: tf.Tensor, flip: tf.Tensor, pad: int) -> tf.Tensor:
    """Zero-pad, crop at (dy, dx) and flip where ``flip``: uint8 NHWC in and out (one gather).

    Output pixel (i, j) of image b reads padded pixel (dy + i, dx + j), or (dy + i, dx + s-1-j) when
    flipped, as a flat index into the padded image (the same indices as the torch loader).
    """
    n, s = tf.shape(xb)[0], tf.shape(xb)[1]
    padded = tf.reshape(tf.pad(xb, [[0, 0], [pad, pad], [pad, pad], [0, 0]]), [n, -1, 3])
    ar = tf.range(s)
    rows = dy[:, None] + ar[None, :]
    cols = tf.where(flip[:, None], dx[:, None] + (s - 1) - ar[None, :], dx[:, None] + ar[None, :])
    flat = tf.reshape(rows[:, :, None] * (s + 2 * pad) + cols[:, None, :], [n, s * s])
    return tf.reshape(tf.gather(padded, flat, axis=1, batch_dims=1), [n, s, s, 3])


def normalize(xb: tf.Tensor, mean: tf.Tensor, std: tf.Tensor) -> tf.Tensor:
    """uint8 NHWC -> float32 NHWC, ``(x / 255 - mean) / std``."""
    return (tf.cast(xb, tf.float32) / 255.0 - mean) / std


def make_dataset(prepared, split: str, batch_size: int, *, train: bool, seed: int = 0,
                 epoch: int = 0) -> tf.data.Dataset:
    """One epoch of one split as (x float32 NHWC normalized, y int32) batches.

    ``train=True``: shuffled, augmented, the last incomplete batch dropped; otherwise in order and
    complete. Order and augmentation are a function of (seed, epoch), the same as the torch loader's.
    """
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
        return normalize(xb, mean, std), yb

    ds = ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.apply(tf.data.experimental.assert_cardinality(len(plan))).prefetch(tf.data.AUTOTUNE)


def bench(prepared, batch_size: int = 128, batches: int = 100, train: bool = True, device: str = "cpu") -> dict:
    """Images/s of the training input pipeline (gather + augment + normalize), after one warm-up batch."""
    n, done, epoch, t0 = 0, 0, 0, None
    while done < batches:
        for x, _ in make_dataset(prepared, "train", batch_size, train=train, epoch=epoch):
            if t0 is None:  # warm-up batch (tracing) not timed
                t0 = time.perf_counter()
                continue
            n, done = n + int(x.shape[0]), done + 1
            if done == batches:
                break
        epoch += 1
    dt = time.perf_counter() - t0
    return {"framework": "keras", "images_per_s": n / dt, "images": n, "seconds": dt, "batch_size": batch_size,
            "train": train, "device": device, "tensorflow": tf.__version__}


def main(argv: list[str] | None = None) -> int:
    from datasets import DataError, load_prepared, read_prepared

    parser = loader_arg_parser("python -m keras_impl.data", "dump or time the pipeline")
    args = parser.parse_args(argv)
    try:
        prepared = read_prepared(args.prepared) if args.prepared else load_prepared(args.dataset, args.data_dir)
    except (DataError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    if args.bench:
        print(json.dumps(bench(prepared, args.batch_size, args.batches or 100, args.train, args.device)))
        return 0
    ds = make_dataset(prepared, args.split, args.batch_size, train=args.train, seed=args.seed, epoch=args.epoch)
    out = {}
    for i, (x, y) in enumerate(ds):
        if args.batches is not None and i >= args.batches:
            break
        out[f"x{i}"] = x.numpy()
        out[f"y{i}"] = y.numpy()
    if args.dump:
        from shared.io import atomic_write

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **out)

        atomic_write(args.dump, write)
    print(json.dumps({"batches": len(out) // 2, "len": int(ds.cardinality())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
