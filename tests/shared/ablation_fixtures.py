"""Test fixtures for the ablation: hand-made run folders (the layout of shared/runs.py) and a stand-in trainer.

Nothing here is a result. The run folders have made-up metrics; their weight files have the right
shapes (so parameter counting can be checked against the oracles) and zero values. The stand-in
trainer (``python -m tests.shared.ablation_fixtures --model ... --seed S --out DIR``) writes such a folder
one epoch at a time, with a checkpoint after each epoch; its accuracies depend on the model and the seed
(:func:`fixture_bias`). It can be told to die after an epoch (``ABLATION_FIXTURE_DIE_AFTER=k``), in every
run or only in the one named by ``ABLATION_FIXTURE_DIE_IN=seed-1/resnet20-torch``, to simulate an
interrupted run. Each call is logged to ``fixture-calls.jsonl`` in the ablation's runs folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from shared.io import atomic_write_json, save_weights
from shared.runs import CHECKPOINTS, read_metrics, write_config, write_metrics, write_results
from shared.spec import ModelSpec, get_spec


def fixture_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Canonical key -> shape of every tensor of ``spec`` (torch layout), written out from the paper's tables."""
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(name: str, c: int) -> None:
        for k in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.{k}"] = (c,)

    k = 3 if spec.stem == "cifar" else 7
    shapes["conv1.weight"] = (spec.stem_width, spec.in_channels, k, k)
    bn("bn1", spec.stem_width)
    for blk in spec.blocks():
        if spec.block == "basic":
            convs = [(blk.planes, blk.in_channels, 3), (blk.planes, blk.planes, 3)]
        else:
            convs = [(blk.planes, blk.in_channels, 1), (blk.planes, blk.planes, 3), (blk.out_channels, blk.planes, 1)]
        for i, (o, c, kk) in enumerate(convs, start=1):
            shapes[f"{blk.name}.conv{i}.weight"] = (o, c, kk, kk)
            bn(f"{blk.name}.bn{i}", o)
        if blk.shortcut == "projection":
            shapes[f"{blk.name}.downsample.0.weight"] = (blk.out_channels, blk.in_channels, 1, 1)
            bn(f"{blk.name}.downsample.1", blk.out_channels)
    shapes["fc.weight"] = (spec.num_classes, spec.feature_dim)
    shapes["fc.bias"] = (spec.num_classes,)
    return shapes


def config_for(spec: ModelSpec, framework: str, dataset: str = "synthetic") -> dict:
    return {
        "model": spec.name, "framework": framework, "dataset": dataset, "synthetic": dataset == "synthetic",
        "spec": spec.to_dict(), "class_names": [str(i) for i in range(spec.num_classes)],
        "input_size": spec.input_size, "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3},
        "recipe": {"name": "fixture"}, "versions": {}, "git_commit": None, "device": "cpu",
    }


def metrics_row(epoch: int, val_acc: float, train_acc: float, train_loss: float) -> dict:
    return {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "val_loss": train_loss + 0.1,
            "val_acc": val_acc, "lr": 0.1, "seconds": 2.0, "images_per_s": 1000.0}


def write_run(run_dir: Path, spec: ModelSpec, framework: str, val_accs: list[float], *,
              finished: bool = True, test_acc: float = 0.5, dataset: str = "synthetic", seed: int = 0,
              losses: list[float] | None = None) -> Path:
    """A complete (or, with ``finished=False``, interrupted) hand-made run folder (training loss ``2 / epoch``
    unless ``losses`` gives one per epoch)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(run_dir, {**config_for(spec, framework, dataset), "seed": seed})
    losses = losses or [2.0 / e for e in range(1, len(val_accs) + 1)]
    rows = [metrics_row(e, v, min(1.0, v + 0.05), loss) for e, (v, loss) in enumerate(zip(val_accs, losses), start=1)]
    write_metrics(run_dir, rows)
    zeros = {k: np.zeros(s, np.float32) for k, s in fixture_shapes(spec).items()}
    meta = {"spec": spec.to_json(), "framework": framework, "epoch": str(len(rows))}
    save_weights(run_dir / "best.safetensors", zeros, meta)
    save_weights(run_dir / "last.safetensors", zeros, meta)
    atomic_write_json(run_dir / CHECKPOINTS[framework], {"epoch": len(rows)})
    if finished:
        best = max(rows, key=lambda r: r["val_acc"])
        write_results(run_dir, {"test_acc": test_acc, "test_loss": 1.0, "best_epoch": best["epoch"],
                                "best_val_acc": best["val_acc"], "epochs": len(rows), "wall_time_s": 4.0 * len(rows),
                                "finished": True})
    return run_dir


def fixture_bias(spec: ModelSpec, seed: int) -> float:
    """The stand-in trainer's accuracy offset: residual nets gain and plain nets lose with depth, plus a
    seed-dependent term, so that cells differ from seed to seed."""
    residual = spec.layout == "residual"
    return (1 if residual else -1) * 0.01 * spec.depth / 20 + 0.004 * ((seed * 7 + spec.depth + 3 * residual) % 5)


def main(argv: list[str] | None = None) -> int:
    """Stand-in for ``python -m pytorch_impl.train``: writes a run folder epoch by epoch."""
    p = argparse.ArgumentParser()
    for flag in ("--model", "--dataset", "--data-dir", "--shortcut", "--out", "--resume"):
        p.add_argument(flag)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=3)
    args, _ = p.parse_known_args(argv)
    out = Path(args.out)
    spec = get_spec(args.model, shortcut=args.shortcut)
    framework = out.name.removeprefix(f"{args.model}-").partition("-")[0]  # cell folders are <model>-<label>
    key = f"{out.parent.name}/{out.name}"  # seed-<s>/<model>-<label>
    log = out.parent.parent / "fixture-calls.jsonl"
    with open(log, "a", encoding="utf-8") as f:
        f.write(json.dumps({"cell": out.name, "key": key, "seed": args.seed, "resume": args.resume,
                            "keras_backend": os.environ.get("KERAS_BACKEND")}) + "\n")
    start = 0
    if args.resume:
        start = json.loads((Path(args.resume) / CHECKPOINTS[framework]).read_text())["epoch"]
    elif out.exists() and any(out.iterdir()):
        print(f"error: --out {out} is not empty and --resume was not given", file=sys.stderr)
        return 2
    die_after = int(os.environ.get("ABLATION_FIXTURE_DIE_AFTER", "0"))
    if os.environ.get("ABLATION_FIXTURE_DIE_IN", key) != key:
        die_after = 0
    out.mkdir(parents=True, exist_ok=True)
    write_config(out, {**config_for(spec, framework, args.dataset), "seed": args.seed})
    rows = read_metrics(out) if start else []
    zeros = {k: np.zeros(s, np.float32) for k, s in fixture_shapes(spec).items()}
    for epoch in range(start + 1, args.epochs + 1):
        bias = fixture_bias(spec, args.seed)
        rows.append(metrics_row(epoch, 0.1 * epoch + 0.3 + bias, 0.1 * epoch + 0.3 + bias, 2.0 / epoch - bias))
        write_metrics(out, rows)
        save_weights(out / "last.safetensors", zeros, {"spec": spec.to_json(), "epoch": str(epoch)})
        save_weights(out / "best.safetensors", zeros, {"spec": spec.to_json(), "epoch": str(epoch)})
        atomic_write_json(out / CHECKPOINTS[framework], {"epoch": epoch})
        if epoch == die_after:
            return 3
    best = max(rows, key=lambda r: r["val_acc"])
    write_results(out, {"test_acc": 0.42 + fixture_bias(spec, args.seed), "test_loss": 1.0, "best_epoch": best["epoch"],
                        "best_val_acc": best["val_acc"], "epochs": len(rows), "wall_time_s": 1.0, "finished": True})
    return 0


if __name__ == "__main__":
    sys.exit(main())
