"""Numerical parity between the PyTorch and the Keras ResNet, each run in its own process.

One side randomizes every parameter and BN running statistic (so a swapped or missing mapping
cannot pass by accident), writes canonical safetensors and runs a batch; the other side loads that
file and runs the same batch (NCHW vs NHWC). This module compares the outputs with numpy:

* **eval mode**: logits and every stage's output (``shared.names.stage_names``); when a stage
  diverges, a second pass captures every canonical layer up to it and names the first layer that
  diverges. Bound: ``max|a - b| <= 1e-4 * max(1, max|a|)`` in float32.
* **train mode**: one SGD step (lr, momentum, PyTorch-style coupled weight decay) from identical
  weights on the same batch; the updated parameters and BN running statistics are compared. PyTorch
  updates the running variance with the *unbiased* batch variance, Keras with the biased one, so
  ``torch - keras = momentum * var_biased / (n - 1)`` exactly (``n`` = values per channel,
  batch x H x W); the report states that expected difference and checks what is left after it.

    python -m shared.harness.parity --model resnet50 [--direction both] [--size 64] [--batch 2]

Framework work runs in ``python -m pytorch_impl.parity JOB.json`` / ``keras_impl.parity``.
This module imports neither torch nor tensorflow.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.backends import keras_env
from shared.io import atomic_write_json, atomic_write_text, load_weights, save_weights
from shared.names import canonical_layers, canonical_weights, stage_names, stage_output_layer
from shared.spec import SHORTCUTS, ModelSpec, get_spec

ROOT = Path(__file__).resolve().parents[2]
FRAMEWORKS = ("torch", "keras")
PACKAGES = {"torch": "pytorch_impl", "keras": "keras_impl"}
DIRECTIONS = {"torch2keras": ("torch", "keras"), "keras2torch": ("keras", "torch")}
REL_TOL = 1e-4  # max|a - b| <= REL_TOL * max(1, max|a|)
IMAGENET_PARITY_SIZE = 64  # ImageNet models are checked at 64x64 (any size >= 32 exercises every layer)
# Train step: the parameter update may differ by 10 % in norm. With BN in train mode the gradient grows
# geometrically with depth at random initialization (Yang et al. 2019, "A mean field theory of batch
# normalization"), and float32 rounding with it: measured here 1e-6 of the update for resnet20,
# 0.15 % for resnet18, 3 % for plain34 and 7 % for resnet50 at 64x64, batch 2 (2x2 values per channel
# in layer4). Shallow nets check the optimizer tightly (tests); deep ones only against gross errors.
STEP_REL_TOL = 1e-1
# BN in torch: running = (1 - m) * running + m * batch_stat with m = 0.1 (Keras momentum 0.9 = 1 - m).
BN_MOMENTUM = 0.1


@dataclass(frozen=True)
class StepConfig:
    """One SGD step: PyTorch semantics (coupled weight decay, v = mu * v + g; w -= lr * v)."""

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4


# Randomization ---------------------------------------------------------------------------------
def randomize_arrays(spec: ModelSpec, arrays: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """Fresh random values for every canonical tensor, shaped like ``arrays`` (PyTorch layout).

    Convolutions He-normal on fan-in, BN gamma U(0.5, 1.5), beta N(0, 0.2), running mean
    N(0, 0.2), running variance U(0.5, 2), the classifier N(0, 1/fan_in) with bias N(0, 0.2):
    every value differs from its neighbours, so a swapped mapping changes the function.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for w in canonical_weights(spec):
        shape = arrays[w.key].shape
        leaf = w.key.rsplit(".", 1)[1]
        if w.kind == "conv":
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        elif w.kind == "linear" and leaf == "weight":
            value = rng.normal(0.0, np.sqrt(1.0 / shape[1]), shape)
        elif leaf == "weight":  # BN gamma
            value = rng.uniform(0.5, 1.5, shape)
        elif leaf == "running_var":
            value = rng.uniform(0.5, 2.0, shape)
        else:  # BN beta, running mean, classifier bias
            value = rng.normal(0.0, 0.2, shape)
        out[w.key] = value.astype(np.float32)
    return out


# Worker jobs -----------------------------------------------------------------------------------
def run_worker(framework: str, jobs: list[dict[str, Any]], workdir: Path, *,
               timeout: float = 3600) -> list[dict[str, Any]]:
    """Run one framework's parity worker on a list of jobs (one process); return their reports."""
    if framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r}; valid choices: {', '.join(FRAMEWORKS)}")
    workdir.mkdir(parents=True, exist_ok=True)
    job_path = workdir / f"job-{framework}-{len(list(workdir.glob('job-*')))}.json"
    report_path = job_path.with_suffix(".report.json")
    atomic_write_json(job_path, {"jobs": jobs, "report": str(report_path)})
    env = keras_env()
    proc = subprocess.run(
        [sys.executable, "-m", f"{PACKAGES[framework]}.parity", str(job_path)], cwd=ROOT,
        capture_output=True, text=True, timeout=timeout, env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{PACKAGES[framework]}.parity failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    return json.loads(report_path.read_text(encoding="utf-8"))


def make_batch(spec: ModelSpec, batch: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A standard-normal NCHW float32 batch and integer labels."""
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((batch, spec.in_channels, size, size)).astype(np.float32)
    y = rng.integers(0, spec.num_classes, batch).astype(np.int64)
    return x, y


def to_nchw(array: np.ndarray, framework: str) -> np.ndarray:
    """A framework's output in NCHW with trailing 1x1 spatial dims dropped (avgpool: (N,C,1,1) ~ (N,C))."""
    if framework == "keras" and array.ndim == 4:
        array = array.transpose(0, 3, 1, 2)
    if array.ndim == 4 and array.shape[2:] == (1, 1):
        array = array.reshape(array.shape[:2])
    return array


def bound(reference: np.ndarray) -> float:
    """The tolerance for comparing against ``reference``: REL_TOL * max(1, max|reference|)."""
    return REL_TOL * max(1.0, float(np.max(np.abs(reference))) if reference.size else 1.0)


def diff_entry(name: str, a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """max|a - b| against the bound, for one named tensor (``a`` is the reference side)."""
    if a.shape != b.shape:
        return {"name": name, "max_abs": None, "max_ref": None, "bound": None, "ok": False,
                "note": f"shape {list(a.shape)} vs {list(b.shape)}"}
    d = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
    if not (np.isfinite(d) and np.all(np.isfinite(a))):
        return {"name": name, "max_abs": None, "max_ref": None, "bound": None, "ok": False,
                "note": "non-finite values (NaN/inf)"}
    tol = bound(a)
    return {"name": name, "max_abs": d, "max_ref": float(np.max(np.abs(a))) if a.size else 0.0,
            "bound": tol, "ok": bool(d <= tol)}


def _forward_outputs(path: str | Path, framework: str) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: to_nchw(f[k], framework) for k in f.files}


def _layers_up_to(spec: ModelSpec, last: str) -> list[str]:
    names = [layer.name for layer in canonical_layers(spec)]
    return names[: names.index(last) + 1]


# Parity ---------------------------------------------------------------------------------------
@dataclass
class Case:
    """One parity check: a spec, a transfer direction and (for tests) a weight-file edit."""

    spec: ModelSpec
    direction: str = "torch2keras"
    tamper: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None


def run_parity(spec: ModelSpec, direction: str = "torch2keras", **kwargs: Any) -> dict[str, Any]:
    """Randomize on the source side, transfer, compare eval outputs (and one SGD step).

    Keyword arguments as :func:`run_parity_cases` (``tamper`` goes into the case).
    """
    tamper = kwargs.pop("tamper", None)
    return run_parity_cases([Case(spec, direction, tamper)], **kwargs)[0]


def run_parity_cases(
    cases: list[Case],
    *,
    batch: int = 2,
    size: int | None = None,
    seed: int = 0,
    train_step: StepConfig | None = StepConfig(),
    summaries: bool = False,
    workdir: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Run many parity checks with three framework processes in all (not per case).

    Phase 1, PyTorch: the torch→keras sources randomize, save and run; phase 2, Keras: the
    torch→keras targets load and run, the keras→torch sources randomize, save and run; phase 3,
    PyTorch: the keras→torch targets. ``tamper(arrays) -> arrays``, when a case has one, edits the
    transferred file before the target reads it (tests use it to prove that a wrong mapping fails).
    ``summaries=True`` also asks each worker for its summary JSON (``result["summaries"]``).
    """
    for case in cases:
        if case.direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {case.direction!r}; valid choices: {', '.join(DIRECTIONS)}")
    with tempfile.TemporaryDirectory(prefix="parity-") as tmp:
        root = Path(workdir) if workdir else Path(tmp)
        plans = [_plan(case, root / f"case{i}", batch, size, seed, train_step, summaries)
                 for i, case in enumerate(cases)]
        phases: list[tuple[str, list[tuple[dict, str]]]] = [
            ("torch", [(p, "src") for p in plans if p["src"] == "torch"]),
            ("keras", [(p, "dst") for p in plans if p["src"] == "torch"]
             + [(p, "src") for p in plans if p["src"] == "keras"]),
            ("torch", [(p, "dst") for p in plans if p["src"] == "keras"]),
        ]
        for framework, work in phases:
            if not work:
                continue
            for plan, role in work:
                if role == "dst" and plan["case"].tamper is not None:
                    arrays, meta = load_weights(plan["w0"])
                    save_weights(plan["transferred"], plan["case"].tamper(dict(arrays)), meta)
            reports = run_worker(framework, [plan["jobs"][role] for plan, role in work], root)
            for (plan, _), report in zip(work, reports):
                plan["reports"][framework] = report
        results = [_analyse(plan, train_step) for plan in plans]
        # A second pass names the first diverging layer: every layer up to the first bad stage.
        diverging = [(plan, r) for plan, r in zip(plans, results) if r["eval"]["bad_stage"]]
        if diverging:
            for framework in FRAMEWORKS:
                jobs = []
                for plan, r in diverging:
                    layers = _layers_up_to(plan["spec"], r["eval"]["bad_stage"])
                    weights = plan["w0"] if framework == plan["src"] else plan["transferred"]
                    jobs.append({"spec": plan["spec"].to_dict(), "weights": str(weights),
                                 "forward": {"input": str(plan["inputs"][framework]), "layers": layers,
                                             "out": str(plan["dir"] / f"layers-{framework}.npz")}})
                run_worker(framework, jobs, root)
            for plan, r in diverging:
                r["eval"]["first_diverging_layer"] = _first_diverging(plan, r["eval"]["bad_stage"])
        for r in results:
            del r["eval"]["bad_stage"]
        return results


def _plan(case: Case, work: Path, batch: int, size: int | None, seed: int, step: StepConfig | None,
          summaries: bool) -> dict[str, Any]:
    """The files and the two worker jobs of one case."""
    spec = case.spec
    src, dst = DIRECTIONS[case.direction]
    size = size or default_size(spec)
    work.mkdir(parents=True, exist_ok=True)
    x, y = make_batch(spec, batch, size, seed)
    inputs = {"torch": work / "x_nchw.npy", "keras": work / "x_nhwc.npy"}
    np.save(inputs["torch"], x)
    np.save(inputs["keras"], x.transpose(0, 2, 3, 1))
    np.save(work / "y.npy", y)
    w0 = work / "w0.safetensors"
    transferred = w0 if case.tamper is None else work / "w0-tampered.safetensors"
    stage_layers = [stage_output_layer(spec, s) for s in stage_names(spec)]
    jobs = {}
    for role, side in (("src", src), ("dst", dst)):
        job: dict[str, Any] = {
            "spec": spec.to_dict(),
            "forward": {"input": str(inputs[side]), "layers": stage_layers, "out": str(work / f"eval-{side}.npz")},
        }
        if summaries:
            job["summary"] = str(work / f"summary-{side}.json")
        if role == "src":
            job["randomize"] = seed + (1 if src == "keras" else 0)  # each direction its own weights
            job["save_weights"] = str(w0)
        else:
            job["weights"] = str(transferred)
        if step is not None:
            job["train_step"] = {
                "input": str(inputs[side]), "labels": str(work / "y.npy"), "lr": step.lr,
                "momentum": step.momentum, "weight_decay": step.weight_decay,
                "out": str(work / f"w1-{side}.safetensors"),
            }
        jobs[role] = job
    return {"case": case, "spec": spec, "src": src, "dst": dst, "dir": work, "inputs": inputs, "w0": w0,
            "transferred": transferred, "jobs": jobs, "reports": {}, "batch": batch, "size": size, "seed": seed,
            "stage_layers": stage_layers, "summaries": summaries}


def _analyse(plan: dict[str, Any], step: StepConfig | None) -> dict[str, Any]:
    spec, src, dst, work = plan["spec"], plan["src"], plan["dst"], plan["dir"]
    outs = {fw: _forward_outputs(work / f"eval-{fw}.npz", fw) for fw in FRAMEWORKS}
    ref, other = outs[src], outs[dst]
    stages = [{**diff_entry(layer, ref[layer], other[layer]), "stage": stage}
              for stage, layer in zip(stage_names(spec), plan["stage_layers"])]
    logits = diff_entry("logits", ref["logits"], other["logits"])
    bad = [s for s in stages if not s["ok"]]
    result: dict[str, Any] = {
        "model": spec.name, "spec": spec.to_dict(), "direction": plan["case"].direction, "source": src,
        "target": dst, "batch": plan["batch"], "size": plan["size"], "seed": plan["seed"], "rel_tol": REL_TOL,
        "tampered": plan["case"].tamper is not None,
        "eval": {"logits": logits, "stages": stages, "first_diverging_layer": None,
                 "bad_stage": bad[0]["name"] if bad else None, "ok": bool(logits["ok"] and not bad)},
    }
    if step is not None:
        keras_start = plan["w0"] if src == "keras" else plan["transferred"]
        result["train"] = compare_train_step(
            spec, load_weights(keras_start)[0], str(work / "w1-torch.safetensors"),
            str(work / "w1-keras.safetensors"), plan["reports"], step,
        )
    result["ok"] = bool(result["eval"]["ok"] and result.get("train", {"ok": True})["ok"])
    if plan["summaries"]:
        result["summaries"] = {fw: json.loads((work / f"summary-{fw}.json").read_text(encoding="utf-8"))
                               for fw in FRAMEWORKS}
    return result


def _first_diverging(plan: dict[str, Any], stage_layer: str) -> dict[str, Any]:
    """The first canonical layer (forward order) whose outputs differ beyond the bound."""
    outs = {fw: _forward_outputs(plan["dir"] / f"layers-{fw}.npz", fw) for fw in FRAMEWORKS}
    for name in _layers_up_to(plan["spec"], stage_layer):
        entry = diff_entry(name, outs[plan["src"]][name], outs[plan["dst"]][name])
        if not entry["ok"]:
            return entry
    return {"name": stage_layer, "note": "only the stage output diverges"}


def compare_train_step(
    spec: ModelSpec, w0: dict[str, np.ndarray], torch_path: str, keras_path: str,
    reports: dict[str, dict[str, Any]], step: StepConfig,
) -> dict[str, Any]:
    """Compare the weights after one SGD step; account for the unbiased/biased running variance.

    ``w0`` is the Keras side's starting point (what it loaded or randomized).

    Parameters: the relative norm error of the whole update ``||Δw_t - Δw_k|| / ||Δw_t||`` must be at
    most STEP_REL_TOL; per-tensor ``max|w_t - w_k|`` is reported. Running means: the same bound. Running variances:
    the raw difference is reported next to its prediction ``(keras_new - (1-m) * old) / (n - 1)``
    (``m * var_biased / (n - 1)``), and the residual after subtracting it must be within the bound.
    """
    w_t, _ = load_weights(torch_path)
    w_k, _ = load_weights(keras_path)
    counts_t = reports["torch"]["train_step"]["bn_counts"]
    counts_k = reports["keras"]["train_step"]["bn_counts"]
    params, means, variances = [], [], []
    for w in canonical_weights(spec):
        a, b, old = w_t[w.key].astype(np.float64), w_k[w.key].astype(np.float64), w0[w.key].astype(np.float64)
        tol = bound(a)
        leaf = w.key.rsplit(".", 1)[1]
        if leaf == "running_var":
            layer = w.key.rsplit(".", 1)[0]
            n = int(counts_t[layer])
            predicted = (b - (1 - BN_MOMENTUM) * old) / (n - 1)
            raw = a - b
            residual = float(np.max(np.abs(raw - predicted)))
            variances.append({
                "name": w.key, "n": n, "counts_agree": counts_t[layer] == counts_k[layer],
                "max_abs": float(np.max(np.abs(raw))),
                "max_rel": float(np.max(np.abs(raw) / np.abs(a))),
                "predicted_rel": float(np.max(np.abs(predicted) / np.abs(a))),
                "momentum_over_n_minus_1": BN_MOMENTUM / (n - 1),
                "residual": residual, "bound": tol,
                "ok": bool(residual <= tol and counts_t[layer] == counts_k[layer]),
            })
        elif leaf == "running_mean":
            means.append(diff_entry(w.key, a, b))
        else:
            entry = diff_entry(w.key, a, b)
            entry["max_update"] = float(np.max(np.abs(a - old)))
            params.append(entry)
    # Parameters: the relative error of the whole update, ||Δw_torch - Δw_keras|| / ||Δw_torch||.
    keys = [w.key for w in canonical_weights(spec) if w.trainable]
    upd_t = np.concatenate([(w_t[k].astype(np.float64) - w0[k]).ravel() for k in keys])
    upd_k = np.concatenate([(w_k[k].astype(np.float64) - w0[k]).ravel() for k in keys])
    norm = float(np.linalg.norm(upd_t))
    rel_update = float(np.linalg.norm(upd_t - upd_k) / norm) if norm and np.isfinite(norm) else float("inf")
    if not np.isfinite(rel_update):
        rel_update = float("inf")
    inf = float("inf")

    def worst(entries: list[dict[str, Any]], key: str = "max_abs") -> dict[str, Any]:
        ratio = lambda e: inf if e[key] is None or not e["bound"] else e[key] / e["bound"]
        return max(entries, key=lambda e: (not e["ok"], ratio(e))) if entries else {}

    def largest(entries: list[dict[str, Any]], key: str) -> float:
        return max((inf if e[key] is None else e[key] for e in entries), default=0.0)

    loss_t, loss_k = reports["torch"]["train_step"]["loss"], reports["keras"]["train_step"]["loss"]
    loss_ok = abs(loss_t - loss_k) <= REL_TOL * max(1.0, abs(loss_t))
    ok = loss_ok and rel_update <= STEP_REL_TOL and all(e["ok"] for e in means + variances)
    return {
        "step": step.__dict__, "loss": {"torch": loss_t, "keras": loss_k, "ok": bool(loss_ok)},
        "params": {"worst": worst(params), "max_abs": largest(params, "max_abs"),
                   "max_update": largest(params, "max_update"), "rel_update_error": rel_update,
                   "tol": STEP_REL_TOL, "ok": bool(rel_update <= STEP_REL_TOL)},
        "running_mean": {"worst": worst(means), "max_abs": largest(means, "max_abs"),
                         "ok": all(e["ok"] for e in means)},
        "running_var": {
            "worst": worst(variances, "residual"),
            "max_rel_raw": max((e["max_rel"] for e in variances), default=0.0),
            "max_rel_predicted": max((e["predicted_rel"] for e in variances), default=0.0),
            "max_residual": max((e["residual"] for e in variances), default=0.0),
            "n_range": [min((e["n"] for e in variances), default=0), max((e["n"] for e in variances), default=0)],
            "ok": all(e["ok"] for e in variances),
        },
        "ok": bool(ok),
    }


def default_size(spec: ModelSpec) -> int:
    """The input size parity runs at: the spec's own for CIFAR models, 64 for ImageNet ones."""
    return spec.input_size if spec.stem == "cifar" else min(spec.input_size, IMAGENET_PARITY_SIZE)


# Reports --------------------------------------------------------------------------------------
def _arrow(result: dict[str, Any]) -> str:
    return f"{result['source']}→{result['target']}"


def eval_line(result: dict[str, Any]) -> str:
    """One line: the eval-mode logits difference against its bound, per-stage worst, first divergence."""
    ev = result["eval"]
    lg = ev["logits"]
    mark = "✓" if ev["ok"] else "✗"
    head = (f"parity {_arrow(result)} eval (random weights + BN stats, batch {result['batch']} @ "
            f"{result['size']}x{result['size']}, float32): ")
    if lg["max_abs"] is None:
        line = f"{head}✗ logits: {lg.get('note', '')}"
    else:
        finite = [s for s in ev["stages"] if s["max_abs"] is not None]
        worst_stage = max(finite, key=lambda s: s["max_abs"] / s["bound"]) if finite else None
        line = (
            f"{head}max|Δlogits| {lg['max_abs']:.2e} {'≤' if lg['ok'] else '>'} {lg['bound']:.2e} "
            f"(=1e-4·max(1, {lg['max_ref']:.3g})) {mark}"
        )
        if worst_stage:
            line += f"; worst stage {worst_stage['stage']} {worst_stage['max_abs']:.2e}"
    if ev["first_diverging_layer"]:
        fd = ev["first_diverging_layer"]
        detail = (f" (max|Δ| {fd['max_abs']:.3g} > {fd['bound']:.3g})" if fd.get("max_abs") is not None
                  else f" ({fd.get('note', '')})")
        line += f"; first diverging layer: {fd['name']}{detail}"
    return line


def train_line(result: dict[str, Any]) -> str:
    """One line: the SGD step's parameter / running-stat differences and the expected variance gap."""
    tr = result.get("train")
    if not tr:
        return ""
    mark = "✓" if tr["ok"] else "✗"
    rv = tr["running_var"]
    return (
        f"parity {_arrow(result)} train (1 SGD step lr {tr['step']['lr']} momentum {tr['step']['momentum']} "
        f"wd {tr['step']['weight_decay']}): update error {tr['params']['rel_update_error']:.1e} (norm, "
        f"≤ {STEP_REL_TOL:g}), params max|Δ| {tr['params']['max_abs']:.2e} (updates up to "
        f"{tr['params']['max_update']:.2e}), running_mean max|Δ| {tr['running_mean']['max_abs']:.2e}, "
        f"running_var differs by up to {rv['max_rel_raw']:.2%} as expected (torch unbiased, Keras biased: "
        f"predicted {rv['max_rel_predicted']:.2%}, n={rv['n_range'][0]}..{rv['n_range'][1]}), "
        f"residual {rv['max_residual']:.2e} {mark}"
    )


def render_markdown(results: list[dict[str, Any]]) -> str:
    """A parity report: per direction, stage table, logits, first divergence, SGD step."""
    lines = []
    for r in results:
        lines += [f"### {r['model']}: {_arrow(r)}", "", eval_line(r), ""]
        lines += ["| stage | layer | max\\|Δ\\| | bound | ok |", "|---|---|---:|---:|:-:|"]
        for s in r["eval"]["stages"] + [{**r["eval"]["logits"], "stage": "logits"}]:
            d = "—" if s["max_abs"] is None else f"{s['max_abs']:.2e}"
            b = "—" if s["bound"] is None else f"{s['bound']:.2e}"
            lines.append(f"| {s['stage']} | {s['name']} | {d} | {b} | {'✓' if s['ok'] else '✗'} |")
        lines.append("")
        if "train" in r:
            tr = r["train"]
            rv = tr["running_var"]
            lines += [
                train_line(r), "",
                f"- loss: torch {tr['loss']['torch']:.6f}, keras {tr['loss']['keras']:.6f}",
                f"- parameter update (incl. coupled weight decay): relative norm error "
                f"{tr['params']['rel_update_error']:.2e} (≤ {STEP_REL_TOL:g}); "
                f"max|Δ| {tr['params']['max_abs']:.2e}, worst "
                f"{tr['params']['worst'].get('name')} (bound {tr['params']['worst'].get('bound', 0):.2e})",
                f"- BN running mean: max|Δ| {tr['running_mean']['max_abs']:.2e}",
                f"- BN running variance: expected difference. PyTorch uses the unbiased batch variance "
                f"(×n/(n−1)), Keras the biased one, so torch − keras = {BN_MOMENTUM}·var_batch/(n−1): up to "
                f"{rv['max_rel_raw']:.3%} of the value here (predicted {rv['max_rel_predicted']:.3%}; "
                f"momentum/(n−1) ranges over n = {rv['n_range'][0]}..{rv['n_range'][1]}); after subtracting "
                f"the prediction the residual is {rv['max_residual']:.2e}.",
                "",
            ]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m shared.harness.parity", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet20", help="registry name (resnet20, resnet50, plain34, ...)")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--shortcut", choices=SHORTCUTS, default=None)
    p.add_argument("--direction", choices=(*DIRECTIONS, "both"), default="both")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=None,
                   help=f"input size (default: the spec's for CIFAR models, {IMAGENET_PARITY_SIZE} for ImageNet)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-train-step", action="store_true", help="only the eval-mode comparison")
    p.add_argument("--out-dir", default="artifacts/parity", help="where <model>.md and <model>.json go")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        spec = get_spec(args.model, num_classes=args.num_classes, shortcut=args.shortcut)
    except ValueError as e:
        parser.error(str(e))
    if args.batch < 2:
        parser.error(f"--batch must be >= 2 (BN needs a batch variance); got {args.batch}")
    directions = list(DIRECTIONS) if args.direction == "both" else [args.direction]
    step = None if args.no_train_step else StepConfig()
    results = run_parity_cases([Case(spec, d) for d in directions], batch=args.batch, size=args.size,
                               seed=args.seed, train_step=step)
    for r in results:
        print(eval_line(r))
        if "train" in r:
            print(train_line(r))
    out = Path(args.out_dir)
    atomic_write_text(out / f"{spec.name}.md", f"# Parity: {spec.name}\n\n{render_markdown(results)}")
    atomic_write_json(out / f"{spec.name}.json", results)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
