"""Test helper run as ``python -m tests.shared.dump_batches FRAMEWORK JOBS_JSON``: write loader batches to .npz.

Each job is ``{"prepared": dir, "split": s, "batch_size": b, "train": bool, "seed": n, "epochs": [..],
"out": file}``; batches are stored NHWC as ``e{epoch}_x{i}`` / ``e{epoch}_y{i}``. It imports one
framework only (the one named), so tests/shared can compare both without importing either. FRAMEWORK is
``torch`` (its Loader), ``keras`` (the tf.data pipeline) or ``keras-<backend>`` (the EpochDataset that
``model.fit`` trains on, on that Keras backend; with tensorflow unimportable unless the backend is it).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from datasets import read_prepared


def main(framework: str, jobs: list[dict]) -> None:
    if framework.startswith("keras-"):
        os.environ["KERAS_BACKEND"] = framework.split("-", 1)[1]
        if "keras" in sys.modules and sys.modules["keras"].backend.backend() != os.environ["KERAS_BACKEND"]:
            sys.exit(f"keras was imported on {sys.modules['keras'].backend.backend()} before {framework} was asked for")
        if os.environ["KERAS_BACKEND"] != "tensorflow":
            sys.modules["tensorflow"] = None  # the JAX/torch route must not need it
    for job in jobs:
        prepared = read_prepared(job["prepared"])
        out = {}
        for epoch in job["epochs"]:
            if framework == "torch":
                from pytorch_impl.data import Loader

                loader = Loader(prepared, job["split"], job["batch_size"], train=job["train"], seed=job["seed"])
                loader.set_epoch(epoch)
                batches = ((x.permute(0, 2, 3, 1).numpy(), y.numpy()) for x, y in loader)
            elif framework.startswith("keras-"):
                from keras_impl.data import EpochDataset

                ds = EpochDataset(prepared, job["split"], job["batch_size"], train=job["train"], seed=job["seed"])
                ds.set_epoch(epoch)
                batches = (ds[i] for i in range(len(ds)))
            else:
                from keras_impl.data import make_dataset

                ds = make_dataset(prepared, job["split"], job["batch_size"], train=job["train"], seed=job["seed"],
                                  epoch=epoch)
                batches = ((x.numpy(), y.numpy()) for x, y in ds)
            for i, (x, y) in enumerate(batches):
                out[f"e{epoch}_x{i}"], out[f"e{epoch}_y{i}"] = x, y
        np.savez(job["out"], **out)


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
