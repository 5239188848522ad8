"""Running parity cases: jobs for each framework's worker, three worker processes for any number of cases.

PyTorch draws and calibrates the weights, Keras loads and runs them, then PyTorch runs the keras→torch targets
(docs/harness.md, "How it works"). Workers: ``python -m pytorch_impl.parity JOBS.json`` / ``keras_impl.parity``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared import process
from shared.harness.parity.check import compare_eval, first_diverging, float32_noise, layers_up_to, load_outputs
from shared.harness.parity.randomize import calibrated_layers, make_batch
from shared.harness.parity.step import PROBE, StepConfig, compare_train_step
from shared.io import atomic_write_json, load_weights, save_weights
from shared.names import stage_names, stage_output_layer
from shared.spec import ModelSpec

DIRECTIONS = {"torch2keras": ("torch", "keras"), "keras2torch": ("keras", "torch")}
PHASES = ("torch", "keras", "torch")
DEFAULT_STEP = StepConfig()
IMAGENET_PARITY_SIZE = 64  # ImageNet models are checked at 64x64 (any size >= 32 exercises every layer)


@dataclass
class Case:
    """One parity check: a spec, a transfer direction and (for tests) a weight-file edit."""

    spec: ModelSpec
    direction: str = "torch2keras"
    tamper: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None


def default_size(spec: ModelSpec) -> int:
    """The input size parity runs at: the spec's own for CIFAR models, 64 for ImageNet ones."""
    return spec.input_size if spec.stem == "cifar" else min(spec.input_size, IMAGENET_PARITY_SIZE)


def run_worker(framework: str, jobs: list[dict[str, Any]], workdir: Path, *,
               timeout: float = 3600) -> list[dict[str, Any]]:
    """Run one framework's parity worker on a list of jobs (one process); return their reports."""
    workdir.mkdir(parents=True, exist_ok=True)
    job_path = workdir / f"job-{framework}-{len(list(workdir.glob('job-*')))}.json"
    report_path = job_path.with_suffix(".report.json")
    atomic_write_json(job_path, {"jobs": jobs, "report": str(report_path)})
    done = process.run(process.module_command(framework, "parity", job_path), timeout=timeout, echo=False)
    if not done.ok:
        raise RuntimeError(f"{process.package(framework)}.parity failed: {done.reason()}\n{done.stderr_tail}")
    return json.loads(report_path.read_text(encoding="utf-8"))


def serve_jobs(prog: str, run_job: Callable[[dict[str, Any]], dict[str, Any]], argv: list[str] | None) -> int:
    """A framework's parity worker (``python -m <package>.parity JOBS.json``): every job of the request file run by
    ``run_job``, and the reports written where the request says."""
    from shared.errors import ArgumentParser

    p = ArgumentParser(prog=prog, description="Run the parity jobs of a request file (written by shared.harness).")
    p.add_argument("jobs", help="the request: {\"jobs\": [...], \"report\": path}")
    request = json.loads(Path(p.parse_args(argv).jobs).read_text(encoding="utf-8"))
    atomic_write_json(request["report"], [run_job(job) for job in request["jobs"]])
    return 0


def run_parity(spec: ModelSpec, direction: str = "torch2keras", **kwargs: Any) -> dict[str, Any]:
    """One case (``tamper`` goes into it); keyword arguments as :func:`run_parity_cases`."""
    tamper = kwargs.pop("tamper", None)
    return run_parity_cases([Case(spec, direction, tamper)], **kwargs)[0]


def run_parity_cases(
    cases: list[Case], *, batch: int = 2, size: int | None = None, seed: int = 0,
    train_step: StepConfig | None = DEFAULT_STEP, summaries: bool = False,
    workdir: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Run many parity checks with three framework processes in all (five when a case diverges).

    ``tamper(arrays) -> arrays``, when a case has one, edits the transferred file before the target
    reads it (tests use it to prove that a wrong mapping fails). ``summaries=True`` also asks each
    worker for its summary JSON (``result["summaries"]``).
    """
    for case in cases:
        if case.direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {case.direction!r}; valid choices: {', '.join(DIRECTIONS)}")
    with tempfile.TemporaryDirectory(prefix="parity-") as tmp:
        root = Path(workdir) if workdir else Path(tmp)
        plans = [_plan(case, root / f"case{i}", batch, size, seed, train_step, summaries)
                 for i, case in enumerate(cases)]
        for phase, framework in enumerate(PHASES):
            work = [(plan, role) for plan in plans for role, (p, _) in plan["jobs"].items() if p == phase]
            if not work:
                continue
            for plan, role in work:
                if role == "dst" and plan["case"].tamper is not None:
                    arrays, meta = load_weights(plan["w0"])
                    save_weights(plan["transferred"], plan["case"].tamper(dict(arrays)), meta)
            reports = run_worker(framework, [plan["jobs"][role][1] for plan, role in work], root)
            for (plan, role), report in zip(work, reports):
                plan["reports"][role] = report
        results = [_analyse(plan, train_step) for plan in plans]
        _name_first_diverging(plans, results, root)
        return results


def _plan(case: Case, work: Path, batch: int, size: int | None, seed: int, step: StepConfig | None,
          summaries: bool) -> dict[str, Any]:
    """The files and worker jobs of one case: {role: (phase, job)} for init (keras2torch), src, dst."""
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
    # each direction its own weights; PyTorch draws and calibrates them (docs/harness.md, "How it works")
    weight_seed = seed + (1 if src == "keras" else 0)
    init = {"spec": spec.to_dict(), "randomize": weight_seed,
            "calibrate": {"input": str(inputs["torch"]), "seed": weight_seed, "layers": calibrated_layers(spec)}}
    jobs: dict[str, tuple[int, dict[str, Any]]] = {}
    if src == "keras":
        jobs["init"] = (0, {**init, "save_weights": str(work / "init.safetensors")})
    for role, side in (("src", src), ("dst", dst)):
        job: dict[str, Any] = {
            "spec": spec.to_dict(),
            "forward": {"input": str(inputs[side]), "layers": stage_layers, "out": str(work / f"eval-{side}.npz"),
                        "float64": side == "torch"},
        }
        if summaries:
            job["summary"] = str(work / f"summary-{side}.json")
        if role == "src":
            job.update(init if side == "torch" else {"weights": str(work / "init.safetensors")})
            job["save_weights"] = str(w0)
        else:
            job["weights"] = str(transferred)
        if step is not None:
            job["train_step"] = {
                "input": str(inputs[side]), "labels": str(work / "y.npy"), "lr": step.lr,
                "momentum": step.momentum, "weight_decay": step.weight_decay, "dtype": "float64",
                "out": str(work / f"w1-{side}.safetensors"),
            }
            if side == "torch":
                job["train_step"]["probe"] = {"scale": PROBE, "seed": seed, "out": str(work / "w1-probe.safetensors")}
        phase = 0 if side == "torch" and role == "src" else 1 if side == "keras" else 2
        jobs[role] = (phase, job)
    return {"case": case, "spec": spec, "src": src, "dst": dst, "dir": work, "inputs": inputs, "w0": w0,
            "transferred": transferred, "jobs": jobs, "reports": {}, "batch": batch, "size": size, "seed": seed,
            "stage_layers": stage_layers, "summaries": summaries}


def _analyse(plan: dict[str, Any], step: StepConfig | None) -> dict[str, Any]:
    spec, src, dst, work = plan["spec"], plan["src"], plan["dst"], plan["dir"]
    outs = {fw: load_outputs(work / f"eval-{fw}.npz", fw) for fw in (src, dst)}
    result: dict[str, Any] = {
        "model": spec.name, "spec": spec.to_dict(), "direction": plan["case"].direction, "source": src,
        "target": dst, "batch": plan["batch"], "size": plan["size"], "seed": plan["seed"],
        "tampered": plan["case"].tamper is not None,
        "eval": compare_eval(spec, plan["stage_layers"], outs[src], outs[dst], float32_noise(outs["torch"])),
    }
    if step is not None:
        # Both sides start from the Keras side's weights: what it loaded (target) or exported (source).
        keras_start = plan["w0"] if src == "keras" else plan["transferred"]
        reports = {plan[role]: plan["reports"][role] for role in ("src", "dst")}
        result["train"] = compare_train_step(
            spec, load_weights(keras_start)[0], str(work / "w1-torch.safetensors"),
            str(work / "w1-keras.safetensors"), reports, step, str(work / "w1-probe.safetensors"),
        )
    result["ok"] = bool(result["eval"]["ok"] and result.get("train", {"ok": True})["ok"])
    if plan["summaries"]:
        result["summaries"] = {fw: json.loads((work / f"summary-{fw}.json").read_text(encoding="utf-8"))
                               for fw in (src, dst)}
    return result


def _name_first_diverging(plans: list[dict[str, Any]], results: list[dict[str, Any]], root: Path) -> None:
    """A second pass names the first diverging layer: every layer up to the first bad stage, both sides."""
    diverging = [(plan, r) for plan, r in zip(plans, results) if r["eval"]["bad_stage"]]
    for framework in process.FRAMEWORKS if diverging else ():
        jobs = []
        for plan, r in diverging:
            weights = plan["w0"] if framework == plan["src"] else plan["transferred"]
            jobs.append({"spec": plan["spec"].to_dict(), "weights": str(weights),
                         "forward": {"input": str(plan["inputs"][framework]),
                                     "layers": layers_up_to(plan["spec"], r["eval"]["bad_stage"]),
                                     "out": str(plan["dir"] / f"layers-{framework}.npz"),
                                     "float64": framework == "torch"}})
        run_worker(framework, jobs, root)
    for plan, r in diverging:
        outs = {fw: load_outputs(plan["dir"] / f"layers-{fw}.npz", fw) for fw in process.FRAMEWORKS}
        r["eval"]["first_diverging_layer"] = first_diverging(plan["spec"], r["eval"]["bad_stage"], outs[plan["src"]],
                                                             outs[plan["dst"]], float32_noise(outs["torch"]))
    for r in results:
        del r["eval"]["bad_stage"]
