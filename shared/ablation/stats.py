"""The ablation's statistics over seeds: the spread of a cell, and the paper's comparisons with scipy's t-tests.

:func:`spread` summarises one metric of a cell; :func:`compare` puts cell B beside cell A, paired by seed where it
can (``ttest_rel``), else with Welch's ``ttest_ind`` (docs/ablation.md, "Statistics, and why these").
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

CONFIDENCE = 0.95
# Two values closer than this are a tie when a seed's direction is counted (one image in 10,000).
TIE = 1e-4
# The metrics a report compares, and whether a higher value is better.
HIGHER_IS_BETTER = {"best_val_acc": True, "test_acc": True, "train_loss_last": False}
PANELS = ("plain", "residual")


def spread(values: Sequence[float]) -> dict[str, Any] | None:
    """``{"n", "mean", "std", "min", "max", "values"}`` of ``values``; ``std`` is None for one value; None if empty."""
    if not values:
        return None
    v = np.asarray(values, dtype=np.float64)
    return {"n": int(len(v)), "mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else None,
            "min": float(v.min()), "max": float(v.max()), "values": [float(x) for x in v]}


def _no_spread(*samples: np.ndarray) -> bool:
    """True when every sample is constant (a t statistic would divide by zero)."""
    return all(np.ptp(s) <= 1e-12 for s in samples)


def compare(a: Mapping[int, float], b: Mapping[int, float], *, expected_sign: int) -> dict[str, Any]:
    """Cell B against cell A on one metric; ``a``/``b`` map seed -> value (finished seeds only).

    ``expected_sign`` is the sign of B - A that the paper's finding predicts (+1 or -1). Returns ``test``
    (``"paired"``, ``"welch"`` or None), the seeds used, ``mean_a``/``mean_b``/``diff`` (B - A), ``t``, ``df``,
    ``p``, ``ci95`` ([low, high] of B - A), ``holds`` of ``paired`` seeds (ties, ``|B - A| <= TIE``, do not
    hold) and a ``verdict``: ``as the paper``/``against the paper`` when the interval excludes 0, else
    ``not settled``; with one seed, the sign of that seed (``one seed``).
    """
    from scipy import stats

    common = sorted(set(a) & set(b))
    d = np.array([b[s] - a[s] for s in common], dtype=np.float64)
    out: dict[str, Any] = {"expected_sign": expected_sign, "test": None, "note": None, "t": None, "df": None,
                           "p": None, "ci95": None, "paired": len(common),
                           "holds": int((d * expected_sign > TIE).sum()), "ties": int((np.abs(d) <= TIE).sum())}
    if len(common) >= 2:
        xa, xb = (np.array([m[s] for s in common], dtype=np.float64) for m in (a, b))
        out.update(test="paired", seeds=common)
    else:
        xa, xb = (np.array([m[s] for s in sorted(m)], dtype=np.float64) for m in (a, b))
        out.update(test="welch" if len(xa) >= 2 and len(xb) >= 2 else None, seeds=None,
                   seeds_a=sorted(a), seeds_b=sorted(b))
    if not len(xa) or not len(xb):
        out.update(mean_a=None, mean_b=None, diff=None, verdict="not run", test=None)
        return out
    out.update(mean_a=float(xa.mean()), mean_b=float(xb.mean()), diff=float(xb.mean() - xa.mean()))
    if out["test"] is not None and _no_spread(*((d,) if out["test"] == "paired" else (xa, xb))):
        out.update(test=None, note="no spread over the seeds: no t-test")
    if out["test"] is not None:
        with warnings.catch_warnings():  # near-identical samples: scipy warns, the numbers stand
            warnings.simplefilter("ignore", RuntimeWarning)
            res = stats.ttest_rel(xb, xa) if out["test"] == "paired" else stats.ttest_ind(xb, xa, equal_var=False)
            ci = res.confidence_interval(CONFIDENCE)
        out.update(t=float(res.statistic), df=float(res.df), p=float(res.pvalue), ci95=[float(ci.low), float(ci.high)])
    out["verdict"] = verdict(out)
    return out


def verdict(c: Mapping[str, Any]) -> str:
    """What a comparison says about the paper's direction (see :func:`compare`)."""
    sign = c["expected_sign"]
    if c["ci95"] is not None:
        low, high = (x * sign for x in c["ci95"])
        if min(low, high) > 0:
            return "as the paper"
        if max(low, high) < 0:
            return "against the paper"
        return "not settled (the 95% CI includes 0)"
    if c["paired"] == 1 and c["test"] is None and c["note"] is None:
        return "one seed: " + ("as the paper" if c["holds"] else "tie" if c["ties"] else "against the paper")
    n = c["paired"]
    return f"no test; the paper's direction holds in {c['holds']} of {n} seed{'s' if n != 1 else ''}"


def questions(cells: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, Mapping, Mapping, str]]:
    """The paper's comparisons among ``cells`` (dicts with model, framework, layout, depth), per framework:
    ``(framework, kind, cell A, cell B, what the paper finds for B)``.

    Within plain and within residual nets each deeper net against the next shallower one (the paper: the
    deeper plain net is worse, the deeper residual net better), and residual against plain at each depth
    (the paper: better).
    """
    out = []
    for fw in dict.fromkeys(c["framework"] for c in cells):
        by = {(c["layout"], c["depth"]): c for c in cells if c["framework"] == fw}
        depths = sorted({d for _, d in by})
        for layout in PANELS:
            ds = [d for d in depths if (layout, d) in by]
            for shallow, deep in zip(ds, ds[1:]):
                out.append((fw, f"{layout}: deeper vs shallower", by[(layout, shallow)], by[(layout, deep)],
                            "worse" if layout == "plain" else "better"))
        for d in depths:
            if ("plain", d) in by and ("residual", d) in by:
                out.append((fw, "residual vs plain", by[("plain", d)], by[("residual", d)], "better"))
    return out


def expected_sign(metric: str, paper: str) -> int:
    """The sign of B - A on ``metric`` when B is ``paper`` (better/worse) than A."""
    return (1 if HIGHER_IS_BETTER[metric] else -1) * (1 if paper == "better" else -1)


def comparisons(cells: Sequence[Mapping[str, Any]], values: Mapping[tuple[str, str], Mapping[str, Mapping[int, float]]]
                ) -> list[dict[str, Any]]:
    """Every paper comparison (:func:`questions`) on every metric of :data:`HIGHER_IS_BETTER`.

    ``values[(model, framework)][metric]`` maps seed -> value over the cell's finished seeds.
    """
    out = []
    for metric in HIGHER_IS_BETTER:
        for fw, kind, a, b, paper in questions(cells):
            va, vb = (values[(c["model"], c["framework"])][metric] for c in (a, b))
            out.append({"metric": metric, "framework": fw, "kind": kind, "a": a["model"], "b": b["model"],
                        "paper": paper, **compare(va, vb, expected_sign=expected_sign(metric, paper))})
    return out
