"""The plan of ``make gpu-report``: every measurement in order of value, each taken by the benchmark's own machinery,
run until a time budget is spent; what does not run is a "not run" row that says why (docs/gpu.md).
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared import process
from shared.backends import framework_label
from shared.bench import loops, timing
from shared.bench.catalog import LOOP_VARIANT, torch_train_flags
from shared.bench.flops import PEAK_PRECISIONS
from shared.bench.run import LOW_PRECISION, BenchConfig, run_framework, without_emulated_bf16, worker_command
from shared.spec import get_spec

CIFAR_MODELS = ("resnet20", "resnet56", "resnet110", "plain20", "plain56")
TORCH_VARIANTS = ("eager", "amp_channels_last", "amp_compile")
IMAGENET_MODEL = "resnet50"
KERAS_BACKENDS = ("jax", "torch")
KERAS_STEP_VARIANTS = {"jax": ("jit_compile", "mixed_precision"), "torch": ("eager", "mixed_precision")}
MIN_START_S = 5.0  # an item starts only with at least this many seconds of budget left
BUDGET = "budget"
STOPPED = "budget (stopped at the deadline)"


@dataclass
class GpuConfig:
    """What one ``make gpu-report`` measures and for how long (defaults: the plan of docs/gpu.md)."""

    device: str
    budget_s: float
    data_dir: str = "data"
    dataset: str = "synthetic_cifar"
    batch_size: int = 128
    imagenet_batch_size: int = 256
    models: tuple[str, ...] = CIFAR_MODELS
    variants: tuple[str, ...] = TORCH_VARIANTS
    keras_backends: tuple[str, ...] = KERAS_BACKENDS
    loop_epochs: int = 3
    iters: int = 10
    repeats: int = 3
    warmup: int = 3  # CUDA graphs record on the first calls after compilation
    min_time: float = 0.5
    sync_steps: int = 200
    sync_warmup: int = 20
    echo: bool = True


@dataclass
class Item:
    """One planned measurement: the rows it fills, the packages it needs, and ``run(timeout)``, which returns
    those rows measured or failed, its processes allowed ``timeout`` seconds."""

    name: str
    rows: list[dict[str, Any]]
    run: Callable[[float], list[dict[str, Any]]]
    needs: tuple[str, ...] = ()
    cuda_only: bool = False


class Budget:
    """The seconds left of a run's budget, on a monotonic clock (a test can pass its own)."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.seconds, self.clock = float(seconds), clock
        self.start = clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def remaining(self) -> float:
        return self.seconds - self.elapsed()


@dataclass
class Data:
    """The prepared dataset of the loops, prepared once, by the first item that needs it."""

    name: str
    data_dir: str
    ready: bool = field(default=False)

    def ensure(self) -> None:
        if not self.ready:
            from datasets import load_prepared

            load_prepared(self.name, self.data_dir)
            self.ready = True


def missing_packages(names: tuple[str, ...]) -> list[str]:
    """The import names among ``names`` that this interpreter cannot find."""
    out = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(name)
    return out


def skip_reason(item: Item, device: str) -> str | None:
    """Why ``item`` cannot run on this machine at all (before any budget question), or None."""
    if item.cuda_only and device != "cuda":
        return "not applicable on the CPU (CUDA only)"
    missing = missing_packages(item.needs)
    if missing:
        return f"needs {', '.join(missing)}, which this Python cannot import"
    return None


def _mark(rows: list[dict[str, Any]], status: str, reason: str) -> list[dict[str, Any]]:
    return [{**row, "status": status, "reason": reason} for row in rows]


def run_plan(items: list[Item], budget: Budget, device: str, say: Callable[[str], None] = print) -> list[dict]:
    """Run ``items`` in order while the budget lasts; every planned row comes back once, in plan order."""
    out: list[dict[str, Any]] = []
    for item in items:
        reason = skip_reason(item, device)
        if reason is None and budget.remaining() < MIN_START_S:
            reason = BUDGET
        if reason:
            say(f"gpu-report: {item.name}: not run: {reason}")
            out += _mark(item.rows, "not run", reason)
            continue
        say(f"gpu-report: {item.name} ({budget.remaining():.0f} s of budget left)")
        t0 = budget.elapsed()
        try:
            rows = item.run(budget.remaining())
        except Exception as e:  # an item's own bug or a machine's refusal: its rows say so, the plan goes on
            rows = _mark(item.rows, "failed", timing.first_line(e))
        if budget.remaining() <= 0:  # the deadline stopped this item's process: what it did not finish
            rows = [r if r["status"] == "measured" else {**r, "status": "not run", "reason": STOPPED} for r in rows]
        for row in rows:
            row["item_s"] = round(budget.elapsed() - t0, 1)
        out += rows
    return out


# Rows -------------------------------------------------------------------------------------------------------
def peak_precision(variant: str | None, device: str) -> str:
    """The matmul peak a step's FLOP/s is compared with: its autocast dtype, else float32 (TF32 on CUDA, where
    cuDNN runs float32 convolutions in TF32 by default)."""
    low = variant in LOW_PRECISION
    if device == "cuda":
        return "float16" if low else "tf32"
    return "bfloat16" if low else "float32"


def new_row(kind: str, model: str | None, variant: str | None, gc: GpuConfig, *, framework: str = "torch",
            batch: int | None = None, **extra: Any) -> dict[str, Any]:
    """A planned row: what it measures, before it is measured."""
    return {"id": "/".join(p for p in (framework, model, variant, kind) if p), "kind": kind, "framework": framework,
            "model": model, "input_size": get_spec(model).input_size if model else None, "batch_size": batch,
            "variant": variant, "precision": peak_precision(variant, gc.device) if variant else None,
            "device": gc.device, "status": "planned", "reason": "", **extra}


def shell(cmd: list[str]) -> str:
    """A command line as a shell would take it, this interpreter written ``python``."""
    return shlex.join(["python" if c == sys.executable else str(c) for c in cmd])


def bench_config(gc: GpuConfig, model: str, batch: int, timeout: float,
                 metrics: tuple[str, ...] = ("train",)) -> BenchConfig:
    """The :class:`BenchConfig` of one item (the report's only timing settings)."""
    settings = timing.TimingPlan(batch, gc.iters, gc.repeats, gc.warmup, 1, gc.min_time)
    return BenchConfig(model, gc.device, settings, {}, Path("."), timeout, echo=gc.echo, loop_epochs=gc.loop_epochs,
                       data_dir=gc.data_dir, profile=False, dataset=gc.dataset, metrics=metrics)


def _from_worker(row: dict[str, Any], got: dict[str, Any] | None, metrics: tuple[str, ...]) -> dict[str, Any]:
    """A planned step row filled from a framework process's row (``got``; None when it never reported)."""
    if got is None:
        return {**row, "status": "failed", "reason": "the process did not report this variant"}
    error = got.get("error") or ""
    figures = {m: got.get(m) for m in metrics}
    filled = {**row, **figures, "busy": got.get("busy"), "first_call_s": got.get("first_call_s"),
              "steps": got.get("steps"), "info": got.get("info")}
    if any(timing.is_measured(v) for v in figures.values()):
        return {**filled, "status": "measured", "reason": error}
    if error.startswith("not run: "):
        return {**filled, "status": "not run", "reason": error.removeprefix("not run: ")}
    return {**filled, "status": "failed", "reason": error or "nothing measured"}


def steps_item(gc: GpuConfig, workdir: Path, label: str, model: str, batch: int, variants: tuple[str, ...],
               metrics: tuple[str, ...] = ("train",)) -> Item:
    """One framework process timing ``variants`` of ``model`` (torch also counts the model's FLOPs)."""
    extra = ["--flops"] if label == "torch" else []
    planned = bench_config(gc, model, batch, 0.0, metrics)
    rows = [new_row("step", model, v, gc, framework=label, batch=batch,
                    command=shell(worker_command(label, planned, [v], Path(f"{label}.json")) + extra))
            for v in variants]

    def run(timeout: float) -> list[dict[str, Any]]:
        cfg = bench_config(gc, model, batch, timeout, metrics)
        skipped: list[dict[str, Any]] = []
        wanted = without_emulated_bf16(label, cfg, list(variants), skipped)
        result = run_framework(label, cfg, wanted, workdir, extra, tag=f"-{model}") if wanted else {"rows": []}
        got = {r["variant"]: r for r in result["rows"] + skipped}
        return [{**_from_worker(row, got.get(row["variant"]), metrics), "flops": result.get("flops")} for row in rows]

    needs = ("keras", label.removeprefix("keras-")) if label.startswith("keras-") else ("torch",)
    return Item(f"{label} {model} steps ({', '.join(variants)})", rows, run, needs)


def loop_item(gc: GpuConfig, workdir: Path, data: Data, label: str, model: str, variant: str) -> Item:
    """The real training loop of ``label`` on the synthetic set, with ``variant``'s trainer flags."""
    flags = tuple(torch_train_flags(variant, gc.device)) if label == "torch" else ()
    tag = f"-{model}-{variant}"
    command = loops.loop_command(label, model, gc.batch_size, gc.loop_epochs, gc.device, gc.data_dir,
                                 workdir / f"loop-{label}{tag}", None, gc.dataset, flags)
    row = new_row("loop", model, variant, gc, framework=label, batch=gc.batch_size, dataset=gc.dataset,
                  command=shell(command))

    def run(timeout: float) -> list[dict[str, Any]]:
        cfg = bench_config(gc, model, gc.batch_size, timeout)
        skipped: list[dict[str, Any]] = []
        if not without_emulated_bf16(label, cfg, [variant], skipped):
            return _mark([row], "not run", skipped[0]["error"].removeprefix("not run: "))
        data.ensure()
        got = loops.run_loop(label, cfg, workdir, flags=flags, tag=tag)
        ran = shell(got.pop("command"))
        if "error" in got:
            return [{**row, "status": "failed", "reason": got["error"], "command": ran}]
        return [{**row, "status": "measured", "loop": got, "command": ran}]

    needs = ("keras", label.removeprefix("keras-")) if label.startswith("keras-") else ("torch",)
    return Item(f"{label} {model} {variant} training loop", [row], run, needs)


def sync_summary(counts: dict[str, Any], warmup: int) -> dict[str, Any]:
    """The steady state of ``pytorch_impl.syncs``' per-step counts: the steps after ``warmup``, their syncs,
    and how many of them are the trainer's planned read (after every ``check_every``-th step, counted in the
    next step: ``pytorch_impl.syncs.SyncCounter``)."""
    per_step, every = counts["per_step"], counts["check_every"]
    steady = per_step[warmup:]
    if not steady:
        raise ValueError(f"{len(per_step)} steps recorded; the steady state starts after step {warmup}")
    planned = sum(1 for k in range(warmup, len(per_step)) if k % every == 0)
    total = sum(steady)
    histogram: dict[str, int] = {}
    for n in steady:
        histogram[str(n)] = histogram.get(str(n), 0) + 1
    return {"steps": len(steady), "warmup_steps": warmup, "syncs": total, "per_step": total / len(steady),
            "planned": planned, "unplanned": total - planned, "max_in_a_step": max(steady), "check_every": every,
            "histogram": dict(sorted(histogram.items(), key=lambda kv: int(kv[0]))),
            "warmup_syncs": sum(per_step[:warmup]), "after_last_step": counts.get("after_last_step")}


def syncs_item(gc: GpuConfig, workdir: Path, data: Data, model: str, variant: str) -> Item:
    """``pytorch_impl.syncs`` on the real trainer: host synchronisations per step (CUDA only)."""
    out = workdir / f"syncs-{model}-{variant}.json"
    train = ["--model", model, "--dataset", gc.dataset, "--data-dir", gc.data_dir, "--iters", str(gc.sync_steps),
             "--batch-size", str(gc.batch_size), "--device", gc.device, "--no-progress",
             "--out", str(workdir / f"syncs-run-{model}-{variant}"), *torch_train_flags(variant, gc.device)]
    cmd = [sys.executable, "-m", "pytorch_impl.syncs", "--json-out", str(out), "--", *train]
    row = new_row("syncs", model, variant, gc, batch=gc.batch_size, dataset=gc.dataset, command=shell(cmd))

    def run(timeout: float) -> list[dict[str, Any]]:
        data.ensure()
        done = process.run(cmd, timeout=timeout, echo=gc.echo, env=process.child_env(keras=False))
        if not done.ok:
            return [{**row, "status": "failed", "reason": done.reason()}]
        return [{**row, "status": "measured", "syncs": sync_summary(json.loads(out.read_text()), gc.sync_warmup)}]

    return Item(f"torch {model} {variant} host synchronisations", [row], run, ("torch",), cuda_only=True)


def peaks_item(gc: GpuConfig, workdir: Path) -> Item:
    """The matmul peak of every precision that applies on the device, in one PyTorch process."""
    command = shell(worker_command("torch", bench_config(gc, CIFAR_MODELS[0], gc.batch_size, 0.0), [],
                                   Path("peaks.json")) + ["--peaks"])
    rows = [{**new_row("peak", None, None, gc, precision=p, command=command), "id": f"torch/matmul/{p}/peak"}
            for p in PEAK_PRECISIONS]

    def run(timeout: float) -> list[dict[str, Any]]:
        cfg = bench_config(gc, CIFAR_MODELS[0], gc.batch_size, timeout)
        result = run_framework("torch", cfg, [], workdir, ["--peaks"], tag="-peaks")
        peaks = result.get("peaks") or {}
        out = []
        for row in rows:
            got = peaks.get(row["precision"]) or {"error": result.get("process_error", "no peak reported")}
            if timing.is_measured(got):
                out.append({**row, "status": "measured", "peak": got})
            elif "not_run" in got:
                out.append({**row, "status": "not run", "reason": got["not_run"].removeprefix("not run: ")})
            else:
                out.append({**row, "status": "failed", "reason": got.get("error", "unknown")})
        return out

    return Item("matmul peaks (" + ", ".join(PEAK_PRECISIONS) + ")", rows, run, ("torch",))


def onnxruntime_item(gc: GpuConfig, workdir: Path, model: str, batch: int) -> Item:
    """ONNX Runtime inference on the PyTorch export of ``model`` (CUDA provider on a GPU)."""
    provider = "cuda" if gc.device == "cuda" else "cpu"
    path = workdir / f"{model}.onnx"
    planned = bench_config(gc, model, batch, 0.0, ("infer",))
    export = worker_command("torch", planned, [], Path("export.json")) + ["--onnx", str(path)]
    ort = worker_command("onnxruntime", planned, ["torch_export"], Path("ort.json")) + [
        "--onnx", str(path), "--layout", "NCHW", "--provider", provider]
    row = new_row("infer", model, "torch_export", gc, framework="onnxruntime", batch=batch, provider=provider,
                  command=f"{shell(export)} && {shell(ort)}")
    row["precision"] = "tf32" if gc.device == "cuda" else "float32"

    def run(timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout  # two processes share the item's time
        cfg = bench_config(gc, model, batch, timeout, ("infer",))
        exported = run_framework("torch", cfg, [], workdir, ["--onnx", str(path)], tag="-export").get("onnx") or {}
        if "path" not in exported:
            return _mark([row], "failed", f"export: {exported.get('error', 'no ONNX file')}")
        extra = ["--onnx", exported["path"], "--layout", exported["layout"], "--provider", provider]
        cfg = bench_config(gc, model, batch, max(1.0, deadline - time.monotonic()), ("infer",))
        result = run_framework("onnxruntime", cfg, ["torch_export"], workdir, extra, tag="-ort")
        filled = _from_worker(row, next(iter(result["rows"]), None), ("infer",))
        filled["info"] = {**(filled.get("info") or {}), "export_s": exported.get("seconds")}
        return [filled]

    return Item(f"onnxruntime {model} inference ({provider})", [row], run, ("torch", "onnx", "onnxruntime"))


def build_plan(gc: GpuConfig, workdir: Path) -> list[Item]:
    """Every item of the report, in order of value (docs/gpu.md says why this order)."""
    data = Data(gc.dataset, gc.data_dir)
    first, variants = gc.models[0], gc.variants
    fastest = "amp_compile" if "amp_compile" in variants else variants[-1]
    sync_first = "amp_channels_last" if "amp_channels_last" in variants else variants[0]
    items = [peaks_item(gc, workdir),
             steps_item(gc, workdir, "torch", first, gc.batch_size, variants),
             syncs_item(gc, workdir, data, first, sync_first),
             steps_item(gc, workdir, "torch", IMAGENET_MODEL, gc.imagenet_batch_size, variants, ("train", "infer")),
             loop_item(gc, workdir, data, "torch", first, fastest)]
    items += [loop_item(gc, workdir, data, "torch", first, v) for v in variants if v != fastest]
    for backend in gc.keras_backends:
        label = framework_label("keras", backend)
        items += [steps_item(gc, workdir, label, first, gc.batch_size, KERAS_STEP_VARIANTS[backend]),
                  loop_item(gc, workdir, data, label, first, LOOP_VARIANT[label])]
    for model in gc.models[1:]:
        items.append(steps_item(gc, workdir, "torch", model, gc.batch_size, variants))
        items += [loop_item(gc, workdir, data, "torch", model, v) for v in variants]
    items += [syncs_item(gc, workdir, data, first, v) for v in variants if v != sync_first]
    items.append(onnxruntime_item(gc, workdir, IMAGENET_MODEL, gc.imagenet_batch_size))
    return items
