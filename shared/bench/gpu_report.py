"""The GPU report (``make gpu-report``): what each measured row adds up to (FLOP/s against the peak of its
precision, the GPU's busy share, the bound), the targets, and the Markdown and JSON files
``<out>/gpu-<device>.md`` / ``.json`` (docs/gpu.md)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from shared.bench import bound, timing
from shared.bench.gpu_plan import IMAGENET_MODEL
from shared.io import atomic_write_json, atomic_write_text
from shared.markdown import table

RESNET20_IMAGES_PER_S = 27_000  # ResNet-20's full recipe (8.2M images) in about 5 minutes
RESNET50_AMP_IMAGES_PER_S = 3_000  # at 224x224 on one H100 (NVIDIA publishes 2,470 on one A100 80GB)
AMP_VARIANTS = ("autocast", "amp_channels_last", "amp_compile", "mixed_precision")


def _measured(rows: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["kind"] == kind and r["status"] == "measured"]


def peaks_flops(rows: list[dict[str, Any]]) -> dict[str, float]:
    """FLOP/s of each measured matmul peak, by precision."""
    return {r["precision"]: r["peak"]["median"] for r in _measured(rows, "peak")}


def _flops_by_model(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["model"]: r["flops"] for r in _measured(rows, "step")
            if isinstance(r.get("flops"), dict) and "train" in r["flops"]}


def verdict_inputs(step: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The arguments of :func:`bound.verdict` for a measured step row of a report's ``rows`` (its time, GPU-busy
    time, FLOPs and the peak of its precision); a loop adds its own ``loop_over_step``."""
    return _step_figures(step, _flops_by_model(rows).get(step["model"]), peaks_flops(rows))[1]


def derive(rows: list[dict[str, Any]]) -> None:
    """Add ``compute`` (FLOP/s and % of the precision's peak), ``busy_share`` and ``verdict`` to every measured
    step and loop row, and ``loop_over_step`` to the loops (each against its own step row)."""
    peaks, flops = peaks_flops(rows), _flops_by_model(rows)
    steps = {(r["framework"], r["model"], r["variant"]): r for r in _measured(rows, "step")}
    for row in _measured(rows, "step"):
        figures, _ = _step_figures(row, flops.get(row["model"]), peaks)
        row.update(figures)
    for row in _measured(rows, "loop"):  # a loop's step is its framework's row of the same variant
        step = steps.get((row["framework"], row["model"], row["variant"]))
        ratio = (row["loop"]["median"] / step["train"]["median"]
                 if step and timing.is_measured(step.get("train")) else None)
        _, inputs = _step_figures(step, flops.get(row["model"]), peaks) if step else ({}, {})
        per_image = (flops.get(row["model"]) or {}).get("train")
        row["loop_over_step"] = ratio
        row["compute"] = _compute(row["loop"]["median"], per_image, peaks.get(row["precision"]))
        row["verdict"] = bound.verdict(loop_over_step=ratio, **inputs)


def _compute(images_per_s: float, per_image: float | None, peak: float | None) -> dict[str, float | None] | None:
    if not per_image:
        return None
    achieved = images_per_s * per_image
    return {"flops": achieved, "pct_peak": 100 * achieved / peak if peak else None}


def _step_figures(row: dict[str, Any], flops: dict[str, Any] | None,
                  peaks: dict[str, float]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A step row's derived figures, and the inputs of its verdict (which its loop's verdict reuses)."""
    train = row.get("train")
    if not timing.is_measured(train):
        return {"verdict": {"bound": None, "why": "no training figure"}}, {}
    per_image = (flops or {}).get("train")
    step_s = row["batch_size"] / train["median"]
    busy = row.get("busy") if isinstance(row.get("busy"), dict) and "busy_s_per_step" in row["busy"] else None
    inputs = {"step_s": step_s, "busy_s": busy["busy_s_per_step"] if busy else None,
              "flop_per_step": per_image * row["batch_size"] if per_image else None,
              "peak_flops": peaks.get(row["precision"]), "peak_name": row["precision"]}
    return {"compute": _compute(train["median"], per_image, peaks.get(row["precision"])),
            "busy_share": busy["busy_s_per_step"] / step_s if busy else None,
            "verdict": bound.verdict(**inputs)}, inputs


def targets(rows: list[dict[str, Any]], device: str) -> list[dict[str, Any]]:
    """The issue's targets against the best measured row of each (None where nothing was measured)."""
    loops = [r for r in _measured(rows, "loop") if r["framework"] == "torch" and r["model"] == "resnet20"]
    amp50 = [r for r in _measured(rows, "step") if r["framework"] == "torch" and r["model"] == IMAGENET_MODEL
             and r["variant"] in AMP_VARIANTS and timing.is_measured(r.get("train"))]
    syncs = _measured(rows, "syncs")
    best_loop = max(loops, key=lambda r: r["loop"]["with_eval"]["median"], default=None)
    best_amp = max(amp50, key=lambda r: r["train"]["median"], default=None)
    batch50 = next((r["batch_size"] for r in rows if r.get("model") == IMAGENET_MODEL and r["kind"] == "step"), None)
    out = [
        _target("ResNet-20 real training loop incl. data and evaluation (steady state; the full run times the "
                "whole recipe)", best_loop, best_loop and best_loop["loop"]["with_eval"]["median"],
                RESNET20_IMAGES_PER_S, "img/s", device),
        _target(f"ResNet-50 training at 224x224 with AMP (batch {batch50})",
                best_amp, best_amp and best_amp["train"]["median"], RESNET50_AMP_IMAGES_PER_S, "img/s", device),
    ]
    worst = max(syncs, key=lambda r: r["syncs"]["unplanned"], default=None)
    every = f"every {worst['syncs']['check_every']} steps" if worst else "every few steps"
    sync = {"target": f"No host synchronisation per training step beyond the trainer's planned read {every} "
                      "(steady state)",
            "row": worst and worst["id"], "goal": 0, "unit": "unplanned syncs per step",
            "measured": worst and worst["syncs"]["unplanned"] / worst["syncs"]["steps"]}
    sync["met"] = None if worst is None else worst["syncs"]["unplanned"] == 0
    sync["why"] = "" if not worst or sync["met"] else (
        f"{worst['syncs']['unplanned']} syncs in {worst['syncs']['steps']} steady steps (histogram "
        f"{worst['syncs']['histogram']})")
    return [*out, sync]


def _target(name: str, row: dict[str, Any] | None, value: float | None, goal: float, unit: str,
            device: str) -> dict[str, Any]:
    if row is None:
        return {"target": name, "row": None, "goal": goal, "unit": unit, "measured": None, "met": None, "why": ""}
    met = value >= goal if device == "cuda" else None  # a CPU figure is not held to a GPU target
    why = "" if met is not False else (row.get("verdict") or {}).get("why", "")
    bound_name = (row.get("verdict") or {}).get("bound")
    return {"target": name, "row": row["id"], "goal": goal, "unit": unit, "measured": value, "met": met,
            "bound": bound_name, "why": f"{bound_name}: {why}" if bound_name and why else why}


# Markdown ---------------------------------------------------------------------------------------------------
def _num(value: float) -> str:
    """Thousands separated from 100 up, three significant digits below (CPU figures are small)."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _fig(metric: Any, cpu: bool) -> str:
    if not timing.is_measured(metric):
        return "—"
    text = f"{_num(metric['median'])} ({_num(metric['min'])}–{_num(metric['max'])})"
    return f"{text} CPU" if cpu else text


def _status(row: dict[str, Any] | None) -> str:
    if row is None:
        return ""
    if row["status"] == "measured":
        return f"measured; {row['reason']}" if row.get("reason") else "measured"
    return f"{row['status']}: {row['reason']}"


def _tflops(row: dict[str, Any] | None, cpu: bool) -> str:
    c = (row or {}).get("compute")
    if not c:
        return "—"
    pct = f" ({c['pct_peak']:.0f}% {row['precision']})" if c.get("pct_peak") is not None else ""
    return f"{_num(c['flops'] / 1e12)}{pct}{' CPU' if cpu else ''}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.0f}%"


def _bound(row: dict[str, Any] | None) -> str:
    return ((row or {}).get("verdict") or {}).get("bound") or "—"


def _kernels(row: dict[str, Any] | None) -> str:
    busy = (row or {}).get("busy")
    if isinstance(busy, dict) and "kernels_per_step" in busy:
        return f"{busy['kernels_per_step']:.0f}"
    return f"failed: {busy['error']}" if isinstance(busy, dict) and "error" in busy else "—"


def _index(rows: list[dict[str, Any]], kind: str) -> dict[tuple, dict[str, Any]]:
    return {(r["framework"], r["model"], r["variant"]): r for r in rows if r["kind"] == kind}


def training_table(report: dict[str, Any], models: list[str], framework: str = "torch") -> list[str]:
    """One line per model and variant: its step, its real loop and what limits it."""
    cpu, rows = report["cpu"], report["rows"]
    steps, loops = _index(rows, "step"), _index(rows, "loop")
    keys = [k for k in dict.fromkeys([*steps, *loops]) if k[0] == framework and k[1] in models]
    body = []
    for key in keys:
        step, loop = steps.get(key), loops.get(key)
        lp = (loop or {}).get("loop")
        ratio = (loop or {}).get("loop_over_step")
        body.append([key[1], key[2], _fig((step or {}).get("train"), cpu), _fig(lp, cpu),
                     _fig((lp or {}).get("with_eval"), cpu), "—" if ratio is None else f"{ratio:.2f}×",
                     _tflops(step, cpu), _pct((step or {}).get("busy_share")), _kernels(step),
                     _bound(loop if loop and loop.get("verdict") else step),
                     "; ".join(f"{k}: {_status(r)}" for k, r in (("step", step), ("loop", loop)) if r)])
    header = ("Model", "Variant", "Step img/s", "Loop img/s", "Loop incl. eval img/s", "Loop / step",
              "Step TFLOP/s (% peak)", "GPU busy", "Kernels / step", "Bound", "Status")
    return table(header, body, "llrrrrrrrll")


def imagenet_table(report: dict[str, Any]) -> list[str]:
    cpu = report["cpu"]
    body = [[r["variant"], r["batch_size"], _fig(r.get("train"), cpu), _fig(r.get("infer"), cpu), _tflops(r, cpu),
             _pct(r.get("busy_share")), _kernels(r), _bound(r), _status(r)]
            for r in report["rows"] if r["kind"] == "step" and r["model"] == IMAGENET_MODEL]
    header = ("Variant", "Batch", "Train img/s", "Infer img/s", "Train TFLOP/s (% peak)", "GPU busy",
              "Kernels / step", "Bound", "Status")
    return table(header, body, "lrrrrrrll")


def peaks_table(report: dict[str, Any]) -> list[str]:
    cpu = report["cpu"]
    body = []
    for r in (r for r in report["rows"] if r["kind"] == "peak"):
        peak = r.get("peak")
        tflops = {k: peak[k] / 1e12 for k in ("median", "min", "max")} if timing.is_measured(peak) else None
        body.append([r["precision"], peak.get("n", "—") if peak else "—", _fig(tflops, cpu), _status(r)])
    return table(("Precision", "n (n×n×n matmul)", "TFLOP/s", "Status"), body, "lrrl")


def syncs_table(report: dict[str, Any]) -> list[str]:
    body = []
    for r in (r for r in report["rows"] if r["kind"] == "syncs"):
        s = r.get("syncs")
        body.append([r["model"], r["variant"], s["steps"] if s else "—", s["syncs"] if s else "—",
                     f"{s['per_step']:.3f}" if s else "—", s["planned"] if s else "—", s["unplanned"] if s else "—",
                     ", ".join(f"{k}: {v}" for k, v in s["histogram"].items()) if s else "—", _status(r)])
    header = ("Model", "Variant", "Steady steps", "Syncs", "Per step", "Planned reads", "Unplanned",
              "Steps by syncs (syncs: steps)", "Status")
    return table(header, body, "llrrrrrll")


def onnxruntime_table(report: dict[str, Any]) -> list[str]:
    cpu = report["cpu"]
    body = [[r["model"], r["provider"], r["batch_size"], _fig(r.get("infer"), cpu), _status(r)]
            for r in report["rows"] if r["framework"] == "onnxruntime"]
    return table(("Model", "Provider", "Batch", "Infer img/s", "Status"), body, "llrrl")


def targets_table(report: dict[str, Any]) -> list[str]:
    body = []
    for t in report["targets"]:
        value = "—" if t["measured"] is None else f"{t['measured']:,.{0 if t['goal'] else 3}f} {t['unit']}"
        verdict = {True: "met", False: "missed", None: "not measured" if t["measured"] is None else
                   "CPU figure: not held to the GPU target"}[t["met"]]
        goal = f"≥ {t['goal']:,} {t['unit']}" if t["goal"] else f"{t['goal']} {t['unit']}"
        body.append([t["target"], goal, value + (" CPU" if report["cpu"] and t["measured"] is not None else ""),
                     verdict, t.get("why", "")])
    return table(("Target", "Goal", "Measured", "Verdict", "Why (profile)"), body, "lrrll")


def _header(report: dict[str, Any]) -> list[str]:
    d, m, s = report["device"], report["machine"], report["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    if report["cpu"]:
        lines = ["# GPU report, run on the CPU (every figure here is a CPU figure, marked CPU)", "",
                 "- Device: **CPU**. This file checks that the command runs end to end; its figures say nothing "
                 "about a GPU."]
    else:
        p = d.get("properties") or {}
        lines = [f"# GPU report: {d['name']}", "",
                 f"- Device: {d['name']}, driver {d.get('driver') or 'unknown'}, CUDA {d.get('cuda')}, cuDNN "
                 f"{d.get('cudnn')}, compute capability {p.get('capability', '?')}, {p.get('memory_gib', '?')} GiB, "
                 f"{p.get('multiprocessors', '?')} SMs"]
    ran = sum(r["status"] == "measured" for r in report["rows"])
    lines += [
        f"- Host: {m['cpu']}, {m['cores']} CPU cores; {m['os']}; `{m['python_executable']}` is `python` in the "
        "commands below",
        f"- Versions: {versions}",
        f"- Budget {report['budget_s']:.0f} s, took {report['wall_s']:.0f} s; {ran} of {len(report['rows'])} rows "
        f"measured; started {report['started_utc']}; git {m.get('git_commit')}",
        f"- Steps: batch {s['batch_size']} (CIFAR models) and {s['imagenet_batch_size']} ({IMAGENET_MODEL} at 224), "
        f"one random batch resident on the device, blocks of {s['iters']}+ steps lasting at least {s['min_time']:g} s, "
        f"median (min–max) over {s['repeats']} repeats after {s['warmup']} warm-up calls",
        f"- Loops: the real trainers for {s['loop_epochs']} epochs on **{s['dataset']} (SYNTHETIC data"
        f"{', the size of prepared CIFAR-10' if s['dataset'] == 'synthetic_cifar' else ''})**, median over the "
        "epochs after the first; incl. eval = training images over training + validation seconds",
        "- Bound: from the step's GPU-busy share (torch.profiler), its FLOP/s against the peak of its precision, and "
        "the loop's speed against its step's (the rule: docs/gpu.md)",
    ]
    return lines


def markdown_report(report: dict[str, Any]) -> str:
    """The whole report: device and versions, targets, then one table per kind of row, then every command."""
    cifar = list(report["settings"]["models"])
    out = [*_header(report), "", "## Targets", "", *targets_table(report),
           "", "## Matmul peaks (the % columns divide by the row's precision)", "", *peaks_table(report),
           "", f"## Training, CIFAR models (batch {report['settings']['batch_size']})", "",
           *training_table(report, cifar),
           "", f"## {IMAGENET_MODEL} at 224x224", "", *imagenet_table(report)]
    keras = [fw for fw in dict.fromkeys(r["framework"] for r in report["rows"]) if fw.startswith("keras-")]
    for fw in keras:
        out += ["", f"## Keras on {fw.removeprefix('keras-')} ({cifar[0]})", "", *training_table(report, cifar, fw)]
    out += ["", "## Host synchronisations per training step (sync debug mode \"warn\")", "", *syncs_table(report),
            "", "## ONNX Runtime", "", *onnxruntime_table(report)]
    not_run = [r for r in report["rows"] if r["status"] != "measured"]
    if not_run:
        out += ["", "## Not measured", ""] + [f"- `{r['id']}`: {r['status']}: {r['reason']}" for r in not_run]
    out += ["", "## Commands", ""] + [f"- `{r['id']}`: `{r['command']}`" for r in report["rows"] if r.get("command")]
    return "\n".join(out) + "\n"


def report_paths(out: str | os.PathLike, label: str) -> tuple[Path, Path]:
    """``<out>/gpu-<device label>.md`` and ``.json``."""
    base = Path(out) / f"gpu-{label}"
    return base.with_suffix(".md"), base.with_suffix(".json")


def write_report(report: dict[str, Any], out: str | os.PathLike) -> tuple[Path, Path]:
    """Write the Markdown and JSON reports atomically; return their paths."""
    md, js = report_paths(out, report["device"]["label"])
    atomic_write_json(js, report)
    atomic_write_text(md, markdown_report(report))
    return md, js
