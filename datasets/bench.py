"""``make bench-data``: images/s of each framework's input pipeline on CIFAR-10-shaped batches of 128.

    python -m datasets.bench [--data-dir data] [--batches 150] [--out results/bench]

Each pipeline runs in its own process, beside ResNet-20's training steps for scale; writes ``<out>/data.md`` and
``.json`` (docs/data.md, "Throughput").
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

from datasets.prepared import DataError, prepared_dir, read_prepared
from shared import errors, process
from shared.bench.catalog import LOOP_VARIANT, canonical
from shared.io import atomic_write_json, atomic_write_text, check_writable
from shared.markdown import table

# (framework, augment, torch threads): torch's pipeline also with one thread, because on a busy CPU
# its default intra-op threads spin against each other (the ops are small and memory-bound)
PIPELINES = (("torch", True, None), ("torch", True, 1), ("torch", False, None), ("keras", True, None),
             ("keras", False, None))


def _env(framework: str) -> dict[str, str]:
    return process.child_env(keras=framework == "keras", TF_CPP_MIN_LOG_LEVEL="3")


def train_variant(framework: str) -> str:
    """The benchmark variant of the step that ``framework``'s training loop runs (Keras: on its backend)."""
    return LOOP_VARIANT[canonical(framework)]


def bench_pipeline(framework: str, prepared: Path, batch_size: int, batches: int, train: bool,
                   threads: int | None = None) -> dict[str, Any]:
    """One framework's pipeline images/s, measured in its own process (``threads``: torch only)."""
    cmd = process.module_command(framework, "data", "--prepared", prepared, "--bench", "--batch-size", batch_size,
                                 "--batches", batches) + (["--train"] if train else [])
    cmd += ["--threads", str(threads)] if threads else []
    done = process.run(cmd, timeout=1800, echo=False, capture_stdout=True, env=_env(framework))
    if not done.ok:
        return {"framework": framework, "train": train, "error": done.reason()}
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "threads_requested": threads}


def bench_training(framework: str, batch_size: int, tmp: Path) -> dict[str, Any]:
    """ResNet-20 training images/s (median of 3 blocks of 3 steps) from the framework's benchmark module."""
    out, variant = tmp / f"train-{framework}.json", train_variant(framework)
    cmd = process.module_command(framework, "bench", "--model", "resnet20", "--device", "cpu", "--variants", variant,
                                 "--batch-size", batch_size, "--iters", 3, "--repeats", 3, "--warmup", 2,
                                 "--latency-iters", 1, "--json-out", out)
    done = process.run(cmd, timeout=1800, echo=False, env=_env(framework))
    try:
        row = json.loads(out.read_text())["rows"][0]
        return {"framework": framework, "variant": variant, "images_per_s": float(row["train"]["median"])}
    except Exception as e:  # a missing or failed benchmark is reported, not fatal
        return {"framework": framework, "variant": variant, "error": done.reason() if not done.ok else str(e)}


def bench_dataset(data_dir: Path, tmp: Path) -> tuple[Path, str]:
    """The prepared CIFAR-10 if there is one, else 50k random images in CIFAR-10 format, prepared."""
    real = prepared_dir("cifar10", data_dir)
    if (real / "manifest.json").is_file():
        read_prepared(real)
        return real, f"CIFAR-10 prepared in {real}"
    from datasets import cifar
    from datasets.fixtures import write_cifar10_python

    print("CIFAR-10 is not prepared here: benchmarking 50,000 random images in CIFAR-10's format", flush=True)
    write_cifar10_python(tmp, 10_000, 10_000, seed=0)
    prepared = cifar.prepare(tmp, "cifar10", download=False)
    return prepared.path, ("random uint8 images in CIFAR-10's python format (50,000 training images -> "
                           "45,000 train after the 5,000 validation split; CIFAR-10 itself is not available here)")


def render(report: dict[str, Any]) -> str:
    """The Markdown report."""
    lines = ["# Input pipeline throughput (make bench-data)", "",
             f"Data: {report['data']}. Batches of {report['batch_size']}, {report['batches']} timed batches "
             f"after one warm-up, CPU: {report['cpu']} ({report['cores']} cores; load average "
             f"{report['load_average']} when started).", ""]
    body = []
    train = {t["framework"]: t for t in report["training"]}
    for row in report["pipelines"]:
        fw = row["framework"]
        what = "train (shuffle + pad/crop/flip + normalize)" if row["train"] else "eval (normalize)"
        what += f", {row['threads']} thread{'s' if row['threads'] > 1 else ''}" if "threads" in row else ""
        t = train.get(fw, {})
        if "error" in row:
            body.append([fw, what, f"failed: {row['error']}", "", ""])
            continue
        tips = t.get("images_per_s")
        ratio = f"{row['images_per_s'] / tips:.0f}x" if tips else "n/a"
        body.append([fw, what, f"{row['images_per_s']:,.0f}", f"{tips:,.0f}" if tips else t.get("error", "n/a"),
                     ratio])
    lines += table(("framework", "pipeline", "images/s", "ResNet-20 training images/s", "pipeline / training"),
                   body, "llrrr")
    lines += ["", report["verdict"], ""]
    return "\n".join(lines)


def verdict(pipelines: list[dict], training: list[dict]) -> str:
    train = {t["framework"]: t.get("images_per_s") for t in training}
    parts = []
    for row in pipelines:
        measured = "images_per_s" in row and train.get(row["framework"])
        if row.get("train") and measured and not row.get("threads_requested"):
            ok = row["images_per_s"] > train[row["framework"]]
            parts.append(f"{row['framework']}: the augmenting pipeline delivers {row['images_per_s']:,.0f} images/s "
                         f"against {train[row['framework']]:,.0f} consumed by ResNet-20 training "
                         f"({'keeps up' if ok else 'DOES NOT keep up'})")
    return "; ".join(parts) + "." if parts else "Training throughput not measured: no verdict."


def main(argv: list[str] | None = None) -> int:
    parser = errors.ArgumentParser(prog="python -m datasets.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=150, help="timed batches per pipeline")
    parser.add_argument("--out", default="results/bench", help="folder for data.json and data.md")
    parser.add_argument("--skip-training", action="store_true", help="do not time ResNet-20 training steps")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.batches < 1:
        raise errors.UserError(f"--batch-size and --batches must be >= 1; got {args.batch_size}, {args.batches}")
    out = check_writable(args.out, folder=True, what="report folder")
    from shared.machine import machine_info

    load = [round(v, 2) for v in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        try:
            path, data = bench_dataset(Path(args.data_dir), Path(tmp))
        except DataError as e:
            raise errors.UserError(str(e)) from None
        pipelines = []
        for fw, train, threads in PIPELINES:
            row = bench_pipeline(fw, path, args.batch_size, args.batches, train, threads)
            pipelines.append(row)
            print(f"{fw} {'train' if train else 'eval'} pipeline{f' ({threads} thread)' if threads else ''}: "
                  f"{row.get('images_per_s', 0):,.0f} images/s {row.get('error', '')}", flush=True)
        training = [] if args.skip_training else [bench_training(fw, args.batch_size, Path(tmp))
                                                  for fw in process.FRAMEWORKS]
        for t in training:
            print(f"{t['framework']} ResNet-20 training ({t['variant']}): "
                  f"{t.get('images_per_s', 0):,.0f} images/s {t.get('error', '')}", flush=True)
    info = machine_info()
    report = {"data": data, "batch_size": args.batch_size, "batches": args.batches,
              "cpu": info.get("cpu") or platform.processor(), "cores": info.get("cores") or os.cpu_count(),
              "load_average": load, "pipelines": pipelines, "training": training,
              "verdict": verdict(pipelines, training), "machine": info}
    atomic_write_json(out / "data.json", report)
    atomic_write_text(out / "data.md", render(report))
    print(report["verdict"])
    print(f"wrote {out / 'data.json'} and {out / 'data.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(errors.run(main))
