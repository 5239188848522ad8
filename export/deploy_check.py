"""``make deploy-check``: one run's exports, in every format, run in every runtime that can load them (docs/export.md).

    python -m export.deploy_check --run RUN [--sources torch,keras-tensorflow] [--formats onnx,pt2,...]
                                  [--opsets 18,17] [--runtimes onnxruntime,...] [--data-dir data] [--limit N]
                                  [--out DIR] [--no-speed] [--logits-dir DIR]

Exits 1 when a float32 cell disagrees with its native model beyond the bar. Imports neither framework.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from export.onnx_export import source_args
from export.parity import compare, evaluation_set
from export.runtimes import PROCESSES, RUNTIMES, can_load
from shared import errors, process
from shared.backends import split_label
from shared.bench.catalog import TRAINING as SOURCE_LABELS
from shared.export_meta import DEFAULT_OPSET, FORMATS, check_format, check_opset
from shared.export_source import Source, resolve_source
from shared.io import atomic_write_json, atomic_write_text, check_writable
from shared.machine import cpu_flags, machine_info
from shared.markdown import table

DEFAULT_SOURCES = ("torch", "keras-tensorflow")
DEFAULT_OPSETS = (DEFAULT_OPSET, 17)
# Within one exporting process, the formats that run torch.export come first: on the Keras torch backend,
# Keras' OpenVINO export imports tensorflow, after which torch.export would crash the process.
EXPORT_ORDER = ("pt2", "onnx", "openvino", "saved_model", "litert")


def parse_source(label: str) -> tuple[str, str | None]:
    """``torch`` -> (torch, None); ``keras-jax`` -> (keras, jax); a one-line error for anything else."""
    if label not in SOURCE_LABELS:
        raise errors.UserError(f"unknown source {label!r}; valid choices: {', '.join(SOURCE_LABELS)}")
    return split_label(label)


def parse_list(text: str | None, default: tuple[str, ...], valid: tuple[str, ...], what: str) -> tuple[str, ...]:
    """A comma list checked against ``valid`` (``all`` or empty: ``default``)."""
    if not text or text == "all":
        return default
    items = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in items if t not in valid]
    if bad:
        raise errors.UserError(f"unknown {what} {bad[0]!r}; valid choices: {', '.join(valid)}")
    return items


def file_label(fmt: str, opset: int | None) -> str:
    return f"onnx (opset {opset})" if fmt == "onnx" else fmt


def planned_files(run_dir: Path, label: str, formats: tuple[str, ...], opsets: tuple[int, ...]) -> list[dict[str, Any]]:
    """The files ``label`` writes: one per format it has a route to (ONNX once per opset), or a no-route entry."""
    framework, backend = parse_source(label)
    folder = run_dir / "deploy" / label
    files = []
    for fmt in sorted(formats, key=EXPORT_ORDER.index):
        spec = FORMATS[fmt]
        routes = spec.routes.get(framework, ())
        for opset in (opsets if fmt == "onnx" else (None,)):
            entry = {"source": label, "format": fmt, "opset": opset, "label": file_label(fmt, opset)}
            if framework == "keras" and backend not in routes or not routes:
                writers = ", ".join(f"{fw} ({'/'.join(b)})" if fw == "keras" else fw for fw, b in spec.routes.items())
                entry["error"] = f"no route: {fmt} is written by {writers}"
            else:
                name = f"model.opset{opset}.onnx" if fmt == "onnx" else f"model{spec.suffix}"
                entry["path"] = str(folder / name)
            files.append(entry)
    return files


def export_files(run: str, source: Source, label: str, files: list[dict[str, Any]]) -> None:
    """Write the files of ``label`` that are missing or older than the weights, in one process of its framework;
    each entry gains ``error`` (the exporter's one-line reason) or ``exported`` (True when written now)."""
    framework, backend = parse_source(label)
    weights_time = source.weights.stat().st_mtime if source.weights else 0.0
    todo = [f for f in files if "path" in f and (not Path(f["path"]).exists()
                                                  or Path(f["path"]).stat().st_mtime < weights_time)]
    for f in files:
        f.setdefault("exported", False)
    if not todo:
        return
    targets = [a for f in todo for a in ("--to", f"{f['format']}{':' + str(f['opset']) if f['opset'] else ''}="
                                                   f"{f['path']}")]
    env = {"KERAS_BACKEND": backend} if backend else {}
    print(f"exporting {label}: {', '.join(f['label'] for f in todo)}", file=sys.stderr, flush=True)
    try:
        stdout = process.call(framework, "export", "export", *source_args(run, None), *targets, **env)
    except process.ChildError as e:
        for f in todo:
            f["error"] = f"export failed: {e}"
        return
    done = {(r["format"], r["opset"]): r for r in map(json.loads, stdout.strip().splitlines())}
    for f in todo:
        r = done.get((f["format"], f["opset"]), {"error": "the exporter printed no result"})
        if "error" in r:
            f["error"] = f"export failed: {r['error']}"
        else:
            f["exported"] = True


def native_logits(run: str, label: str, x_path: Path, out: Path) -> np.ndarray:
    """The native model's logits for ``x_path`` (normalized NHWC), computed by ``label`` in its own process."""
    framework, backend = parse_source(label)
    process.call(framework, "export", "predict", "--run", run, "--inputs", x_path, "--logits", out,
                 **({"KERAS_BACKEND": backend} if backend else {}))
    return np.load(out)


def plan_cells(files: list[dict[str, Any]], runtimes: tuple[str, ...], n: int) -> tuple[list[dict], list[dict]]:
    """(cells to run, cells that cannot: not installed) for every exported file x every runtime that loads it."""
    from shared.export_meta import LAYOUTS

    cells, skipped = [], []
    for i, f in enumerate(files):
        if "error" in f:
            continue
        for name in runtimes:
            runtime = RUNTIMES[name]
            if not can_load(runtime, f["format"]):
                continue
            cell = {"id": f"c{i}-{name}", "file_index": i, "runtime": name, "file": f["path"], "format": f["format"],
                    "source": f["source"], "label": f"{f['source']} {f['label']}",
                    "layout": LAYOUTS[parse_source(f["source"])[0]], "n": min(n, runtime.max_images or n)}
            if runtime.installed:
                cells.append(cell)
            else:
                skipped.append({**cell, "load": "not installed", "reason": runtime.not_installed()})
    return cells, skipped


def run_workers(cells: list[dict[str, Any]], x_path: Path, tmp: Path, logits_dir: Path, speed: bool
                ) -> dict[str, dict[str, Any]]:
    """Every cell's result by id: one worker process per process kind (``export/runtimes.py``)."""
    results: dict[str, dict[str, Any]] = {}
    for kind in PROCESSES:
        mine = [c for c in cells if RUNTIMES[c["runtime"]].process == kind]
        if not mine:
            continue
        plan, out = tmp / f"plan-{kind}.json", tmp / f"results-{kind}.json"
        plan.write_text(json.dumps({"inputs": str(x_path), "cells": mine, "logits_dir": str(logits_dir),
                                    "speed": speed}))
        print(f"runtimes ({kind} process): {len(mine)} cells", file=sys.stderr, flush=True)
        done = process.run([sys.executable, "-m", "export.runtimes", "--plan", plan, "--out", out],
                           env=process.child_env(keras=False))
        for r in json.loads(out.read_text()) if out.is_file() else []:
            results[r["id"]] = r
        for c in mine:  # a worker that died (a runtime crashing the interpreter) leaves its later cells unrun
            results.setdefault(c["id"], {"id": c["id"], "load": "error",
                                         "reason": f"worker died before this cell: {done.reason()}"})
    return results


def score(cell: dict[str, Any], result: dict[str, Any], native: np.ndarray, y: np.ndarray,
          logits_dir: Path) -> dict[str, Any]:
    """A cell's row: its load/run status or reason, and its agreement with the native model."""
    row = {k: cell[k] for k in ("source", "format", "runtime", "file", "n")}
    row.update(file_index=cell["file_index"], load=result.get("load"), reason=result.get("reason"),
               info=result.get("info", {}), speed=result.get("speed"))
    if result.get("load") == "ok" and result.get("run") == "ok":
        logits = np.load(logits_dir / f"{cell['id']}.npy")
        row["agreement"] = compare(native[: cell["n"]], logits, y[: cell["n"]])
        hint = row["info"].get("precision_hint")
        row["float32"] = hint in (None, "f32")
        row["ok"] = bool(row["agreement"]["within_tolerance"] and row["agreement"]["top1_agreement_pct"] == 100.0)
    elif result.get("load") == "ok":
        row["load"] = "run failed"
    return row


def opset_summary(rows: list[dict[str, Any]], files: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """For each runtime that reads ONNX: per opset, ``ok`` when every source's file loaded and agreed, else the
    first reason (the matrix's own evidence for the opset advice)."""
    out: dict[str, dict[str, str]] = {}
    for r in rows:
        f = files[r["file_index"]]
        if r["format"] != "onnx" or r["load"] == "not installed":
            continue
        verdict = "ok" if r.get("ok") or (r.get("agreement") and not r.get("float32")) else (
            r.get("reason") or "disagrees with the native model")
        per = out.setdefault(r["runtime"], {})
        key = str(f["opset"])
        if per.get(key, "ok") == "ok":
            per[key] = verdict
    return out


def deploy_check(run: str, sources: tuple[str, ...] = DEFAULT_SOURCES, formats: tuple[str, ...] = tuple(FORMATS),
                 opsets: tuple[int, ...] = DEFAULT_OPSETS, runtimes: tuple[str, ...] = tuple(RUNTIMES),
                 data_dir: str = "data", limit: int | None = None, speed: bool = True,
                 logits_dir: str | None = None) -> dict[str, Any]:
    """Every number of the report (docs/export.md, "Reading the report")."""
    source = resolve_source(run)
    if source.run_dir is None or source.framework is None:
        raise errors.UserError(f"{run}: deploy-check needs a run folder (config.json with framework and dataset)")
    x, y, split, manifest = evaluation_set(source, data_dir, None, limit)
    report: dict[str, Any] = {
        "run": str(source.run_dir), "model": source.spec.name, "trained_framework": source.framework,
        "dataset": source.config.get("dataset"), "synthetic": bool(manifest.get("synthetic")), "split": split,
        "n": int(len(y)), "sources": list(sources), "formats": list(formats), "opsets": list(opsets),
        "machine": {**machine_info(), "cpu_flags": cpu_flags()},
        "runtimes": {name: {"installed": RUNTIMES[name].installed, "requirement": RUNTIMES[name].requirement,
                            "formats": list(RUNTIMES[name].formats), "process": RUNTIMES[name].process,
                            "description": RUNTIMES[name].description} for name in runtimes},
    }
    files = [f for label in sources for f in planned_files(source.run_dir, label, formats, opsets)]
    for label in sources:
        export_files(run, source, label, [f for f in files if f["source"] == label])
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cell_logits = Path(logits_dir) if logits_dir else tmp / "logits"
        cell_logits.mkdir(parents=True, exist_ok=True)
        np.save(tmp / "x.npy", x)
        natives = {label: native_logits(run, label, tmp / "x.npy", cell_logits / f"native-{label}.npy")
                   for label in sources}
        cells, skipped = plan_cells(files, runtimes, len(x))
        results = run_workers(cells, tmp / "x.npy", tmp, cell_logits, speed)
        rows = [score(c, results[c["id"]], natives[c["source"]], y, cell_logits) for c in cells]
    rows += [score(c, c, natives[c["source"]], y, Path()) for c in skipped]
    report.update(files=files, cells=rows, load_average_end=machine_info()["load_average"])
    report["native_acc"] = {label: float(np.mean(natives[label].argmax(1) == y)) for label in sources}
    report["native_cross_source"] = {label: compare(natives[sources[0]], natives[label], y) for label in sources[1:]}
    report["opset_support"] = opset_summary(rows, files)
    report["failed_float32"] = [f"{r['source']} {r['format']} in {r['runtime']}" for r in rows
                                if r.get("float32") and not r.get("ok")]
    report["ok"] = not report["failed_float32"]
    return report


# Report ----------------------------------------------------------------------------------------------------
def _short(reason: str | None, width: int = 60) -> str:
    text = (reason or "").replace("|", "/")
    return text if len(text) <= width else text[: width - 1] + "…"


def _grid_cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return ""
    if row["load"] == "not installed":
        return "not installed"
    if "agreement" not in row:
        return f"**{row['load']}**: {_short(row['reason'], 40)}"
    a = row["agreement"]
    hint = row["info"].get("precision_hint")
    mark = "ok" if row["ok"] else ("reduced precision" if not row["float32"] else "**DISAGREES**")
    return f"{mark} {a['max_abs_diff']:.1g}, {a['top1_agreement_pct']:.0f}%" + (f" ({hint})" if hint else "")


def _speed(row: dict[str, Any], batch: str) -> str:
    s = row.get("speed") or {}
    metric = s.get(batch) if isinstance(s, dict) else None
    return f"{metric['median']:,.0f}" if isinstance(metric, dict) and "median" in metric else ""


def matrix(report: dict[str, Any]) -> list[str]:
    """The grid: one row per source and format, one column per runtime (``matrix.md``, the README's block)."""
    names = list(report["runtimes"])
    rows_by = {(r["file_index"], r["runtime"]): r for r in report["cells"]}
    grid = []
    for i, f in enumerate(report["files"]):
        first = f"{f['source']} · {f['label']}"
        if "error" in f and not f["error"].startswith("no route"):
            grid.append([first, f"*{_short(f['error'], 80)}*", *[""] * (len(names) - 1)])
        elif "error" not in f:
            grid.append([first, *[_grid_cell(rows_by.get((i, n))) for n in names]])
    lines = table(["source · format", *names], grid)
    no_route = [f"{f['source']} → {f['format']}" for f in report["files"] if f.get("error", "").startswith("no route")]
    if no_route:
        lines += ["", f"No route (the framework or Keras backend does not write the format): {', '.join(no_route)}. "
                  "Keras writes .pt2 on the torch backend only (`SOURCES=keras-torch`)."]
    return lines


def header(report: dict[str, Any], load: bool = True) -> list[str]:
    """The title, what ran where (with the load average, when ``load``), and the verdict."""
    m = report["machine"]
    flag_text = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in m["cpu_flags"].items())
    tag = " (SYNTHETIC data)" if report["synthetic"] else ""
    return [
        f"# Deployment matrix: {report['model']} ({report['trained_framework']}-trained)",
        "",
        f"Run `{report['run']}`; split **{report['split']}** of {report['dataset']}{tag}, {report['n']} images "
        f"(a slow runtime sees a prefix). Written by `make deploy-check` on {m['cpu']}, {m['cores']} cores, "
        f"CPU flags: {flag_text}"
        + (f"; load average {m['load_average']} at the start, {report['load_average_end']} at the end." if load
           else "."),
        "",
        f"**Verdict: {'PASS' if report['ok'] else 'FAIL'}**: every float32 cell that ran agrees with the native "
        "model within 1e-4·max(1, max|logit|) and on every top-1 class"
        + ("" if report["ok"] else f"; failing: {', '.join(report['failed_float32'])}") + ".",
        "",
    ]


GRID_NOTE = ("Each cell: max |logit difference| against the native model of its source, and top-1 agreement. "
             "Empty: the runtime does not read that format.")


def matrix_page(report: dict[str, Any]) -> str:
    """``matrix.md``, the README's block: the header and the grid alone, nothing that goes stale (the full page,
    with speeds, reasons and the load average, is ``deploy-check.md``)."""
    return "\n".join([*header(report, load=False), GRID_NOTE, "", *matrix(report)]) + "\n"


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown page: the grid, every cell, the reasons, the opset evidence."""
    names = list(report["runtimes"])
    lines = [*header(report), "## The matrix", "", GRID_NOTE, "", *matrix(report)]
    lines += ["", "## Every cell", ""]
    body = []
    for r in sorted(report["cells"], key=lambda r: (r["file_index"], names.index(r["runtime"]))):
        f = report["files"][r["file_index"]]
        a = r.get("agreement")
        hint = r["info"].get("precision_hint")
        body.append([f"{f['source']} · {f['label']}", r["runtime"] + (f" ({hint})" if hint else ""),
                     r["load"] if r["load"] != "ok" else "ok", r["n"],
                     f"{a['max_abs_diff']:.2g}" if a else "", f"{a['tolerance']:.2g}" if a else "",
                     f"{a['top1_agreement_pct']:.2f}%" if a else "", f"{a['other_acc']:.4f}" if a else "",
                     _speed(r, "b1"), _speed(r, "b64")])
    lines += table(["file", "runtime (precision hint)", "load", "images", "max abs d logit", "bar", "top-1 agreement",
                    "accuracy", "images/s b1", "images/s b64"], body, "llllrrrrrr")
    native = ", ".join(f"{k} {v:.4f}" for k, v in report["native_acc"].items())
    lines += ["", f"Native accuracy: {native}."]
    reasons = [(f"{r['source']} · {report['files'][r['file_index']]['label']}", r["runtime"], r["reason"])
               for r in report["cells"] if r.get("reason")]
    reasons += [(f"{f['source']} · {f['label']}", "(export)", f["error"]) for f in report["files"]
                if "error" in f and not f["error"].startswith("no route")]
    if reasons:
        lines += ["", "## Reasons", ""] + [f"- {a} in {b}: `{c}`" for a, b, c in reasons]
    if report["opset_support"]:
        lines += ["", "## ONNX opsets each runtime reads (from this matrix)", ""]
        lines += table(["runtime", *[f"opset {o}" for o in report["opsets"]]],
                       [[rt, *[_short(per.get(str(o), ""), 70) for o in report["opsets"]]]
                        for rt, per in report["opset_support"].items()])
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = errors.ArgumentParser(prog="python -m export.deploy_check", description=__doc__)
    p.add_argument("--run", required=True, help="run folder")
    p.add_argument("--sources", help=f"comma list of {', '.join(SOURCE_LABELS)} (default {','.join(DEFAULT_SOURCES)})")
    p.add_argument("--formats", help=f"comma list of {', '.join(FORMATS)} (default: all)")
    p.add_argument("--opsets", help=f"ONNX opsets to export (default {','.join(map(str, DEFAULT_OPSETS))})")
    p.add_argument("--runtimes", help=f"comma list of {', '.join(RUNTIMES)} (default: all)")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--limit", type=int, help="only the first N images of the split")
    p.add_argument("--out", help="report folder (default: the run folder)")
    p.add_argument("--no-speed", action="store_true", help="skip the images/s measurements")
    p.add_argument("--logits-dir", help="keep every cell's logits (and the native ones) as .npy here")
    args = p.parse_args(argv)
    sources = parse_list(args.sources, DEFAULT_SOURCES, SOURCE_LABELS, "source")
    formats = tuple(check_format(f).name for f in parse_list(args.formats, tuple(FORMATS), tuple(FORMATS), "format"))
    try:
        opsets = tuple(check_opset(int(o)) for o in args.opsets.split(",")) if args.opsets else DEFAULT_OPSETS
    except ValueError as e:
        raise errors.UserError(str(e)) from None
    runtimes = parse_list(args.runtimes, tuple(RUNTIMES), tuple(RUNTIMES), "runtime")
    if not Path(args.run).is_dir():
        raise errors.UserError(f"run folder not found: {args.run}")
    out = check_writable(args.out or args.run, folder=True, what="deploy-check report folder")
    if args.logits_dir:
        check_writable(args.logits_dir, folder=True, what="logits folder")
    try:
        report = deploy_check(args.run, sources, formats, opsets, runtimes, args.data_dir, args.limit,
                              not args.no_speed, args.logits_dir)
    except (FileNotFoundError, ValueError, RuntimeError) as e:  # RuntimeError: process.ChildError, DataError
        raise errors.UserError(str(e)) from None
    atomic_write_json(out / "deploy-check.json", report)
    atomic_write_text(out / "deploy-check.md", markdown(report))
    atomic_write_text(out / "matrix.md", matrix_page(report))
    print(markdown(report))
    print(f"wrote {out / 'deploy-check.md'}, {out / 'matrix.md'} (the grid alone) and {out / 'deploy-check.json'}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(errors.run(main))
