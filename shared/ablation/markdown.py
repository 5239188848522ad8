"""The ablation's report as a Markdown page: per run, per cell (mean ± std, min-max, n), the paper's comparisons and
the published numbers (docs/ablation.md, "The report", describes every column). Imports no framework.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.markdown import table
from shared.spec import get_spec

METRIC_NAMES = {"best_val_acc": "best val acc", "test_acc": "test acc", "train_loss_last": "final train loss"}


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
