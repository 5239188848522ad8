"""Speed benchmarks: training and inference images/s and batch-1 latency, per framework and fast path.

    python -m shared.bench --model resnet20 [--batch-size 128] [--device cpu|cuda] [--iters 3]
                           [--repeats 5] [--variants torch,keras:graph,onnxruntime] [--out results/bench]

Each framework runs in its own process (``python -m pytorch_impl.bench`` / ``keras_impl.bench`` /
``export.bench_ort``) and writes its measurements as JSON; this module (which imports neither
framework) starts them, computes each row's ratio to PyTorch eager and writes
``<out>/bench-<model>-<device>.md`` and ``.json``.

What is measured, for every variant, after warm-up and with the device synchronized around each
timed block: training images/s (forward + loss + backward + SGD step, train mode), inference
images/s (eval mode, no gradient) at the batch size, and the median batch-1 latency. Each figure is
the median of ``repeats`` timed blocks with its min-max spread; a block is ``iters`` steps, or more
so that it lasts at least ``min_time`` seconds (a GPU runs 3 steps of ResNet-20 in ~15 ms, which is
noise), and the report says how many steps each block timed. The input is
one random batch resident on the device, so data loading is not part of any figure. A variant that
fails is reported with the first line of its error, never dropped.

The same module holds the framework-neutral pieces the framework processes use: the timing loops,
the statistics and the per-variant runner.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.backends import keras_env
from shared.io import atomic_write_json, atomic_write_text
from shared.machine import load_average, machine_info
from shared.spec import get_spec

ROOT = Path(__file__).resolve().parent.parent
DEVICES = ("cpu", "cuda")
FRAMEWORKS = ("torch", "keras", "onnxruntime")
MODULES = {"torch": "pytorch_impl.bench", "keras": "keras_impl.bench", "onnxruntime": "export.bench_ort"}
VARIANTS: dict[str, tuple[str, ...]] = {
    "torch": ("eager", "channels_last", "compile", "autocast"),
    "keras": ("eager", "graph", "jit_compile", "mixed_precision"),
    "onnxruntime": ("torch_export", "keras_export"),
}
DESCRIPTIONS = {
    ("torch", "eager"): "PyTorch eager, NCHW, float32",
    ("torch", "channels_last"): "model and input in torch.channels_last (NHWC in memory)",
    ("torch", "compile"): "torch.compile (inductor); compilation excluded, shown as first call",
    ("torch", "autocast"): "torch.autocast: bfloat16 on CPU, float16 + GradScaler on CUDA",
    ("keras", "eager"): "Keras run_eagerly=True (no tf.function)",
    ("keras", "graph"): "Keras default: tf.function graph, jit_compile=False",
    ("keras", "jit_compile"): "Keras jit_compile=True (XLA)",
    ("keras", "mixed_precision"): "policy mixed_bfloat16 on CPU / mixed_float16 on GPU, graph mode",
    ("onnxruntime", "torch_export"): "ONNX Runtime on the PyTorch export (NCHW), inference only",
    ("onnxruntime", "keras_export"): "ONNX Runtime on the Keras export (NHWC), inference only",
}
METRICS = ("train", "infer", "latency_ms")
BASELINE = ("torch", "eager")
DEFAULTS = {"batch_size": 128, "iters": 3, "repeats": 5, "warmup": 2, "latency_iters": 20}
MIN_TIME = 1.0  # seconds per timed throughput block (command-line default)
# Environment variables that change threading (recorded in the report when set).
THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
              "TF_NUM_INTEROP_THREADS", "CUDA_VISIBLE_DEVICES")
# ONNX Runtime's execution providers per bench device: CPU always, CUDA too on a GPU bench.
ORT_PROVIDERS = {"cpu": ("cpu",), "cuda": ("cuda", "cpu")}


# Statistics -----------------------------------------------------------------------------------
def first_line(error: BaseException | str) -> str:
    """``Type: first line of the message`` (what a report shows for a failed measurement)."""
    if isinstance(error, BaseException):
        lines = str(error).strip().splitlines()
        return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else "unknown error"


def summarize(values: Iterable[float]) -> dict[str, float | int]:
    """Median, min, max and quartiles of per-repeat figures; every value must be finite and > 0."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("no measurement to summarize")
    bad = [v for v in values if not math.isfinite(v) or v <= 0]
    if bad:
        raise ValueError(f"measurements must be positive and finite; got {bad}")
    q1, q3 = (statistics.quantiles(values, n=4, method="inclusive")[i] for i in (0, 2)) \
        if len(values) > 1 else (values[0], values[0])
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "q1": q1, "q3": q3, "n": len(values), "values": values}


def is_measured(metric: Any) -> bool:
    """True for a summary dict (as opposed to ``None`` = not applicable, or ``{"error": ...}``)."""
    return isinstance(metric, dict) and "median" in metric


def ratio(row_metric: Any, base_metric: Any) -> float | None:
    """Row median / baseline median (both images/s): >1 means faster than the baseline."""
    if not (is_measured(row_metric) and is_measured(base_metric)):
        return None
    return row_metric["median"] / base_metric["median"]


def add_ratios(rows: list[dict[str, Any]], baseline: tuple[str, str] = BASELINE) -> None:
    """Set ``row["ratio"] = {"train": x, "infer": y}`` relative to the baseline row (None if unknown)."""
    base = next((r for r in rows if (r["framework"], r["variant"]) == baseline and not r.get("provider")), None)
    for row in rows:
        row["ratio"] = {m: ratio(row.get(m), base.get(m) if base else None) for m in ("train", "infer")}


# Timing (used inside the framework processes) -------------------------------------------------
@dataclass
class Workload:
    """What a framework process hands the timing loops for one variant.

    Each step runs one batch and returns when its work is queued; ``sync`` waits for the device
    (a no-op where the step's result is already on the host). ``train_step`` / ``latency_step``
    may be None when not applicable (ONNX Runtime has no training).
    """

    train_step: Callable[[], Any] | None
    infer_step: Callable[[], Any]
    latency_step: Callable[[], Any]
    sync: Callable[[], None] = lambda: None
    cleanup: Callable[[], None] = lambda: None
    info: dict[str, Any] = field(default_factory=dict)
    model: Any = None  # the framework's model object, for inspection (never serialized)


@dataclass(frozen=True)
class Settings:
    """How long to measure: ``iters`` batches per timed block (more when a block would last less than
    ``min_time`` seconds; 0 = exactly ``iters``), ``repeats`` blocks, after ``warmup`` calls."""

    batch_size: int = DEFAULTS["batch_size"]
    iters: int = DEFAULTS["iters"]
    repeats: int = DEFAULTS["repeats"]
    warmup: int = DEFAULTS["warmup"]
    latency_iters: int = DEFAULTS["latency_iters"]
    min_time: float = 0.0

    def __post_init__(self) -> None:
        for name in ("batch_size", "iters", "repeats", "warmup", "latency_iters"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
        if not (isinstance(self.min_time, int | float) and 0 <= self.min_time <= 600):
            raise ValueError(f"min_time must be seconds between 0 and 600; got {self.min_time!r}")


def _warm_up(step: Callable[[], Any], sync: Callable[[], None], calls: int) -> float:
    """Run ``calls`` steps; return the seconds of the first (tracing/compilation happen there)."""
    sync()
    t0 = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - t0
    for _ in range(calls - 1):
        step()
    sync()
    return first


def _timed_block(step: Callable[[], Any], sync: Callable[[], None], steps: int) -> float:
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return time.perf_counter() - t0


def block_steps(step: Callable[[], Any], sync: Callable[[], None], settings: Settings) -> int:
    """Steps per timed block: ``settings.iters``, scaled up from one untimed trial block until a block
    lasts ``settings.min_time`` seconds (at most 100,000 steps)."""
    steps = settings.iters
    while settings.min_time > 0 and steps < 100_000:
        seconds = _timed_block(step, sync, steps)
        if seconds >= settings.min_time:
            break
        # aim 10% over, and at most 100x per trial (a first block can be too quick to extrapolate)
        steps = min(100_000, steps * 100, math.ceil(steps * 1.1 * settings.min_time / max(seconds, 1e-6)))
    return steps


def time_throughput(step: Callable[[], Any], sync: Callable[[], None], settings: Settings,
                    images_per_step: int) -> tuple[list[float], float, int]:
    """Images/s of each timed block, the first call's seconds, and the steps per block (:func:`block_steps`)."""
    first = _warm_up(step, sync, settings.warmup)
    steps = block_steps(step, sync, settings)
    values = [images_per_step * steps / _timed_block(step, sync, steps) for _ in range(settings.repeats)]
    return values, first, steps


def time_latency(step: Callable[[], Any], sync: Callable[[], None],
                 settings: Settings) -> tuple[list[float], float, int]:
    """Median milliseconds of single calls per timed block, the first call's seconds, and the calls per block
    (``settings.latency_iters``: each call is timed alone, so a block needs no minimum duration)."""
    first = _warm_up(step, sync, settings.warmup)
    values = []
    for _ in range(settings.repeats):
        times = []
        for _ in range(settings.latency_iters):
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            times.append((time.perf_counter() - t0) * 1e3)
        values.append(statistics.median(times))
    return values, first, settings.latency_iters


def measure_workload(build: Callable[[], Workload], settings: Settings) -> dict[str, Any]:
    """Build one variant and time its three figures; every failure is caught and kept as a reason.

    Returns ``{"train", "infer", "latency_ms"}`` (each a summary, ``{"error": reason}`` or None
    when not applicable), ``first_call_s`` per figure, ``error`` (the first failure, if any) and
    the workload's ``info``.
    """
    row: dict[str, Any] = {m: None for m in METRICS}
    row["first_call_s"] = {}
    row["steps"] = {}  # steps per timed block, per figure
    row["error"] = None
    try:
        work = build()
    except Exception as e:  # a variant that cannot even be built fails as a whole, with its reason
        reason = first_line(e)
        row.update({m: {"error": reason} for m in METRICS}, error=reason)
        return row
    row["info"] = work.info
    plan = (
        ("train", work.train_step, lambda s: time_throughput(s, work.sync, settings, settings.batch_size)),
        ("infer", work.infer_step, lambda s: time_throughput(s, work.sync, settings, settings.batch_size)),
        ("latency_ms", work.latency_step, lambda s: time_latency(s, work.sync, settings)),
    )
    try:
        for metric, step, timer in plan:
            if step is None:
                continue
            try:
                values, first, steps = timer(step)
                row[metric] = summarize(values)
                row["first_call_s"][metric] = first
                row["steps"][metric] = steps
            except Exception as e:  # e.g. an XLA or inductor failure on this device: report it
                row[metric] = {"error": first_line(e)}
                row["error"] = row["error"] or row[metric]["error"]
    finally:
        work.cleanup()
    return row


def run_variants(framework: str, variants: Iterable[str], build: Callable[[str], Workload],
                 settings: Settings, json_out: str | os.PathLike, header: dict[str, Any]) -> dict[str, Any]:
    """Measure each variant in turn, rewriting ``json_out`` after each so a crash keeps what was done."""
    from tqdm import tqdm

    result = {**header, "framework": framework, "rows": []}
    variants = list(variants)
    bar = tqdm(variants, desc=f"bench {framework}", unit="variant", file=sys.stderr, dynamic_ncols=True)
    for variant in bar:
        bar.set_postfix_str(variant)
        row = {"framework": framework, "variant": variant, **measure_workload(lambda v=variant: build(v), settings)}
        result["rows"].append(row)
        bar.write(f"  {framework} {variant}: {_brief(row)}", file=sys.stderr)
        atomic_write_json(json_out, result)
    atomic_write_json(json_out, result)
    return result


def _brief(row: dict[str, Any]) -> str:
    parts = []
    for metric, unit in (("train", "img/s train"), ("infer", "img/s infer"), ("latency_ms", "ms batch-1")):
        m = row.get(metric)
        if is_measured(m):
            parts.append(f"{m['median']:.4g} {unit}")
        elif isinstance(m, dict):
            parts.append(f"{metric} failed ({m['error']})")
    return ", ".join(parts) or "nothing measured"


def worker_parser(prog: str, framework: str) -> argparse.ArgumentParser:
    """The command line of a framework's benchmark process (``shared.bench`` starts it)."""
    p = argparse.ArgumentParser(prog=prog, description=f"Benchmark the {framework} variants of one model.")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--device", choices=DEVICES, default="cpu")
    p.add_argument("--variants", default=",".join(VARIANTS[framework]),
                   help=f"comma-separated subset of: {', '.join(VARIANTS[framework])} (empty: none)")
    for name, default in DEFAULTS.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    p.add_argument("--min-time", type=float, default=MIN_TIME, help="seconds per timed block, at least")
    p.add_argument("--json-out", required=True, help="where to write the measurements (JSON)")
    return p


def parse_worker_args(parser: argparse.ArgumentParser, framework: str,
                      argv: list[str] | None) -> tuple[argparse.Namespace, Settings, list[str]]:
    """Parse and validate a framework process's arguments (user errors exit 2 with one line)."""
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS[framework]:
            parser.error(f"unknown {framework} variant {v!r}; valid choices: {', '.join(VARIANTS[framework])}")
    try:
        get_spec(args.model)
        settings = Settings(**{k: getattr(args, k) for k in DEFAULTS}, min_time=args.min_time)
    except ValueError as e:
        parser.error(str(e))
    return args, settings, variants


def worker_main(framework: str, prog: str, argv: list[str] | None, *, check_device: Callable[[str], Any],
                build_workload: Callable[..., Workload], export_for_ort: Callable[..., dict[str, Any]],
                framework_info: Callable[[str], dict[str, Any]]) -> int:
    """The ``main`` of a framework's benchmark process: measure the variants, then export if asked."""
    parser = worker_parser(prog, framework)
    parser.add_argument("--onnx", default=None, help="also export the model here for ONNX Runtime")
    args, settings, variants = parse_worker_args(parser, framework, argv)
    try:
        check_device(args.device)
    except RuntimeError as e:
        parser.error(str(e))
    spec = get_spec(args.model)
    result = run_variants(framework, variants, lambda v: build_workload(spec, v, settings.batch_size, args.device),
                          settings, args.json_out, framework_info(args.device))
    if args.onnx:
        print(f"  exporting {spec.name} from {framework} to ONNX for onnxruntime ...", file=sys.stderr, flush=True)
        result["onnx"] = export_for_ort(spec, args.onnx)
        atomic_write_json(args.json_out, result)
    return 0


# Orchestration --------------------------------------------------------------------------------
def parse_variants(text: str | None) -> dict[str, list[str]]:
    """``"torch,keras:graph,onnxruntime:torch_export"`` -> the selected variants per framework.

    A bare framework name selects all its variants; ``None``/``"all"`` selects everything.
    """
    if text is None or text.strip() in ("", "all"):
        return {fw: list(vs) for fw, vs in VARIANTS.items()}
    chosen: dict[str, list[str]] = {fw: [] for fw in FRAMEWORKS}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        fw, _, variant = item.partition(":")
        if fw not in VARIANTS:
            raise ValueError(f"unknown framework {fw!r} in --variants; valid choices: {', '.join(FRAMEWORKS)}")
        if not variant:
            selected = list(VARIANTS[fw])
        elif variant in VARIANTS[fw]:
            selected = [variant]
        else:
            raise ValueError(f"unknown {fw} variant {variant!r}; valid choices: {', '.join(VARIANTS[fw])}")
        chosen[fw] += [v for v in selected if v not in chosen[fw]]
    return chosen


def _child_env() -> dict[str, str]:
    env = keras_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def run_child(cmd: list[str], timeout: float | None = None, echo: bool = True) -> tuple[int, str]:
    """Run a command, passing its stderr through (progress bars); return (exit code, stderr tail)."""
    tail: deque[str] = deque(maxlen=40)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout if timeout else None
    buf = b""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    while True:
        if deadline and time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            return -9, f"timed out after {timeout:.0f} s"
        if not select.select([fd], [], [], 1.0)[0]:
            continue  # nothing to read yet: check the deadline again
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        if echo:
            sys.stderr.buffer.write(chunk)
            sys.stderr.flush()
        buf += chunk
        *lines, buf = buf.split(b"\n")
        tail.extend(line.decode(errors="replace").rsplit("\r", 1)[-1] for line in lines)
    proc.wait()
    tail.append(buf.decode(errors="replace"))
    return proc.returncode, "\n".join(tail)


def crash_reason(code: int, stderr_tail: str) -> str:
    """A one-line reason for a framework process that died: its last error-looking stderr line."""
    lines = [ln.strip() for ln in stderr_tail.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln or "error" in ln or "Exception" in ln]
    last = (errors or lines or ["no output"])[-1]
    return f"process exited with code {code}: {last}"[:300]


def failed_rows(framework: str, variants: Iterable[str], reason: str) -> list[dict[str, Any]]:
    """Rows for variants that could not be measured at all, each carrying ``reason``."""
    return [{"framework": framework, "variant": v, **{m: {"error": reason} for m in METRICS},
             "first_call_s": {}, "steps": {}, "error": reason} for v in variants]


def resolve_device(requested: str | None) -> tuple[str, dict[str, Any]]:
    """``cpu``/``cuda`` (default: cuda when PyTorch sees one) and the probe's answer.

    PyTorch is asked in its own process; CUDA requested where it is unavailable is a clear error.
    """
    if requested is not None and requested not in DEVICES:
        raise ValueError(f"unknown device {requested!r}; valid choices: {', '.join(DEVICES)}")
    code = ("import json, torch; ok = torch.cuda.is_available(); print(json.dumps({'cuda': ok, "
            "'gpu': torch.cuda.get_device_name(0) if ok else None, 'cuda_version': torch.version.cuda}))")
    if requested == "cpu":
        return "cpu", {}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_child_env(), capture_output=True,
                          text=True, timeout=300)
    probe = json.loads(proc.stdout) if proc.returncode == 0 else {"cuda": False, "probe_error": proc.stderr[-300:]}
    if requested == "cuda" and not probe["cuda"]:
        raise ValueError("device 'cuda' requested but PyTorch sees no CUDA device here "
                         "(torch.cuda.is_available() is False); valid choice on this machine: cpu")
    return ("cuda" if probe["cuda"] else "cpu"), probe


@dataclass
class BenchConfig:
    """Everything one ``shared.bench`` run needs."""

    model: str
    device: str
    settings: Settings
    variants: dict[str, list[str]]
    out: Path
    timeout: float | None = None
    echo: bool = True


def _worker_cmd(framework: str, cfg: BenchConfig, variants: list[str], json_out: Path) -> list[str]:
    s = cfg.settings
    return [sys.executable, "-m", MODULES[framework], "--model", cfg.model, "--device", cfg.device,
            "--variants", ",".join(variants), "--batch-size", str(s.batch_size), "--iters", str(s.iters),
            "--repeats", str(s.repeats), "--warmup", str(s.warmup), "--latency-iters", str(s.latency_iters),
            "--min-time", str(s.min_time), "--json-out", str(json_out)]


def run_framework(framework: str, cfg: BenchConfig, variants: list[str], workdir: Path,
                  extra: list[str] = (), tag: str = "") -> dict[str, Any]:
    """One framework process: its JSON when it finished, else failed rows with the crash reason."""
    json_out = workdir / f"{framework}{tag}.json"
    code, tail = run_child(_worker_cmd(framework, cfg, variants, json_out) + list(extra), cfg.timeout, cfg.echo)
    result = json.loads(json_out.read_text()) if json_out.is_file() else {"framework": framework, "rows": []}
    if code != 0:
        reason = crash_reason(code, tail)
        done = {r["variant"] for r in result["rows"]}
        result["rows"] += failed_rows(framework, [v for v in variants if v not in done], reason)
        result["process_error"] = reason
    return result


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Run every selected framework in its own process and assemble the report (not yet written)."""
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    load_before = load_average()
    rows: list[dict[str, Any]] = []
    frameworks: dict[str, Any] = {}
    ort_sources = cfg.variants.get("onnxruntime", [])
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        exports: dict[str, dict[str, Any]] = {}
        for fw in ("torch", "keras"):
            wanted = cfg.variants.get(fw, [])
            source = f"{fw}_export"
            onnx = workdir / f"{cfg.model}-{fw}.onnx"
            extra = ["--onnx", str(onnx)] if source in ort_sources else []
            if not wanted and not extra:
                continue
            result = run_framework(fw, cfg, wanted, workdir, extra)
            rows += result.pop("rows")
            frameworks[fw] = result
            if extra:
                exports[source] = result.get("onnx") or {
                    "error": result.get("process_error", "the export did not run")}
        for source in ort_sources:
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
    add_ratios(rows)
    for row in rows:
        row["description"] = DESCRIPTIONS.get((row["framework"], row["variant"]), "")
    machine = machine_info()
    machine["load_average"] = {"start": load_before, "end": machine.pop("load_average")}
    machine["gpu"] = (frameworks.get("torch", {}).get("gpu")
                      or (machine["gpus"][0] if machine["gpus"] and cfg.device == "cuda" else None))
    return {
        "model": cfg.model,
        "device": cfg.device,
        "started_utc": started.isoformat(timespec="seconds"),
        "wall_time_s": round(time.perf_counter() - t0, 1),
        "settings": {**cfg.settings.__dict__, "env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ},
                     "input": "one random batch resident on the device",
                     "spread": "min-max over repeats", "optimizer": "SGD lr 0.1, momentum 0.9, weight decay 1e-4"},
        "machine": machine,
        "frameworks": frameworks,
        "baseline": "/".join(BASELINE),
        "rows": rows,
    }


# Report ---------------------------------------------------------------------------------------
def _cell(metric: Any, digits: int = 1) -> str:
    if metric is None:
        return "n/a"
    if not is_measured(metric):
        return "failed"
    return f"{metric['median']:,.{digits}f} ({metric['min']:,.{digits}f}–{metric['max']:,.{digits}f})"


def _ratio_cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _variant_label(row: dict[str, Any]) -> str:
    return f"{row['variant']} ({row['provider']})" if row.get("provider") else row["variant"]


def markdown_table(report: dict[str, Any]) -> str:
    """The per-row table: medians with their min–max spread, ratios to PyTorch eager, failure reasons."""
    head = ("| Framework | Variant | Train img/s | Infer img/s | Batch-1 latency ms | Train × eager "
            "| Infer × eager | Compile / first calls s | Steps per block (train, infer) | Note |")
    lines = [head, "|" + "---|" * 10]
    for row in report["rows"]:
        first = row.get("first_call_s") or {}
        steps = row.get("steps") or {}
        note = f"failed: {row['error']}" if row.get("error") else ""
        lines.append("| " + " | ".join([
            row["framework"], _variant_label(row), _cell(row.get("train")), _cell(row.get("infer")),
            _cell(row.get("latency_ms"), 2), _ratio_cell(row["ratio"]["train"]), _ratio_cell(row["ratio"]["infer"]),
            f"{sum(first.values()):.1f}" if first else "—",
            ", ".join(str(steps.get(m, "—")) for m in ("train", "infer")) if steps else "—",
            note.replace("|", "\\|"),
        ]) + " |")
    return "\n".join(lines)


def _load(values: list[float] | None) -> str:
    return "/".join(f"{v:.1f}" for v in values) if values else "unknown"


def markdown_report(report: dict[str, Any]) -> str:
    """The whole Markdown report: machine, versions, settings, the table and what each variant is."""
    m, s = report["machine"], report["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    gpu = m.get("gpu") or "none"
    out = [
        f"# Benchmark: {report['model']} on {report['device']}",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, GPU: {gpu}; {m['os']}; load average (1/5/15 min) "
        f"{_load(m['load_average']['start'])} at the start, {_load(m['load_average']['end'])} at the end",
        f"- Versions: {versions}",
        f"- Settings: batch {s['batch_size']}, {s['iters']} batches per timed block or more, to last at least "
        f"{s.get('min_time', 0):g} s (the steps each block timed are in the table), {s['repeats']} repeats "
        f"after {s['warmup']} warm-up call(s), batch-1 latency over {s['latency_iters']} calls per repeat; "
        f"{s['input']}; {s['optimizer']}; threading environment: "
        f"{', '.join(f'{k}={v}' for k, v in s['env'].items()) or 'library defaults'}",
        f"- Started {report['started_utc']}, took {report['wall_time_s']:.0f} s; git {m.get('git_commit')}",
        "",
        "Figures: median over repeats (min–max in brackets). Ratios: row median / PyTorch eager median "
        "(>1 is faster). First calls: seconds of the first training, inference and batch-1 call "
        "(tracing/compilation), not included in the figures.",
        "",
        markdown_table(report),
        "",
        "Variants:",
        "",
    ]
    seen = set()
    for row in report["rows"]:
        key = (row["framework"], row["variant"])
        if key not in seen and row.get("description"):
            seen.add(key)
            out.append(f"- {row['framework']} {row['variant']}: {row['description']}")
    return "\n".join(out) + "\n"


def report_paths(out: str | os.PathLike, model: str, device: str) -> tuple[Path, Path]:
    """``<out>/bench-<model>-<device>.md`` and ``.json``."""
    base = Path(out) / f"bench-{model}-{device}"
    return base.with_suffix(".md"), base.with_suffix(".json")


def write_report(report: dict[str, Any], out: str | os.PathLike) -> tuple[Path, Path]:
    """Write the Markdown and JSON reports atomically; return their paths."""
    md, js = report_paths(out, report["model"], report["device"])
    atomic_write_json(js, report)
    atomic_write_text(md, markdown_report(report))
    return md, js


_ALL_VARIANTS = "; ".join(f"{k}: {', '.join(v)}" for k, v in VARIANTS.items())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shared.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet20", help="registry name, e.g. resnet20, resnet50")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available, else cpu)")
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    p.add_argument("--iters", type=int, default=DEFAULTS["iters"], help="batches per timed block")
    p.add_argument("--repeats", type=int, default=DEFAULTS["repeats"], help="timed blocks per figure")
    p.add_argument("--warmup", type=int, default=DEFAULTS["warmup"], help="untimed calls before timing")
    p.add_argument("--latency-iters", type=int, default=DEFAULTS["latency_iters"],
                   help="batch-1 calls per timed block")
    p.add_argument("--min-time", type=float, default=MIN_TIME,
                   help="seconds a timed throughput block lasts at least (more steps than --iters if needed; 0: off)")
    p.add_argument("--variants", default="all",
                   help="comma-separated framework or framework:variant, e.g. torch,keras:graph "
                        f"(default all: {_ALL_VARIANTS})")
    p.add_argument("--out", default="results/bench", help="folder for bench-<model>-<device>.md/.json")
    p.add_argument("--timeout", type=float, default=None, help="seconds allowed per framework process")
    args = p.parse_args(argv)
    try:
        get_spec(args.model)
        settings = Settings(args.batch_size, args.iters, args.repeats, args.warmup, args.latency_iters, args.min_time)
        variants = parse_variants(args.variants)
        device, _ = resolve_device(args.device)
    except ValueError as e:
        p.error(str(e))
    cfg = BenchConfig(args.model, device, settings, variants, Path(args.out), args.timeout)
    print(f"bench {args.model} on {device}: batch {settings.batch_size}, {settings.iters} iters (or >= "
          f"{settings.min_time:g} s) x {settings.repeats} repeats", file=sys.stderr, flush=True)
    report = run_bench(cfg)
    md, js = write_report(report, cfg.out)
    print(markdown_table(report))
    print(f"\nwrote {md} and {js}")
    measured = any(is_measured(r.get(m)) for r in report["rows"] for m in METRICS)
    return 0 if measured else 1


if __name__ == "__main__":
    sys.exit(main())
