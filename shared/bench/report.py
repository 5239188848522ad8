"""The benchmark's Markdown and JSON report: machine and settings, the step table, the training loops with
their targets, and the profiles of the loops that miss one (docs/bench.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from shared.bench.catalog import LOOP_VARIANT
from shared.bench.flops import MATMUL_N, peak_gflops
from shared.bench.timing import is_measured
from shared.io import atomic_write_json, atomic_write_text
from shared.markdown import table


def _cell(metric: Any, digits: int = 1) -> str:
    if metric is None:
        return "n/a"
    if not is_measured(metric):
        return "failed"
    return f"{metric['median']:,.{digits}f} ({metric['min']:,.{digits}f}–{metric['max']:,.{digits}f})"


def _x(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _compute(row: dict[str, Any], metric: str) -> str:
    c = (row.get("compute") or {}).get(metric)
    if not c:
        return "—"
    return f"{c['gflops']:.1f}" + (f" ({c['pct_peak']:.0f}%)" if c["pct_peak"] is not None else "")


def _variant_label(row: dict[str, Any]) -> str:
    return f"{row['variant']} ({row['provider']})" if row.get("provider") else row["variant"]


def markdown_table(report: dict[str, Any]) -> str:
    """The per-row table: medians with their min–max spread, ratios to PyTorch eager, GFLOP/s, failures."""
    header = ("Framework", "Variant", "Train img/s", "Infer img/s", "Batch-1 latency ms", "Train × eager",
              "Infer × eager", "Train GFLOP/s (% peak)", "Infer GFLOP/s (% peak)", "Compile / first calls s",
              "Steps per block (train, infer)", "Note")
    body = []
    for row in report["rows"]:
        first, steps = row.get("first_call_s") or {}, row.get("steps") or {}
        body.append([
            row["framework"], _variant_label(row), _cell(row.get("train")), _cell(row.get("infer")),
            _cell(row.get("latency_ms"), 2), _x(row["ratio"]["train"]), _x(row["ratio"]["infer"]),
            _compute(row, "train"), _compute(row, "infer"), f"{sum(first.values()):.1f}" if first else "—",
            ", ".join(str(steps.get(m, "—")) for m in ("train", "infer")) if steps else "—",
            f"failed: {row['error']}" if row.get("error") else ""])
    return "\n".join(table(header, body, "llrrrrrrrrll"))


def loop_table(report: dict[str, Any]) -> str:
    """One row per training loop: its images/s, its step's, their ratio, GFLOP/s, and its ratio to PyTorch's."""
    loops, targets = report.get("loops") or {}, report["targets"]
    torch_loop = loops.get("torch", {})
    body = []
    for label, loop in loops.items():
        if not is_measured(loop):
            body.append([label, f"failed: {loop.get('error')}", "", "", "", "", ""])
            continue
        r = loop.get("ratio_to_step")
        miss = " (below target)" if r is not None and r < targets["loop_over_step"] else ""
        c = loop.get("compute")
        vs_torch = loop["median"] / torch_loop["median"] if is_measured(torch_loop) else None
        body.append([label, _cell(loop), f"{loop['step']:,.1f} ({LOOP_VARIANT[label]})" if loop.get("step") else "—",
                     _x(r) + miss, f"{c['gflops']:.1f} ({c['pct_peak']:.0f}%)" if c and c["pct_peak"] else "—",
                     _x(vs_torch), f"{loop['first_epoch_images_per_s']:,.1f}"])
    header = ("Training loop", "Loop img/s", "Its step img/s", "Loop / step", "GFLOP/s (% peak)", "× torch loop",
              "First epoch img/s")
    return "\n".join(table(header, body, "lrrrrrr"))


def profile_tables(report: dict[str, Any]) -> list[str]:
    """A table of the top cProfile entries for each loop that missed a target."""
    out: list[str] = []
    for label, prof in (report.get("profiles") or {}).items():
        out += ["", f"### Where the time goes: {label} training loop (cProfile, own time)", ""]
        if "error" in prof:
            out.append(f"Profile failed: {prof['error']}")
            continue
        body = [[e["function"], e["calls"], f"{e['own_s']:.2f}", f"{e['own_pct']:.1f}%", f"{e['cumulative_s']:.2f}"]
                for e in prof["entries"]]
        out += table(("Function", "Calls", "Own s", "Own share", "Cumulative s"), body, "lrrrr")
        out += ["", f"Total profiled time {prof['total_s']:.1f} s (the main thread; work that a library runs on "
                    "its own threads shows as the call that waits for it)."]
    return out


def _load(values: list[float] | None) -> str:
    return "/".join(f"{v:.1f}" for v in values) if values else "unknown"


def _summary_lines(report: dict[str, Any]) -> list[str]:
    best, targets, peak = report.get("best_keras_loop") or {}, report["targets"], peak_gflops(report.get("peak"))
    flops = report.get("flops") or {}
    lines = []
    if "forward" in flops:
        lines.append(f"- FLOPs per image (torch.utils.flop_counter): {flops['forward'] / 1e9:.3f} GFLOP forward, "
                     f"{flops['train'] / 1e9:.3f} GFLOP per training image (forward + backward).")
    elif flops:
        lines.append(f"- FLOP count failed: {flops.get('error')}")
    if peak:
        lines.append(f"- float32 matmul peak, {MATMUL_N}³ on the bench device in this run: {peak:,.1f} GFLOP/s "
                     "(the % column divides by it).")
    if best.get("ratio") is not None:
        ok = "meets" if best["ratio"] >= targets["best_keras_over_torch_loop"] else "misses"
        lines.append(f"- Best Keras training loop: {best['label']}, {best['ratio']:.2f}× the PyTorch loop "
                     f"({ok} the {targets['best_keras_over_torch_loop']}× target); each loop's target is "
                     f"{targets['loop_over_step']}× its own step.")
    return lines


def markdown_report(report: dict[str, Any]) -> str:
    """The whole Markdown report: machine, versions, settings, the tables and what each variant is."""
    m, s = report["machine"], report["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    out = [
        f"# Benchmark: {report['model']} on {report['device']}",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} CPU cores, GPU: {m.get('gpu') or 'none'}; {m['os']}; load average "
        f"(1/5/15 min) {_load(m['load_average']['start'])} at the start, {_load(m['load_average']['end'])} at the end",
        f"- Versions: {versions}",
        f"- Settings: batch {s['batch_size']}, {s['iters']} batches per timed block or more, to last at least "
        f"{s.get('min_time', 0):g} s (the steps each block timed are in the table), {s['repeats']} repeats "
        f"after {s['warmup']} warm-up call(s), batch-1 latency over {s['latency_iters']} calls per repeat; "
        f"{s['input']}; {s['optimizer']}; threading environment: "
        f"{', '.join(f'{k}={v}' for k, v in s['env'].items()) or 'library defaults'}",
        f"- Started {report['started_utc']}, took {report['wall_time_s']:.0f} s; git {m.get('git_commit')}",
        *_summary_lines(report),
        "",
        "## Steps",
        "",
        "Figures: median over repeats (min–max in brackets). Ratios: row median / PyTorch eager median "
        "(>1 is faster). First calls: seconds of the first training, inference and batch-1 call "
        "(tracing/compilation), not included in the figures.",
        "",
        markdown_table(report),
    ]
    if report.get("loops"):
        out += ["", "## Training loops", "",
                f"The real training script (`pytorch_impl.train` / `keras_impl.train`) on the synthetic set for "
                f"{s['loop_epochs']} epochs with its own input pipeline, augmentation, callbacks and run folder: "
                "images/s from its metrics.csv, median over the epochs after the first (which pays tracing and "
                "compilation), beside the step it runs (the first variant of its framework above).", "",
                loop_table(report), *profile_tables(report)]
    out += ["", "Variants:", ""]
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
