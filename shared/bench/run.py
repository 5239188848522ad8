"""One benchmark run: every selected framework label in its own process, ONNX Runtime on the exports, the
FLOP count and matmul peak, the real training loops and their profiles (docs/bench.md, "How it runs").

Imports no framework; each child gets its environment from ``shared.process.child_env``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared import process
from shared.bench import loops
from shared.bench.catalog import BASELINE, DESCRIPTIONS, LOOP_VARIANT, MODULES, TRAINING, backend_of, canonical
from shared.bench.flops import add_compute, add_loop_compute
from shared.bench.timing import TimingPlan, ratio
from shared.bench.workers import DEVICES, METRICS
from shared.machine import cpu_has_bf16, git_commit, load_average, machine_info

# Environment variables that change threading (recorded in the report when set).
THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
              "TF_NUM_INTEROP_THREADS", "XLA_FLAGS", "CUDA_VISIBLE_DEVICES")
# ONNX Runtime's execution providers per bench device: CPU always, CUDA too on a GPU bench.
ORT_PROVIDERS = {"cpu": ("cpu",), "cuda": ("cuda", "cpu")}


@dataclass
class BenchConfig:
    """Everything one ``shared.bench`` run needs. ``loop_epochs`` 0 skips the training loops; ``dataset`` is
    the prepared set they train on; ``metrics`` the figures each variant times (default all)."""

    model: str
    device: str
    settings: TimingPlan
    variants: dict[str, list[str]]
    out: Path
    timeout: float | None = None
    echo: bool = True
    loop_epochs: int = 0
    data_dir: str = "data"
    profile: bool = True
    dataset: str = "synthetic"
    metrics: tuple[str, ...] = METRICS


def add_ratios(rows: list[dict[str, Any]], baseline: tuple[str, str] = BASELINE) -> None:
    """Set ``row["ratio"] = {"train": x, "infer": y}`` relative to the baseline row (None if unknown)."""
    base = next((r for r in rows if (r["framework"], r["variant"]) == baseline and not r.get("provider")), None)
    for row in rows:
        row["ratio"] = {m: ratio(row.get(m), base.get(m) if base else None) for m in ("train", "infer")}


def failed_rows(framework: str, variants: list[str], reason: str) -> list[dict[str, Any]]:
    """Rows for variants that could not be measured at all, each carrying ``reason``."""
    return [{"framework": framework, "variant": v, **{m: {"error": reason} for m in METRICS},
             "first_call_s": {}, "steps": {}, "error": reason} for v in variants]


def resolve_device(requested: str | None) -> tuple[str, dict[str, Any]]:
    """``cpu``/``cuda`` (default: cuda when PyTorch sees one) and the probe's answer.

    PyTorch is asked in its own process; CUDA requested where it is unavailable is a clear error.
    """
    if requested is not None and requested not in DEVICES:
        raise ValueError(f"unknown device {requested!r}; valid choices: {', '.join(DEVICES)}")
    if requested == "cpu":
        return "cpu", {}
    code = ("import json, torch; ok = torch.cuda.is_available(); print(json.dumps({'cuda': ok, "
            "'gpu': torch.cuda.get_device_name(0) if ok else None, 'cuda_version': torch.version.cuda}))")
    done = process.run([sys.executable, "-c", code], timeout=300, echo=False, capture_stdout=True,
                       env=process.child_env(keras=False))
    probe = json.loads(done.stdout) if done.ok else {"cuda": False, "probe_error": done.reason()}
    if requested == "cuda" and not probe["cuda"]:
        raise ValueError("device 'cuda' requested but PyTorch sees no CUDA device here "
                         "(torch.cuda.is_available() is False); valid choice on this machine: cpu")
    return ("cuda" if probe["cuda"] else "cpu"), probe


LOW_PRECISION = ("autocast", "mixed_precision", "amp_channels_last", "amp_compile")  # bf16 on the CPU
NO_BF16 = ("not run: this CPU has no native bf16 (bf16 emulated in software measured 0.07-0.08x float32 on such "
           "a CPU); the trainers fall back to float32 there")


def without_emulated_bf16(label: str, cfg: BenchConfig, wanted: list[str], rows: list) -> list[str]:
    """``wanted`` less the bf16 variants on a CPU that would emulate bf16 (a row saying so for each)."""
    if cfg.device != "cpu" or cpu_has_bf16():
        return wanted
    rows += failed_rows(label, [v for v in wanted if v in LOW_PRECISION], NO_BF16)
    return [v for v in wanted if v not in LOW_PRECISION]


def worker_command(label: str, cfg: BenchConfig, variants: list[str], json_out: Path) -> list[str]:
    """``python -m <module> --model ... --json-out FILE`` for one label's variants."""
    s = cfg.settings
    return [sys.executable, "-m", MODULES[label], "--model", cfg.model, "--device", cfg.device,
            "--variants", ",".join(variants), "--batch-size", str(s.batch_size), "--iters", str(s.iters),
            "--repeats", str(s.repeats), "--warmup", str(s.warmup), "--latency-iters", str(s.latency_iters),
            "--min-time", str(s.min_time), "--json-out", str(json_out),
            *(["--metrics", ",".join(cfg.metrics)] if tuple(cfg.metrics) != METRICS else [])]


def run_framework(framework: str, cfg: BenchConfig, variants: list[str], workdir: Path,
                  extra: list[str] = (), tag: str = "") -> dict[str, Any]:
    """One framework process: its JSON when it finished, else failed rows with the crash reason."""
    json_out = workdir / f"{framework}{tag}.json"
    backend = backend_of(framework)
    # only a Keras process needs (and checks) a backend: torch and onnxruntime run where Keras is absent
    env = process.child_env(KERAS_BACKEND=backend) if backend else process.child_env(keras=False)
    done = process.run(worker_command(framework, cfg, variants, json_out) + list(extra), timeout=cfg.timeout,
                       echo=cfg.echo, env=env)
    result = json.loads(json_out.read_text()) if json_out.is_file() else {"framework": framework, "rows": []}
    if not done.ok:
        reason = done.reason()
        finished = {r["variant"] for r in result["rows"]}
        result["rows"] += failed_rows(framework, [v for v in variants if v not in finished], reason)
        result["process_error"] = reason
    return result


def _frameworks(cfg: BenchConfig, workdir: Path, rows: list, frameworks: dict) -> dict[str, dict[str, Any]]:
    """Run torch (always: it counts the FLOPs and times the matmul peak) and each Keras label; return the
    exports for ONNX Runtime."""
    ort = cfg.variants.get("onnxruntime", [])
    keras_source = canonical("keras") if "keras_export" in ort else None
    exports: dict[str, dict[str, Any]] = {}
    for label in TRAINING:
        asked, skipped = cfg.variants.get(label, []), []
        wanted = without_emulated_bf16(label, cfg, asked, skipped)
        source = "torch_export" if label == "torch" else "keras_export" if label == keras_source else None
        onnx = workdir / f"{cfg.model}-{label}.onnx"
        extra = ["--onnx", str(onnx)] if source in ort else []
        if label == "torch":
            extra += ["--flops", "--peak"]
        elif not wanted and not extra:
            rows += skipped
            continue
        result = run_framework(label, cfg, wanted, workdir, extra)
        rows += sorted(result.pop("rows") + skipped, key=lambda r: asked.index(r["variant"]))  # in the order asked
        frameworks[label] = result
        if "--onnx" in extra:
            exports[source] = result.get("onnx") or {"error": result.get("process_error", "the export did not run")}
    return exports


def _onnxruntime(cfg: BenchConfig, workdir: Path, exports: dict, rows: list, frameworks: dict) -> None:
    for source in cfg.variants.get("onnxruntime", []):
        export = exports.get(source, {"error": "no export"})
        for provider in ORT_PROVIDERS[cfg.device]:
            if "error" in export:
                new = failed_rows("onnxruntime", [source], f"unavailable: {export['error']}")
                frameworks.setdefault("onnxruntime", {})
            else:
                extra = ["--onnx", export["path"], "--layout", export["layout"], "--provider", provider]
                result = run_framework("onnxruntime", cfg, [source], workdir, extra, tag=f"-{source}-{provider}")
                new = result.pop("rows")
                frameworks["onnxruntime"] = result
            for row in new:
                row["provider"] = provider
                if "error" not in export:
                    row.setdefault("info", {})["export_s"] = export.get("seconds")
            rows += new


def _loops(cfg: BenchConfig, workdir: Path, rows: list) -> tuple[dict, dict, dict]:
    """The real training loops of the selected training labels, their ratios and the profiles of misses."""
    if cfg.loop_epochs < 1:
        return {}, {"label": None, "ratio": None}, {}
    labels = [label for label in TRAINING if cfg.variants.get(label)]
    result = {label: loops.run_loop(label, cfg, workdir) for label in labels}
    steps = {r["framework"]: r.get("train") for r in rows if r["variant"] == LOOP_VARIANT.get(r["framework"])}
    best = loops.add_loop_ratios(result, steps)
    profiles = {label: loops.run_loop(label, cfg, workdir, profile=True)
                for label in (loops.missed(result, best) if cfg.profile else [])}
    return result, best, profiles


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Run every selected framework in its own process and assemble the report (not yet written)."""
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    load_before, commit = load_average(), git_commit()  # the code that ran: the checkout may move meanwhile
    rows: list[dict[str, Any]] = []
    frameworks: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        exports = _frameworks(cfg, workdir, rows, frameworks)
        _onnxruntime(cfg, workdir, exports, rows, frameworks)
        loop_rows, best, profiles = _loops(cfg, workdir, rows)
    torch_side = frameworks.get("torch", {})
    flops, peak = torch_side.get("flops"), torch_side.get("peak")
    add_ratios(rows)
    add_compute(rows, flops, peak)
    add_loop_compute(loop_rows, flops, peak)
    for row in rows:
        row["description"] = DESCRIPTIONS.get((row["framework"], row["variant"]), "")
    machine = machine_info()
    machine["load_average"] = {"start": load_before, "end": machine.pop("load_average")}
    machine["git_commit"] = commit
    machine["gpu"] = torch_side.get("gpu") or (machine["gpus"][0] if machine["gpus"] and cfg.device == "cuda" else None)
    return {
        "model": cfg.model,
        "device": cfg.device,
        "started_utc": started.isoformat(timespec="seconds"),
        "wall_time_s": round(time.perf_counter() - t0, 1),
        "settings": {**cfg.settings.__dict__, "env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ},
                     "input": "one random batch resident on the device",
                     "spread": "min-max over repeats", "optimizer": "SGD lr 0.1, momentum 0.9, weight decay 1e-4",
                     "loop_epochs": cfg.loop_epochs},
        "machine": machine,
        "frameworks": frameworks,
        "baseline": "/".join(BASELINE),
        "flops": flops,
        "peak": peak,
        "rows": rows,
        "loops": loop_rows,
        "best_keras_loop": best,
        "profiles": profiles,
        "targets": {"loop_over_step": loops.LOOP_TARGET, "best_keras_over_torch_loop": loops.KERAS_TARGET},
    }
