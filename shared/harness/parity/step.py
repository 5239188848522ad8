"""The one-step SGD check: from identical weights, on the same batch, both frameworks take one step in train mode in
float64, and the updated parameters and BN running statistics are compared (docs/harness.md, "Parity").

A probe step from perturbed weights tells a chaotic model (plain152) from a wrong one; the running variances are
compared after torch's unbiased-estimator gap, ``momentum * var_biased / (n - 1)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.harness.parity.check import REL_TOL, bound, diff_entry
from shared.io import load_weights
from shared.names import canonical_weights
from shared.spec import ModelSpec

STEP_REL_TOL = 1e-4  # ||Δw_torch - Δw_keras|| / ||Δw_torch||, float64 on both sides
PROBE = 1e-14  # relative weight perturbation of the sensitivity probe (a few float64 roundings)
# BN in torch: running = (1 - m) * running + m * batch_stat with m = 0.1 (Keras momentum 0.9 = 1 - m).
BN_MOMENTUM = 0.1


@dataclass(frozen=True)
class StepConfig:
    """One SGD step: PyTorch semantics (coupled weight decay, v = mu * v + g; w -= lr * v)."""

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4


def _update(w1: dict[str, np.ndarray], w0: dict[str, np.ndarray], keys: list[str]) -> np.ndarray:
    return np.concatenate([(w1[k].astype(np.float64) - w0[k].astype(np.float64)).ravel() for k in keys])


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||a||, inf when undefined."""
    norm = float(np.linalg.norm(a))
    rel = float(np.linalg.norm(a - b) / norm) if norm and np.isfinite(norm) else float("inf")
    return rel if np.isfinite(rel) else float("inf")


def _variance_entry(key: str, a: np.ndarray, b: np.ndarray, old: np.ndarray, n: int, counts_agree: bool) -> dict:
    """torch's unbiased running-variance update against Keras' biased one: the gap is predicted exactly."""
    predicted = (b - (1 - BN_MOMENTUM) * old) / (n - 1)
    raw = a - b
    residual = float(np.max(np.abs(raw - predicted)))
    tol = bound(a)
    return {"name": key, "n": n, "counts_agree": counts_agree, "max_abs": float(np.max(np.abs(raw))),
            "max_rel": float(np.max(np.abs(raw) / np.abs(a))),
            "predicted_rel": float(np.max(np.abs(predicted) / np.abs(a))),
            "momentum_over_n_minus_1": BN_MOMENTUM / (n - 1), "residual": residual, "bound": tol,
            "ratio": residual / tol, "ok": bool(residual <= tol and counts_agree)}


def _worst(entries: list[dict[str, Any]]) -> dict[str, Any]:
    inf = float("inf")
    return max(entries, key=lambda e: (not e["ok"], inf if e["ratio"] is None else e["ratio"])) if entries else {}


def compare_train_step(
    spec: ModelSpec, w0: dict[str, np.ndarray], torch_path: str, keras_path: str,
    reports: dict[str, dict[str, Any]], step: StepConfig, perturbed_path: str | None = None,
) -> dict[str, Any]:
    """Compare the weights after one SGD step; account for the unbiased/biased running variance.

    ``w0`` is the common starting point. Parameters: the relative norm error of the whole update
    ``||Δw_t - Δw_k|| / ||Δw_t||`` must be at most STEP_REL_TOL (unless the PyTorch step from
    ``perturbed_path``'s weights shows the update itself is that sensitive); per-tensor ``max|w_t - w_k|``
    is reported. Running means: the eval bound. Running variances: the raw difference is reported next to
    its prediction ``(keras_new - (1-m) * old) / (n - 1)``; the residual after it must be within the bound.
    """
    w_t, _ = load_weights(torch_path)
    w_k, _ = load_weights(keras_path)
    counts_t = reports["torch"]["train_step"]["bn_counts"]
    counts_k = reports["keras"]["train_step"]["bn_counts"]
    params, means, variances = [], [], []
    for w in canonical_weights(spec):
        a, b, old = (x[w.key].astype(np.float64) for x in (w_t, w_k, w0))
        layer, leaf = w.key.rsplit(".", 1)
        if leaf == "running_var":
            variances.append(_variance_entry(w.key, a, b, old, int(counts_t[layer]),
                                             counts_t[layer] == counts_k[layer]))
        elif leaf == "running_mean":
            means.append(diff_entry(w.key, a, b))
        else:
            params.append({**diff_entry(w.key, a, b), "max_update": float(np.max(np.abs(a - old)))})
    keys = [w.key for w in canonical_weights(spec) if w.trainable]
    upd_t = _update(w_t, w0, keys)
    rel_update = _rel(upd_t, _update(w_k, w0, keys))
    sensitivity = None
    if perturbed_path is not None:
        sensitivity = _rel(upd_t, _update(load_weights(perturbed_path)[0], w0, keys))
    update_ok = rel_update <= STEP_REL_TOL
    resolvable = sensitivity is None or sensitivity <= STEP_REL_TOL
    loss_t, loss_k = reports["torch"]["train_step"]["loss"], reports["keras"]["train_step"]["loss"]
    loss_ok = abs(loss_t - loss_k) <= REL_TOL * max(1.0, abs(loss_t))
    stats_ok = all(e["ok"] for e in means + variances)
    largest = lambda entries, key: max((float("inf") if e[key] is None else e[key] for e in entries), default=0.0)
    return {
        "step": step.__dict__, "dtype": reports["torch"]["train_step"].get("dtype", "float32"),
        "loss": {"torch": loss_t, "keras": loss_k, "ok": bool(loss_ok)},
        "params": {"worst": _worst(params), "max_abs": largest(params, "max_abs"),
                   "max_update": largest(params, "max_update"), "rel_update_error": rel_update,
                   "tol": STEP_REL_TOL, "sensitivity": sensitivity, "probe": PROBE, "resolvable": resolvable,
                   "ok": bool(update_ok)},
        "running_mean": {"worst": _worst(means), "max_abs": largest(means, "max_abs"),
                         "ok": all(e["ok"] for e in means)},
        "running_var": {
            "worst": _worst(variances),
            "max_rel_raw": max((e["max_rel"] for e in variances), default=0.0),
            "max_rel_predicted": max((e["predicted_rel"] for e in variances), default=0.0),
            "max_residual": max((e["residual"] for e in variances), default=0.0),
            "n_range": [min((e["n"] for e in variances), default=0), max((e["n"] for e in variances), default=0)],
            "ok": all(e["ok"] for e in variances),
        },
        # A step no implementation can reproduce (docs/harness.md, "Parity") is neither passed nor failed: its
        # train-mode forward is as chaotic as its update, so the running statistics are reported, not judged.
        "verdict": "pass" if loss_ok and stats_ok and update_ok else "fail" if resolvable else "unresolvable",
        "ok": bool((loss_ok and stats_ok and update_ok) or not resolvable),
    }
