"""The ablation's runs as tables (Markdown + JSON) and plots (PNG), over seeds, read from the run folders alone.

Per run, per cell (mean ± std, min-max, n) and the paper's comparisons; the plots follow He et al. 2015, Fig. 6.
docs/ablation.md ("The report") describes every column. Imports no framework.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from shared.ablation.published import Published
from shared.ablation.stats import HIGHER_IS_BETTER, PANELS, comparisons, spread
from shared.io import atomic_write, atomic_write_json, atomic_write_text
from shared.markdown import table
from shared.names import count_params
from shared.runs import read_run
from shared.spec import ModelSpec, get_spec

FRAMEWORK_MARKERS = {"torch": "o", "keras": "s", "keras-tensorflow": "s", "keras-jax": "^", "keras-torch": "D"}
METRIC_NAMES = {"best_val_acc": "best val acc", "test_acc": "test acc", "train_loss_last": "final train loss"}
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
        raise RunError(f"{path} is not a readable safetensors file ({e})") from e


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


# Rendering ------------------------------------------------------------------------------------
N_A = "n/a (1 seed)"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def _int(x: int | None) -> str:
    return "—" if x is None else f"{x:,}"


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f}"


def _is_acc(metric: str) -> bool:
    return metric.endswith("_acc")


def _unit(metric: str, x: float) -> str:
    """A value of ``metric`` without its unit: accuracies in percent (2 decimals), losses with 4."""
    return f"{100 * x:.2f}" if _is_acc(metric) else f"{x:.4f}"


def spread_text(metric: str, s: Mapping[str, Any] | None) -> str:
    """``87.20 ± 0.41% (86.80–87.60)``; one seed: ``87.20% ± n/a (1 seed)``; no finished seed: ``—``."""
    if s is None:
        return "—"
    pct = "%" if _is_acc(metric) else ""
    if s["std"] is None:
        return f"{_unit(metric, s['mean'])}{pct} ± {N_A}"
    return (f"{_unit(metric, s['mean'])} ± {_unit(metric, s['std'])}{pct} "
            f"({_unit(metric, s['min'])}–{_unit(metric, s['max'])})")


def _diff(metric: str, x: float | None) -> str:
    if x is None:
        return "—"
    return f"{100 * x:+.2f} pp" if _is_acc(metric) else f"{x:+.4f}"


def _ci(metric: str, c: Mapping[str, Any]) -> str:
    if c["ci95"] is None:
        return N_A if c["paired"] <= 1 and c["test"] is None and c["note"] is None else (c["note"] or "—")
    lo, hi = c["ci95"]
    return f"[{_diff(metric, lo)}, {_diff(metric, hi)}]".replace(" pp,", ",")


def _p(p: float | None) -> str:
    return "—" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")


TESTS = {"paired": "paired t", "welch": "Welch t", None: "—"}


def device_text(device: Any) -> str:
    """A run's ``config["device"]`` in a few words: ``cpu``, ``NVIDIA A100 x 4``."""
    if not isinstance(device, dict):
        return str(device)
    name = str(device.get("name") or device.get("type") or "unknown")
    world = device.get("world_size") or 1
    return f"{name} x {world}" if world > 1 else name


def format_seconds(s: float | None) -> str:
    """``3723.4`` -> ``1h02m03s``; ``42.1`` -> ``42.1s``."""
    if s is None:
        return "—"
    if s < 60:
        return f"{s:.1f}s"
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"


def _mean(s: Mapping[str, Any] | None) -> float | None:
    return None if s is None else s["mean"]


def _short(model: str) -> str:
    """``plain56`` -> ``plain-56``, ``resnet20`` -> ``ResNet-20`` (as the paper writes them)."""
    spec = get_spec(model)
    return f"{'plain' if spec.layout == 'plain' else 'ResNet'}-{spec.depth}"


def comparison_tables(report: Mapping[str, Any]) -> list[str]:
    """One Markdown table per metric: each paper comparison with its difference, CI, p and seed count."""
    lines: list[str] = []
    header = ["framework", "B vs A", "the paper: B is", "A", "B", "B − A", "95% CI of B − A", "p", "test",
              "holds in", "reading"]
    for metric, name in METRIC_NAMES.items():
        rows = []
        for c in report["comparisons"]:
            if c["metric"] != metric:
                continue
            a, b = _short(c["a"]), _short(c["b"])
            holds = f"{c['holds']} of {c['paired']}" + (f" ({c['ties']} tie)" if c["ties"] else "")
            rows.append([c["framework"], f"{b} vs {a}", c["paper"],
                         "—" if c["mean_a"] is None else _unit(metric, c["mean_a"]),
                         "—" if c["mean_b"] is None else _unit(metric, c["mean_b"]),
                         _diff(metric, c["diff"]), _ci(metric, c), _p(c["p"]), TESTS[c["test"]], holds,
                         c["verdict"]])
        if rows:
            unit = " (%)" if _is_acc(metric) else ""
            lines += ["", f"### {name}{unit}", "", *table(header, rows, "lllrrrrrlll")]
    return lines


def published_table(report: Mapping[str, Any]) -> list[str]:
    """The published numbers beside this report's test error, one row per model of the report."""
    pub = report.get("published")
    if not pub:
        return []
    cells = report["cells"]
    models = list(dict.fromkeys(c["model"] for c in cells))
    if not any(m in s["values"] for s in pub["sources"] for m in models):
        return ["", "## Published numbers", "", f"No published {pub['task']} number for "
                f"{', '.join(models)}; see docs/ablation.md for the sources."]
    fws = list(dict.fromkeys(c["framework"] for c in cells))
    by = {(c["model"], c["framework"]): c for c in cells}

    def ours(model: str, fw: str) -> str:
        s = by[(model, fw)]["test_acc"] if (model, fw) in by else None
        if s is None:
            return "—"
        err = 100 * (1 - s["mean"])
        return f"{err:.2f} (1 seed)" if s["std"] is None else f"{err:.2f} ± {100 * s['std']:.2f} (n = {s['n']})"

    header = ["model", *(f"this report: test error on {report['dataset']} ({fw})" for fw in fws),
              *(s["name"] for s in pub["sources"])]
    rows = [[m, *(ours(m, fw) for fw in fws), *(s["values"].get(m, "—") for s in pub["sources"])] for m in models]
    lines = ["", f"## Published numbers ({pub['task']} {pub['metric']})", ""]
    if report["dataset_task"] != pub["task"]:
        lines += [f"This report ran on **{report['dataset']}**, not {pub['task']}: its column sits beside the "
                  "published ones for orientation only; the numbers are not comparable.", ""]
    lines += table(header, rows, "l" + "r" * (len(header) - 1))
    lines += ["", "Sources:", ""] + [f"- {s['name']}: {s['where']}" for s in pub["sources"]]
    lines += [f"- {note}" for note in pub["notes"]]
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: preamble, cells (mean ± std over seeds), comparisons, runs, paper, plots."""
    synthetic = report["synthetic"]
    seeds = report["seeds"]
    lines = [
        f"# Ablation: plain vs residual on {report['dataset']}",
        "",
        f"- Dataset: **{report['dataset']}**"
        + (" — **synthetic data** (a pipeline check, not a result)" if synthetic else "")
        + (" — synthetic: unknown" if synthetic is None else ""),
        f"- Epochs per cell: **{report['epochs'] if report['epochs'] is not None else 'recipe default'}**"
        f" (the same for every cell); batch size "
        f"{report['batch_size'] if report['batch_size'] is not None else 'recipe default'}",
        f"- Seeds: **{', '.join(map(str, seeds))}** ({len(seeds)} run{'s' if len(seeds) != 1 else ''} per cell; "
        "a seed fixes the initial weights and every epoch's order, crops and flips)",
        f"- Hardware: {'; '.join(report['hardware']) or 'unknown'}",
        f"- Device(s) of the runs: {', '.join(report['devices']) or 'unknown'}",
        f"- Generated {report['generated']} at commit {report['git_commit'] or 'unknown'}",
    ]
    if not report["complete"]:
        n = sum(r["finished"] for r in report["runs"])
        lines.append(f"- **Incomplete**: {n} of {len(report['runs'])} runs finished; run the same command again "
                     "to complete")
    rows = []
    for c in report["cells"]:
        rows.append([c["model"], c["layout"], c["framework"], c["shortcut"] or "—", _int(c["params"]), c["n"],
                     spread_text("best_val_acc", c["best_val_acc"]), spread_text("test_acc", c["test_acc"]),
                     spread_text("train_loss_last", c["train_loss_last"]),
                     format_seconds(_mean(c["train_time_s"])), _num(_mean(c["images_per_s"]))])
    header = ["model", "plain/residual", "framework", "shortcut", "params", "n", "best val acc", "test acc",
              "final train loss", "train time", "images/s"]
    lines += ["", "## Cells (mean ± std over seeds, min–max in brackets)", "", *table(header, rows, "llllrrrrrrr")]
    lines += ["", "n counts finished seeds; std is the sample standard deviation (n − 1). Accuracies are top-1; "
              "best val acc is the maximum over epochs of `val_acc` in a run's `metrics.csv`, test acc is measured "
              "once at the end with the best weights (`results.json`), the final train loss is the last epoch's. "
              "Params are counted from the trained weight file (BN running statistics excluded). Train time and "
              "images/s are means per seed and depend on the machine and its load."]
    if report["comparisons"]:
        lines += ["", "## The paper's comparisons", "",
                  "B − A is the difference of the means over the seeds the test used; the 95% confidence interval "
                  "and the two-sided p-value come from scipy.stats (paired t over the seeds both cells finished: "
                  "`ttest_rel`; Welch's t when fewer than two seeds pair: `ttest_ind(equal_var=False)`). "
                  "\"holds in\" counts the paired seeds in which B differs from A in the paper's direction. "
                  "The reading is \"as the paper\" or \"against the paper\" only when the interval excludes 0."]
        lines += comparison_tables(report)
    lines += ["", "## Runs", ""]
    run_rows = []
    for r in report["runs"]:
        if r["status"] == "missing":
            run_rows.append([r["seed"], r["model"], r["framework"], "not run", "—", "—", "—", "—", "—"])
            continue
        loss = "—" if r["train_loss_first"] is None else f"{r['train_loss_first']:.4f} → {r['train_loss_last']:.4f}"
        test = _pct(r["test_acc"]) if r["finished"] else f"unfinished ({r['epochs_done']} epochs)"
        run_rows.append([r["seed"], r["model"], r["framework"], _pct(r["best_val_acc"]),
                         r["best_epoch"] if r["best_epoch"] is not None else "—", test, loss,
                         format_seconds(r["train_time_s"]), _num(r["images_per_s"])])
    lines += table(["seed", "model", "framework", "best val acc", "best epoch", "test acc",
                    "train loss (first → last epoch)", "train time", "images/s"], run_rows, "rllrrrlrr")
    lines += published_table(report)
    if report.get("paper"):
        lines += ["", "## What the paper reports", "", report["paper"]]
    if report["plots"]:
        lines += ["", "## Plots", ""]
        lines += [f"![{kind}]({name})" for kind, name in report["plots"].items()]
    return "\n".join(lines) + "\n"


def _series(metrics: Sequence[dict[str, float]], key: str, error: bool) -> dict[int, float]:
    return {int(r["epoch"]): (100 * (1 - r[key]) if error else r[key]) for r in metrics if not math.isnan(r[key])}


def _save_figure(fig: Any, path: Path) -> Path:
    def write(tmp: str) -> None:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")

    return atomic_write(path, write)


def curve_lines(
    runs: Sequence[tuple[dict[str, Any], Sequence[dict[str, float]]]], *, kind: str
) -> dict[str, list[dict[str, Any]]]:
    """What each panel of the Fig. 6 plot draws: ``{"plain": [line, ...], "residual": [...]}``.

    As in He et al. 2015, Fig. 6, plain nets go in the left panel and residual nets in the right one,
    so "deeper plain is worse, deeper residual is better" reads off each panel. Colour = depth (the
    same depth has the same colour in both panels); ``kind="error"`` draws training error thin and
    dashed and validation error bold, ``kind="loss"`` the training loss. Frameworks differ by marker.
    Each line is one cell over its seeds: ``{"label", "x", "y" (the mean per epoch), "lo", "hi" (min and
    max per epoch), "n" (seeds), "depth", "framework", "what"}``.
    """
    if kind not in ("error", "loss"):
        raise ValueError(f"unknown plot kind {kind!r}; valid choices: error, loss")
    series = (("train", "train_acc", True), ("val", "val_acc", True)) if kind == "error" else (
        ("train loss", "train_loss", False),)
    groups: dict[tuple[str, str], list[tuple[dict[str, Any], Sequence[dict[str, float]]]]] = {}
    for row, metrics in runs:
        if metrics:
            groups.setdefault((row["model"], row["framework"]), []).append((row, metrics))
    panels: dict[str, list[dict[str, Any]]] = {p: [] for p in PANELS}
    for (model, fw), members in sorted(groups.items(), key=lambda g: (g[1][0][0]["depth"], g[0][1])):
        row = members[0][0]
        for what, key, error in series:
            per_run = [_series(metrics, key, error) for _, metrics in members]
            epochs = sorted(set().union(*per_run))
            at = [[s[e] for s in per_run if e in s] for e in epochs]
            panels[row["layout"]].append({
                "label": f"{model} {fw} {what}", "x": epochs, "y": [sum(v) / len(v) for v in at],
                "lo": [min(v) for v in at], "hi": [max(v) for v in at], "n": len(members),
                "depth": row["depth"], "framework": fw, "what": what})
    if not any(panels.values()):
        raise ValueError("nothing to plot: no run has a finished epoch")
    return panels


def plot_curves(
    runs: Sequence[tuple[dict[str, Any], Sequence[dict[str, float]]]],
    path: str | os.PathLike,
    *,
    kind: str,
    title: str,
) -> Path:
    """One PNG laid out as the paper's Fig. 6: plain nets left, residual nets right, a shared y-axis,
    each line the mean over seeds with its min-max band (see :func:`curve_lines` for what is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    panels = curve_lines(runs, kind=kind)
    depths = sorted({line["depth"] for lines in panels.values() for line in lines})
    colors = {d: plt.get_cmap("tab10")(i % 10) for i, d in enumerate(depths)}
    seeds = max(line["n"] for lines in panels.values() for line in lines)
    fig, axes = plt.subplots(1, len(PANELS), figsize=(11, 4.2), sharey=True, squeeze=False)
    for ax, layout in zip(axes[0], PANELS):
        epochs: set[int] = set()
        for line in panels[layout]:
            bold = line["what"] == "val"
            color = colors[line["depth"]]
            if line["n"] > 1:
                ax.fill_between(line["x"], line["lo"], line["hi"], color=color, alpha=0.22 if bold else 0.12,
                                linewidth=0)
            ax.plot(line["x"], line["y"], color=color, linestyle="-" if bold else "--",
                    linewidth=2.4 if bold else 1.0, marker=FRAMEWORK_MARKERS.get(line["framework"], "o"),
                    markersize=5 if bold else 2.5, label=line["label"] + (f" (mean of {line['n']})"
                                                                          if line["n"] > 1 else ""))
            epochs.update(line["x"])
        ax.set_title(f"{layout} nets" if panels[layout] else f"{layout} nets (no run)")
        if 0 < len(epochs) <= 12:  # few epochs: one tick each (a single epoch would get fractional ticks)
            ax.set_xticks(sorted(epochs))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        if panels[layout]:
            handles, labels = ax.get_legend_handles_labels()
            if seeds > 1:
                handles.append(Patch(color="grey", alpha=0.3, linewidth=0))
                labels.append("band: min–max over seeds")
            ax.legend(handles, labels, fontsize=7)
    axes[0][0].set_ylabel("error (%)" if kind == "error" else "training loss")
    fig.suptitle(title + (f" — mean of {seeds} seeds, band min–max" if seeds > 1 else " — 1 seed"))
    try:
        return _save_figure(fig, Path(path))
    finally:
        plt.close(fig)


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
