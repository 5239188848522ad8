"""The framework side of the benchmark: what a framework process hands the timing loop (:class:`Workload`), and the
``main`` of ``pytorch_impl.bench``, ``keras_impl.bench`` and ``export.bench_ort`` (docs/bench.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from shared import errors
from shared.bench.catalog import VARIANTS
from shared.bench.timing import (
    DEFAULTS,
    MIN_TIME,
    TimingPlan,
    first_line,
    is_measured,
    summarize,
    time_latency,
    time_throughput,
)
from shared.io import atomic_write_json
from shared.spec import get_spec

DEVICES = ("cpu", "cuda")
METRICS = ("train", "infer", "latency_ms")


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
    # The device's busy time during training steps (PyTorch on CUDA: torch.profiler), where it can be read
    busy: Callable[[], dict[str, Any]] | None = None


def measure_workload(build: Callable[[], Workload], settings: TimingPlan,
                     metrics: Iterable[str] = METRICS) -> dict[str, Any]:
    """Build one variant and time its figures (``metrics``, default all three); every failure is caught and
    kept as a reason.

    Returns ``{"train", "infer", "latency_ms"}`` (each a summary, ``{"error": reason}`` or None
    when not applicable or not asked for), ``first_call_s`` and ``steps`` per figure, ``error`` (the first
    failure, if any), the workload's ``info``, and ``busy`` when the workload can read its device's busy time.
    """
    metrics = tuple(metrics)
    row: dict[str, Any] = {m: None for m in METRICS}
    row.update(first_call_s={}, steps={}, error=None)
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
            if step is None or metric not in metrics:
                continue
            try:
                values, first, steps = timer(step)
                row[metric] = summarize(values)
                row["first_call_s"][metric] = first
                row["steps"][metric] = steps
            except Exception as e:  # e.g. an XLA or inductor failure on this device: report it
                row[metric] = {"error": first_line(e)}
                row["error"] = row["error"] or row[metric]["error"]
        if work.busy is not None and is_measured(row["train"]):
            try:
                row["busy"] = work.busy()
            except Exception as e:  # a profiler that cannot start: the figures stand without it
                row["busy"] = {"error": first_line(e)}
    finally:
        work.cleanup()
    return row


def brief(row: dict[str, Any]) -> str:
    """One line of a row's figures, for the progress output."""
    parts = []
    for metric, unit in (("train", "img/s train"), ("infer", "img/s infer"), ("latency_ms", "ms batch-1")):
        m = row.get(metric)
        if is_measured(m):
            parts.append(f"{m['median']:.4g} {unit}")
        elif isinstance(m, dict):
            parts.append(f"{metric} failed ({m['error']})")
    return ", ".join(parts) or "nothing measured"


def run_variants(framework: str, variants: Iterable[str], build: Callable[[str], Workload],
                 settings: TimingPlan, json_out: str | os.PathLike, header: dict[str, Any],
                 metrics: Iterable[str] = METRICS) -> dict[str, Any]:
    """Measure each variant in turn, rewriting ``json_out`` after each so a crash keeps what was done."""
    from tqdm import tqdm

    result = {**header, "framework": framework, "rows": []}
    variants = list(variants)
    bar = tqdm(variants, desc=f"bench {framework}", unit="variant", file=sys.stderr, dynamic_ncols=True)
    for variant in bar:
        bar.set_postfix_str(variant)
        row = {"framework": framework, "variant": variant,
               **measure_workload(lambda v=variant: build(v), settings, metrics)}
        result["rows"].append(row)
        bar.write(f"  {framework} {variant}: {brief(row)}", file=sys.stderr)
        atomic_write_json(json_out, result)
    atomic_write_json(json_out, result)
    return result


def worker_parser(prog: str, framework: str) -> argparse.ArgumentParser:
    """The command line of a framework's benchmark process (``shared.bench`` starts it)."""
    p = errors.ArgumentParser(prog=prog, description=f"Benchmark the {framework} variants of one model.")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--device", choices=DEVICES, default="cpu")
    p.add_argument("--variants", default=",".join(VARIANTS[framework]),
                   help=f"comma-separated subset of: {', '.join(VARIANTS[framework])} (empty: none)")
    for name, default in DEFAULTS.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    p.add_argument("--min-time", type=float, default=MIN_TIME, help="seconds per timed block, at least")
    p.add_argument("--metrics", default=",".join(METRICS), help=f"comma-separated subset of: {', '.join(METRICS)}")
    p.add_argument("--json-out", required=True, help="where to write the measurements (JSON)")
    return p


def parse_worker_args(parser: argparse.ArgumentParser, framework: str,
                      argv: list[str] | None) -> tuple[argparse.Namespace, TimingPlan, list[str]]:
    """Parse and validate a framework process's arguments (user errors exit 2 with one line)."""
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS[framework]:
            raise errors.UserError(f"unknown {framework} variant {v!r}; valid choices: "
                                   f"{', '.join(VARIANTS[framework])}")
    args.metrics = tuple(m for m in args.metrics.split(",") if m)
    for m in args.metrics:
        if m not in METRICS:
            raise errors.UserError(f"unknown metric {m!r}; valid choices: {', '.join(METRICS)}")
    try:
        get_spec(args.model)
        settings = TimingPlan(**{k: getattr(args, k) for k in DEFAULTS}, min_time=args.min_time)
    except ValueError as e:
        raise errors.UserError(str(e)) from None
    return args, settings, variants


def worker_main(framework: str, prog: str, argv: list[str] | None, *, check_device: Callable[[str], Any],
                build_workload: Callable[..., Workload], export_for_ort: Callable[..., dict[str, Any]],
                framework_info: Callable[[str], dict[str, Any]],
                extras: dict[str, tuple[str, Callable[..., Any]]] | None = None) -> int:
    """The ``main`` of a framework's benchmark process: measure the variants, then export if asked.

    ``extras`` maps a flag (``--flops``) to (help, ``fn(spec, args, settings)``), whose result is stored
    under the flag's name in the JSON (PyTorch counts FLOPs and times the float32 matmul peak this way).
    """
    parser = worker_parser(prog, framework)
    parser.add_argument("--onnx", default=None, help="also export the model here for ONNX Runtime")
    for flag, (text, _) in (extras or {}).items():
        parser.add_argument(f"--{flag}", action="store_true", help=text)
    args, settings, variants = parse_worker_args(parser, framework, argv)
    try:
        check_device(args.device)
    except RuntimeError as e:
        raise errors.UserError(str(e)) from None
    spec = get_spec(args.model)
    result = run_variants(framework, variants, lambda v: build_workload(spec, v, settings.batch_size, args.device),
                          settings, args.json_out, framework_info(args.device), args.metrics)
    for flag, (_, fn) in (extras or {}).items():
        if getattr(args, flag):
            try:
                result[flag] = fn(spec, args, settings)
            except Exception as e:  # reported, never fatal to the rows already measured
                result[flag] = {"error": first_line(e)}
            atomic_write_json(args.json_out, result)
    if args.onnx:
        print(f"  exporting {spec.name} from {framework} to ONNX for onnxruntime ...", file=sys.stderr, flush=True)
        result["onnx"] = export_for_ort(spec, args.onnx)
        atomic_write_json(args.json_out, result)
    return 0
