"""Eval-mode comparison of two frameworks' outputs: each tensor against a bound from its own scale (docs/harness.md).

``max|a - b| <= max(REL_TOL * max(1, max|a|), NOISE_FACTOR * noise)``, with ``a`` the source side and ``noise``
float32's own error at that tensor (the PyTorch side in float32 against float64).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from shared.names import canonical_layers, stage_names
from shared.spec import ModelSpec

REL_TOL = 1e-4  # max|a - b| <= REL_TOL * max(1, max|a|), float32
NOISE_FACTOR = 10  # ... or within 10x float32's own error at that tensor (PyTorch, float32 vs float64)
F64 = "float64:"  # key prefix of the PyTorch side's float64 outputs


def to_nchw(array: np.ndarray, framework: str) -> np.ndarray:
    """A framework's output in NCHW with trailing 1x1 spatial dims dropped (avgpool: (N,C,1,1) ~ (N,C))."""
    if framework == "keras" and array.ndim == 4:
        array = array.transpose(0, 3, 1, 2)
    if array.ndim == 4 and array.shape[2:] == (1, 1):
        array = array.reshape(array.shape[:2])
    return array


def bound(reference: np.ndarray, noise: float = 0.0) -> float:
    """The tolerance for comparing against ``reference``: REL_TOL * max(1, max|reference|), or
    NOISE_FACTOR times float32's own error ``noise`` at that tensor where that is larger."""
    scale = REL_TOL * max(1.0, float(np.max(np.abs(reference))) if reference.size else 1.0)
    return max(scale, NOISE_FACTOR * noise)


def float32_noise(outputs: dict[str, np.ndarray]) -> dict[str, float]:
    """max|a32 - a64| per tensor, from a PyTorch output file that holds both (``F64`` keys)."""
    return {k: float(np.max(np.abs(v.astype(np.float64) - outputs[F64 + k]))) if v.size else 0.0
            for k, v in outputs.items() if not k.startswith(F64) and F64 + k in outputs}


def diff_entry(name: str, a: np.ndarray, b: np.ndarray, noise: float = 0.0) -> dict[str, Any]:
    """max|a - b| against the bound, for one named tensor (``a`` is the reference side).

    ``ratio`` = max|a - b| / bound: below 1 passes; a mapping bug shows as a ratio far above 1.
    """
    if a.shape != b.shape:
        return {"name": name, "max_abs": None, "max_ref": None, "bound": None, "ratio": None, "ok": False,
                "note": f"shape {list(a.shape)} vs {list(b.shape)}"}
    d = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
    if not (np.isfinite(d) and np.all(np.isfinite(a))):
        return {"name": name, "max_abs": None, "max_ref": None, "bound": None, "ratio": None, "ok": False,
                "note": "non-finite values (NaN/inf)"}
    tol = bound(a, noise)
    return {"name": name, "max_abs": d, "max_ref": float(np.max(np.abs(a))) if a.size else 0.0,
            "float32_noise": noise, "bound": tol, "ratio": d / tol, "ok": bool(d <= tol)}


def load_outputs(path: str | Path, framework: str) -> dict[str, np.ndarray]:
    """A worker's ``.npz`` of layer outputs, in NCHW."""
    with np.load(path) as f:
        return {k: to_nchw(f[k], framework) for k in f.files}


def layers_up_to(spec: ModelSpec, last: str) -> list[str]:
    """Canonical layer names in forward order, up to and including ``last``."""
    names = [layer.name for layer in canonical_layers(spec)]
    return names[: names.index(last) + 1]


def compare_eval(spec: ModelSpec, stage_layers: list[str], ref: dict[str, np.ndarray],
                 other: dict[str, np.ndarray], noise: dict[str, float]) -> dict[str, Any]:
    """Every stage output and the logits, each against its own scale; ``bad_stage`` is the first failure."""
    stages = [{**diff_entry(layer, ref[layer], other[layer], noise.get(layer, 0.0)), "stage": stage}
              for stage, layer in zip(stage_names(spec), stage_layers)]
    logits = diff_entry("logits", ref["logits"], other["logits"], noise.get("logits", 0.0))
    bad = [s for s in stages if not s["ok"]]
    return {"logits": logits, "stages": stages, "max_logit": logits["max_ref"], "first_diverging_layer": None,
            "bad_stage": bad[0]["name"] if bad else None, "ok": bool(logits["ok"] and not bad)}


def first_diverging(spec: ModelSpec, stage_layer: str, ref: dict[str, np.ndarray],
                    other: dict[str, np.ndarray], noise: dict[str, float]) -> dict[str, Any]:
    """The first canonical layer (forward order) whose outputs differ beyond its bound."""
    for name in layers_up_to(spec, stage_layer):
        entry = diff_entry(name, ref[name], other[name], noise.get(name, 0.0))
        if not entry["ok"]:
            return entry
    return {"name": stage_layer, "note": "only the stage output diverges"}
