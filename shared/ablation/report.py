"""Results of a set of training runs as a table (Markdown + JSON) and plots (PNG). Framework-neutral.

Everything here is read from the run folders that both trainers write (``shared/runs.py``:
``config.json``, ``metrics.csv``, ``results.json``, ``best.safetensors``/``last.safetensors``); nothing
is re-computed by a framework.

* best validation accuracy and its epoch: the maximum of ``val_acc`` in ``metrics.csv`` (first epoch
  reaching it), cross-checked against ``results.json``;
* test accuracy and training time: ``results.json`` (``test_acc``, ``wall_time_s``);
* parameters: counted from the shapes stored in the run's weight file, i.e. the model that was trained.

The plots follow He et al. 2015, Fig. 6: error (1 - accuracy) per epoch, plain nets in the left panel
and residual nets in the right one on a shared y-axis, thin dashed = training, bold = validation,
one colour per depth; and the training loss laid out the same way.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from shared.io import atomic_write, atomic_write_json, atomic_write_text
from shared.markdown import table
from shared.names import count_params
from shared.runs import read_run
from shared.spec import ModelSpec

FRAMEWORK_MARKERS = {"torch": "o", "keras": "s", "keras-tensorflow": "s", "keras-jax": "^", "keras-torch": "D"}
# Two accuracies closer than this are "the same" when a finding compares them (one image in 10,000).
TIE = 1e-4


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


# Rendering ------------------------------------------------------------------------------------
def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def _int(x: int | None) -> str:
    return "—" if x is None else f"{x:,}"


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f}"


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


def findings(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Plain-language comparisons the paper makes (Fig. 6), read off the table per framework.

    Deeper vs shallower within plain and within residual nets, and residual vs plain at each depth,
    by best validation error. Only finished cells take part.
    """
    out: list[str] = []
    done = [r for r in rows if r["finished"] and r["best_val_acc"] is not None]
    for fw in sorted({r["framework"] for r in done}):
        cells = {(r["layout"], r["depth"]): r for r in done if r["framework"] == fw}
        depths = sorted({d for _, d in cells})
        for layout in ("plain", "residual"):
            ds = [d for d in depths if (layout, d) in cells]
            for a, b in zip(ds, ds[1:]):
                ea, eb = (1 - cells[(layout, d)]["best_val_acc"] for d in (a, b))
                verdict = "better" if eb < ea - TIE else "worse" if eb > ea + TIE else "the same"
                out.append(
                    f"{fw}: {layout}-{b} is {verdict} than {layout}-{a} "
                    f"(best val error {100 * eb:.2f}% vs {100 * ea:.2f}%)"
                )
        for d in depths:
            if ("plain", d) in cells and ("residual", d) in cells:
                ep, er = (1 - cells[(lay, d)]["best_val_acc"] for lay in ("plain", "residual"))
                verdict = "better" if er < ep - TIE else "worse" if er > ep + TIE else "the same"
                out.append(
                    f"{fw}: residual-{d} is {verdict} than plain-{d} "
                    f"(best val error {100 * er:.2f}% vs {100 * ep:.2f}%)"
                )
    return out


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: a preamble (dataset, epochs, hardware, synthetic), the table, findings, plots."""
    synthetic = report["synthetic"]
    lines = [
        f"# Ablation: plain vs residual on {report['dataset']}",
        "",
        f"- Dataset: **{report['dataset']}**"
        + (" — **synthetic data** (a pipeline check, not a result)" if synthetic else "")
        + (" — synthetic: unknown" if synthetic is None else ""),
        f"- Epochs per cell: **{report['epochs'] if report['epochs'] is not None else 'recipe default'}**"
        f" (the same for every cell); seed {report['seed'] if report['seed'] is not None else 'default'}"
        f"; batch size {report['batch_size'] if report['batch_size'] is not None else 'recipe default'}",
        f"- Hardware: {'; '.join(report['hardware']) or 'unknown'}",
        f"- Device(s) of the runs: {', '.join(report['devices']) or 'unknown'}",
        f"- Generated {report['generated']} at commit {report['git_commit'] or 'unknown'}",
    ]
    if not report["complete"]:
        n = sum(r["finished"] for r in report["cells"])
        lines.append(f"- **Incomplete**: {n} of {len(report['cells'])} cells finished; re-run to complete")
    rows = []
    for r in report["cells"]:
        if r.get("status") == "missing":
            rows.append([r["model"], r["layout"], r["framework"], "—", "—", "not run", "—", "—", "—", "—", "—"])
            continue
        loss = (
            "—" if r["train_loss_first"] is None else f"{r['train_loss_first']:.4f} → {r['train_loss_last']:.4f}"
        )
        test = _pct(r["test_acc"]) if r["finished"] else f"unfinished ({r['epochs_done']} epochs)"
        rows.append([r["model"], r["layout"], r["framework"], r["shortcut"], _int(r["params"]),
                     _pct(r["best_val_acc"]), r["best_epoch"] if r["best_epoch"] is not None else "—", test,
                     format_seconds(r["train_time_s"]), _num(r["images_per_s"]), loss])
    header = ["model", "plain/residual", "framework", "shortcut", "params", "best val acc", "best epoch", "test acc",
              "train time", "images/s", "train loss (first → last epoch)"]
    lines += ["", *table(header, rows, "llllrrrrrrl")]
    lines += ["", "Accuracies are top-1; best val acc is the maximum over epochs of `val_acc` in the run's "
              "`metrics.csv`, test acc is measured once at the end (`results.json`). Params are counted from "
              "the trained weight file (trainable; BN running statistics excluded)."]
    if report["findings"]:
        lines += ["", "## Findings (best validation error)", ""] + [f"- {f}" for f in report["findings"]]
    if report.get("paper"):
        lines += ["", "## What the paper reports", "", report["paper"]]
    if report["plots"]:
        lines += ["", "## Plots", ""]
        lines += [f"![{kind}]({name})" for kind, name in report["plots"].items()]
    return "\n".join(lines) + "\n"


def _series(metrics: Sequence[dict[str, float]], key: str, error: bool) -> tuple[list[int], list[float]]:
    xs = [r["epoch"] for r in metrics if not math.isnan(r[key])]
    ys = [100 * (1 - r[key]) if error else r[key] for r in metrics if not math.isnan(r[key])]
    return xs, ys


def _save_figure(fig: Any, path: Path) -> Path:
    def write(tmp: str) -> None:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")

    return atomic_write(path, write)


PANELS = ("plain", "residual")


def curve_lines(
    cells: Sequence[tuple[dict[str, Any], Sequence[dict[str, float]]]], *, kind: str
) -> dict[str, list[dict[str, Any]]]:
    """What each panel of the Fig. 6 plot draws: ``{"plain": [line, ...], "residual": [...]}``.

    As in He et al. 2015, Fig. 6, plain nets go in the left panel and residual nets in the right one,
    so "deeper plain is worse, deeper residual is better" reads off each panel. Colour = depth (the
    same depth has the same colour in both panels); ``kind="error"`` draws training error thin and
    dashed and validation error bold, ``kind="loss"`` the training loss. Frameworks differ by marker.
    Each line is ``{"label", "x", "y", "depth", "framework", "what"}``.
    """
    if kind not in ("error", "loss"):
        raise ValueError(f"unknown plot kind {kind!r}; valid choices: error, loss")
    series = (("train", "train_acc", True), ("val", "val_acc", True)) if kind == "error" else (
        ("train loss", "train_loss", False),)
    panels: dict[str, list[dict[str, Any]]] = {p: [] for p in PANELS}
    for row, metrics in sorted(cells, key=lambda c: (c[0]["depth"], c[0]["framework"])):
        if not metrics:
            continue
        for what, key, error in series:
            x, y = _series(metrics, key, error)
            panels[row["layout"]].append({"label": f"{row['model']} {row['framework']} {what}", "x": x, "y": y,
                                          "depth": row["depth"], "framework": row["framework"], "what": what})
    if not any(panels.values()):
        raise ValueError("nothing to plot: no run has a finished epoch")
    return panels


def plot_curves(
    cells: Sequence[tuple[dict[str, Any], Sequence[dict[str, float]]]],
    path: str | os.PathLike,
    *,
    kind: str,
    title: str,
) -> Path:
    """One PNG laid out as the paper's Fig. 6: plain nets left, residual nets right, a shared y-axis
    (see :func:`curve_lines` for what is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = curve_lines(cells, kind=kind)
    depths = sorted({line["depth"] for lines in panels.values() for line in lines})
    colors = {d: plt.get_cmap("tab10")(i % 10) for i, d in enumerate(depths)}
    fig, axes = plt.subplots(1, len(PANELS), figsize=(11, 4.2), sharey=True, squeeze=False)
    for ax, layout in zip(axes[0], PANELS):
        epochs: set[int] = set()
        for line in panels[layout]:
            bold = line["what"] == "val"
            ax.plot(line["x"], line["y"], color=colors[line["depth"]], linestyle="-" if bold else "--",
                    linewidth=2.4 if bold else 1.0, marker=FRAMEWORK_MARKERS.get(line["framework"], "o"),
                    markersize=5 if bold else 2.5, label=line["label"])
            epochs.update(line["x"])
        ax.set_title(f"{layout} nets" if panels[layout] else f"{layout} nets (no run)")
        if 0 < len(epochs) <= 12:  # few epochs: one tick each (a single epoch would get fractional ticks)
            ax.set_xticks(sorted(epochs))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        if panels[layout]:
            ax.legend(fontsize=7)
    axes[0][0].set_ylabel("error (%)" if kind == "error" else "training loss")
    fig.suptitle(title)
    try:
        return _save_figure(fig, Path(path))
    finally:
        plt.close(fig)


def build_report(
    run_dirs: Iterable[tuple[str, str, str | os.PathLike | None]],
    *,
    dataset: str,
    epochs: int | None,
    seed: int | None,
    batch_size: int | None,
    hardware: Sequence[str],
    git_commit: str | None,
    generated: str,
    paper: str | None = None,
) -> tuple[dict[str, Any], list[tuple[dict[str, Any], list[dict[str, float]]]]]:
    """Summaries of every cell ``(model, framework, run_dir or None)``, in order, plus their metrics.

    A cell whose folder is missing (or has no config yet) appears with ``status: "missing"``.
    ``synthetic`` is True/False when every run agrees, None when unknown.
    """
    rows: list[dict[str, Any]] = []
    curves: list[tuple[dict[str, Any], list[dict[str, float]]]] = []
    for model, framework, run_dir in run_dirs:
        if run_dir is None or not (Path(run_dir) / "config.json").is_file():
            from shared.spec import get_spec

            spec = get_spec(model)
            rows.append({"model": model, "framework": framework, "layout": spec.layout, "depth": spec.depth,
                         "status": "missing", "finished": False, "best_val_acc": None})
            continue
        row, metrics = summarize_run(run_dir)
        row["framework"] = framework  # the cell's label: keras-jax rather than the run's own "keras"
        row["status"] = "finished" if row["finished"] else "unfinished"
        rows.append(row)
        curves.append((row, metrics))
    flags = {r.get("synthetic") for r in rows if r["status"] != "missing"}
    if epochs is None:  # the recipe's default length: report what the finished runs actually did
        done = {r["epochs"] for r in rows if r["finished"]}
        epochs = done.pop() if len(done) == 1 else None
    report = {
        "dataset": dataset,
        "epochs": epochs,
        "seed": seed,
        "batch_size": batch_size,
        "synthetic": flags.pop() if len(flags) == 1 else None,
        "hardware": list(dict.fromkeys(hardware)),
        "devices": sorted({device_text(r["device"]) for r in rows if r.get("device") is not None}),
        "git_commit": git_commit,
        "generated": generated,
        "complete": all(r["finished"] for r in rows),
        "cells": rows,
        "findings": findings(rows),
        "paper": paper,
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
