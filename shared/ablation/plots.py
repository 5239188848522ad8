"""The ablation's plots, in the layout of He et al. 2015, Fig. 6: plain nets left, residual nets right, the mean of the
seeds with a min-max band (docs/ablation.md, "The report"). Imports no framework (matplotlib only).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.ablation.stats import PANELS
from shared.io import atomic_write

FRAMEWORK_MARKERS = {"torch": "o", "keras": "s", "keras-tensorflow": "s", "keras-jax": "^", "keras-torch": "D"}


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
