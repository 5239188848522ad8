"""Test helper run as ``python -m tests.shared.dump_batches FRAMEWORK JOBS_JSON``: write loader batches to .npz.

Each job is ``{"prepared": dir, "split": s, "batch_size": b, "train": bool, "seed": n, "epochs": [..],
"out": file}``; batches are stored NHWC as ``e{epoch}_x{i}`` / ``e{epoch}_y{i}``. It imports one
framework only (the one named), so tests/shared can compare both without importing either.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from datasets import read_prepared


def main(framework: str, jobs: list[dict]) -> None:
    for job in jobs:
        prepared = read_prepared(job["prepared"])
        out = {}
        for epoch in job["epochs"]:
            if framework == "torch":
                from pytorch_impl.data import make_loader

                loader = make_loader(prepared, job["split"], job["batch_size"], train=job["train"], seed=job["seed"])
                loader.set_epoch(epoch)
                batches = ((x.permute(0, 2, 3, 1).numpy(), y.numpy()) for x, y in loader)
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
