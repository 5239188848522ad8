"""The ablation's report, read from the run folders alone: per run, per cell over the seeds, the paper's comparisons;
written as Markdown (``markdown.py``), JSON and plots (``plots.py``). docs/ablation.md, "The report". Imports no
framework.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from shared.ablation.markdown import METRIC_NAMES, device_text, render_markdown
from shared.ablation.plots import plot_curves
from shared.ablation.published import Published
from shared.ablation.stats import HIGHER_IS_BETTER, comparisons, spread
from shared.io import atomic_write_json, atomic_write_text
from shared.names import count_params
from shared.runs import read_run
from shared.spec import ModelSpec, get_spec

TIMING = ("train_time_s", "images_per_s")  # depend on the machine and its load, not on the seed


class RunError(ValueError):
    """A run folder whose files are unreadable or contradict each other."""


def weight_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Canonical key -> shape of every tensor in a safetensors file (the header only, no data read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated/garbled headers
        raise RunError(f"cannot read weight file {path}: truncated or corrupt ({type(e).__name__}); train the "
                       "run again") from e


def run_params(run_dir: str | os.PathLike, spec: ModelSpec) -> tuple[int, int] | None:
    """(trainable, non-trainable) parameter counts of the weights the run saved; None before any epoch ended."""
    for name in ("best.safetensors", "last.safetensors"):
        path = Path(run_dir) / name
        if path.is_file():
            try:
                return count_params(spec, weight_shapes(path))
            except KeyError as e:
                raise RunError(f"{path} holds {e} which is not a weight of {spec.name}") from e
    return None


def best_epoch(metrics: Sequence[dict[str, float]]) -> tuple[float, int] | None:
    """(best val_acc, its epoch): the first epoch that reached the maximum; None without epochs."""
    valid = [r for r in metrics if not math.isnan(r["val_acc"])]
    if not valid:
        return None
    best = max(valid, key=lambda r: r["val_acc"])  # max() keeps the first of equal values
    return best["val_acc"], best["epoch"]


def summarize_run(run_dir: str | os.PathLike) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One table row for a run folder (model, layout, framework, shortcut, params, accuracies, times),
    and the run's metrics rows.

    Works on unfinished runs too (``finished`` False, ``test_acc`` None), so a report can show
    which cells are missing. Raises ``shared.runs.NotARunError`` when the folder is not a run.
    """
    run = read_run(run_dir)
    config, metrics, results = run["config"], run["metrics"], run["results"] or {}
    try:
        spec = ModelSpec.from_dict(config["spec"])
    except (KeyError, TypeError, ValueError) as e:
        raise RunError(f"{run['path']}/config.json: no valid 'spec' ({e})") from e
    best = best_epoch(metrics)
    params = run_params(run_dir, spec)
    if run["finished"] and best is not None and abs(best[0] - float(results["best_val_acc"])) > 1e-6:
        raise RunError(
            f"{run['path']}: best val_acc in metrics.csv ({best[0]}) differs from results.json "
            f"({results['best_val_acc']}); the run folder is inconsistent"
        )
    ips = [r["images_per_s"] for r in metrics if not math.isnan(r["images_per_s"])]
    row = {
        "model": config.get("model", spec.name),
        "layout": spec.layout,
        "depth": spec.depth,
        "framework": run["framework"],
        "shortcut": spec.shortcut,
        "num_classes": spec.num_classes,
        "params": params[0] if params else None,
        "non_trainable": params[1] if params else None,
        "epochs_done": len(metrics),
        "epochs": results.get("epochs"),
        "best_val_acc": best[0] if best else None,
        "best_epoch": best[1] if best else None,
        "test_acc": results.get("test_acc"),
        "test_loss": results.get("test_loss"),
        "train_time_s": results.get("wall_time_s"),
        "images_per_s": sum(ips) / len(ips) if ips else None,
        "train_loss_first": metrics[0]["train_loss"] if metrics else None,
        "train_loss_last": metrics[-1]["train_loss"] if metrics else None,
        "dataset": config.get("dataset"),
        "synthetic": config.get("synthetic"),
        "device": config.get("device"),
        "finished": run["finished"],
        "run_dir": run["path"],
    }
    return row, metrics


def cell_rows(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per cell (model, framework label), in the order of ``runs``: the spread of every metric and
    timing over the cell's finished seeds (``shared.ablation.stats.spread``)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["model"], r["framework"]), []).append(r)
    cells = []
    for (model, fw), rs in groups.items():
        done = [r for r in rs if r["finished"]]
        known = next((r for r in rs if r["status"] != "missing"), rs[0])
        cell = {"model": model, "framework": fw, "layout": rs[0]["layout"], "depth": rs[0]["depth"],
                "shortcut": known.get("shortcut"), "params": known.get("params"), "n": len(done),
                "seeds": [r["seed"] for r in rs], "finished_seeds": [r["seed"] for r in done],
                "best_epochs": [r["best_epoch"] for r in done]}
        for key in (*METRIC_NAMES, *TIMING):
            cell[key] = spread([r[key] for r in done if r.get(key) is not None])
        cells.append(cell)
    return cells


def seed_values(runs: Sequence[dict[str, Any]]) -> dict[tuple[str, str], dict[str, dict[int, float]]]:
    """``{(model, framework): {metric: {seed: value}}}`` over finished runs (what the comparisons test)."""
    out: dict[tuple[str, str], dict[str, dict[int, float]]] = {}
    for r in runs:
        per = out.setdefault((r["model"], r["framework"]), {m: {} for m in HIGHER_IS_BETTER})
        if r["finished"]:
            for m in HIGHER_IS_BETTER:
                if r.get(m) is not None:
                    per[m][r["seed"]] = float(r[m])
    return out


def build_report(
    runs: Iterable[tuple[str, str, int, str | os.PathLike | None]],
    *,
    dataset: str,
    epochs: int | None,
    seeds: Sequence[int],
    batch_size: int | None,
    hardware: Sequence[str],
    git_commit: str | None,
    generated: str,
    paper: str | None = None,
    published: Published | None = None,
    dataset_task: str | None = None,
) -> tuple[dict[str, Any], list[tuple[dict[str, Any], list[dict[str, float]]]]]:
    """Summaries of every run ``(model, framework label, seed, run_dir or None)`` in order, the cells over
    seeds and the paper's comparisons; plus each run's metrics (for the plots).

    A run whose folder is missing (or has no config yet) appears with ``status: "missing"``.
    ``synthetic`` is True/False when every run agrees, None when unknown. ``dataset_task`` names the task
    of ``dataset`` as ``published`` names its own (``CIFAR-10``), so the report can say when they differ.
    """
    rows: list[dict[str, Any]] = []
    curves: list[tuple[dict[str, Any], list[dict[str, float]]]] = []
    for model, framework, seed, run_dir in runs:
        if run_dir is None or not (Path(run_dir) / "config.json").is_file():
            spec = get_spec(model)
            rows.append({"seed": seed, "model": model, "framework": framework, "layout": spec.layout,
                         "depth": spec.depth, "status": "missing", "finished": False, "best_val_acc": None})
            continue
        row, metrics = summarize_run(run_dir)
        row["framework"] = framework  # the cell's label: keras-jax rather than the run's own "keras"
        row["seed"] = seed
        row["status"] = "finished" if row["finished"] else "unfinished"
        rows.append(row)
        curves.append((row, metrics))
    flags = {r.get("synthetic") for r in rows if r["status"] != "missing"}
    if epochs is None:  # the recipe's default length: report what the finished runs actually did
        done = {r["epochs"] for r in rows if r["finished"]}
        epochs = done.pop() if len(done) == 1 else None
    cells = cell_rows(rows)
    report = {
        "dataset": dataset,
        "dataset_task": dataset_task or dataset,
        "epochs": epochs,
        "seeds": list(seeds),
        "batch_size": batch_size,
        "synthetic": flags.pop() if len(flags) == 1 else None,
        "hardware": list(dict.fromkeys(hardware)),
        "devices": sorted({device_text(r["device"]) for r in rows if r.get("device") is not None}),
        "git_commit": git_commit,
        "generated": generated,
        "complete": all(r["finished"] for r in rows),
        "cells": cells,
        "comparisons": comparisons(cells, seed_values(rows)),
        "runs": rows,
        "paper": paper,
        "published": asdict(published) if published else None,
        "plots": {},
    }
    return report, curves


def write_report(
    report: dict[str, Any],
    curves: Sequence[tuple[dict[str, Any], Sequence[dict[str, float]]]],
    out_dir: str | os.PathLike,
    stem: str,
) -> dict[str, Path]:
    """Write ``<stem>.md``, ``<stem>.json``, ``<stem>-error.png`` and ``<stem>-loss.png`` into ``out_dir``."""
    out_dir = Path(out_dir)
    paths: dict[str, Path] = {}
    if any(metrics for _, metrics in curves):
        title = f"{report['ablation']} cells on {report['dataset']}" if report.get("ablation") else report["dataset"]
        if report["synthetic"] and report["dataset"] != "synthetic":
            title += " (synthetic data)"
        for kind, what in (("error", "training (dashed) / validation (bold) error"), ("loss", "training loss")):
            name = f"{stem}-{kind}.png"
            paths[kind] = plot_curves(curves, out_dir / name, kind=kind, title=f"{title}: {what}")
            report["plots"][kind] = name
    paths["json"] = atomic_write_json(out_dir / f"{stem}.json", report)
    paths["md"] = atomic_write_text(out_dir / f"{stem}.md", render_markdown(report))
    return paths
