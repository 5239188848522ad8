"""Run folders for the export tests, in the run-folder layout of shared/runs.py, with randomized weights.

``python -m tests.export_helpers --framework torch|keras --model resnet20 --out DIR [--data-dir D]``
builds the model in that framework (in this process: call it as a subprocess), randomizes every BN
parameter and running statistic (so a swapped or missing mapping cannot pass by accident; convs and
the classifier keep the framework's random init), and writes ``config.json`` + ``best.safetensors``
(+ ``last.safetensors``) for the synthetic dataset. Nothing here is a trained result.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from shared.io import save_weights
from shared.process import FRAMEWORKS
from shared.runs import write_config
from shared.spec import get_spec


def randomize_bn(arrays: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """A copy with every BN tensor replaced by seeded random values of a plausible range."""
    rng = np.random.default_rng(seed)
    out = dict(arrays)
    for key, value in arrays.items():
        if key.endswith("running_var"):
            out[key] = rng.uniform(0.5, 2.0, value.shape).astype(np.float32)
        elif key.endswith("running_mean"):
            out[key] = rng.normal(0.0, 0.2, value.shape).astype(np.float32)
        elif key.endswith(".weight") and value.ndim == 1:  # BN gamma
            out[key] = rng.uniform(0.5, 1.5, value.shape).astype(np.float32)
        elif key.endswith(".bias") and not key.startswith("fc."):  # BN beta
            out[key] = rng.normal(0.0, 0.2, value.shape).astype(np.float32)
    return out


def _initial_weights(framework: str, spec, seed: int) -> dict[str, np.ndarray]:
    if framework == "torch":
        import torch

        from pytorch_impl.resnet import build_model
        from pytorch_impl.weights import get_weights

        torch.manual_seed(seed)
        return get_weights(build_model(spec), spec)
    import keras

    from keras_impl.resnet import build_model
    from keras_impl.weights import get_weights

    keras.utils.set_random_seed(seed)
    return get_weights(build_model(spec, input_shape=(spec.input_size, spec.input_size, 3)), spec)


def make_run(framework: str, model: str, out: Path, data_dir: Path, seed: int = 0) -> Path:
    """Write a synthetic-dataset run folder with BN-randomized weights of ``model`` (10 classes, 32 px)."""
    from datasets import load_prepared

    manifest = load_prepared("synthetic", data_dir).manifest
    spec = get_spec(model, num_classes=int(manifest["num_classes"]), input_size=int(manifest["image_size"]))
    arrays = randomize_bn(_initial_weights(framework, spec, seed), seed)
    meta = {"spec": spec.to_json(), "framework": framework, "epoch": "0"}
    out.mkdir(parents=True, exist_ok=True)
    save_weights(out / "best.safetensors", arrays, meta)
    save_weights(out / "last.safetensors", arrays, meta)
    write_config(out, {
        "model": spec.name, "framework": framework, "dataset": "synthetic", "synthetic": True,
        "spec": spec.to_dict(), "class_names": list(manifest["class_names"]), "input_size": spec.input_size,
        "normalization": {"mean": list(manifest["mean"]), "std": list(manifest["std"])},
        "recipe": {"note": "test fixture: random weights, not trained"}, "versions": {}, "git_commit": None,
        "device": "cpu",
    })
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.export_helpers")
    p.add_argument("--framework", choices=FRAMEWORKS, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--data-dir", default="data")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    path = make_run(args.framework, args.model, Path(args.out), Path(args.data_dir), args.seed)
    print(json.dumps({"run": str(path)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())


def assert_logits_match(reference: np.ndarray, other: np.ndarray, labels: np.ndarray | None = None) -> float:
    """The issue's bar: |diff| <= 1e-4*max(1, max|reference|), 100% top-1 agreement, equal accuracy."""
    assert reference.shape == other.shape, (reference.shape, other.shape)
    diff = float(np.abs(reference.astype(np.float64) - other).max())
    tol = 1e-4 * max(1.0, float(np.abs(reference).max()))
    assert diff <= tol, f"max |logit diff| {diff:.3g} > tolerance {tol:.3g}"
    assert np.array_equal(reference.argmax(1), other.argmax(1)), "top-1 predictions differ"
    if labels is not None:
        assert np.mean(reference.argmax(1) == labels) == np.mean(other.argmax(1) == labels)
    return diff


def fixture_images(data_dir: str | Path, n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` images of the synthetic test split, normalized NHWC float32, and their labels."""
    from datasets import load_prepared
    from shared.data import norm_constants, normalize

    prepared = load_prepared("synthetic", data_dir)
    x, y = prepared.arrays("test")
    mean, std = norm_constants(prepared.manifest)
    return normalize(x[:n], mean, std), y[:n].astype(np.int64)
