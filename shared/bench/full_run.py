"""``python -m shared.bench.full_run``: ResNet-20's full CIFAR recipe through ``pytorch_impl.train`` on the CIFAR-size
synthetic set, measured end to end or projected from a fixed fraction (``make gpu-full-run``; docs/gpu.md).

    python -m shared.bench.full_run [--budget 270] [--out results/bench] [--device cpu|cuda] [--variant amp_compile]
                                    [--first-fraction 1/64]
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

from shared import errors, process, runs
from shared.bench import bound, gpu_report, timing
from shared.bench import device as devices
from shared.bench.catalog import VARIANTS, torch_train_flags
from shared.bench.gpu import probe_device
from shared.bench.gpu_plan import Budget, shell
from shared.data import SYNTHETIC_DATASETS
from shared.io import atomic_write_json, atomic_write_text, check_writable
from shared.machine import git_commit, machine_info
from shared.markdown import table
from shared.recipes import make_plan, recipe_for
from shared.spec import get_spec

DEFAULT_BUDGET_S = 270.0
FIRST_FRACTION = Fraction(1, 64)
LADDER_STEP = 2
SAFETY = 1.15  # a larger run starts only if its projected wall time, 15% more, fits in what is left
TARGET_WALL_S = 300.0  # the full recipe in under 5 minutes


def parse_fraction(text: str) -> Fraction:
    """``1/64`` or ``0.25`` as a fraction in (0, 1]; anything else is a :class:`errors.UserError`."""
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise errors.UserError(f"--first-fraction must be a fraction such as 1/64 or 0.25; got {text!r}") from None
    if not 0 < value <= 1:
        raise errors.UserError(f"--first-fraction must be in (0, 1]; got {text}")
    return value


def ladder(first: Fraction) -> list[Fraction]:
    """The fractions of the recipe a run may take: ``first``, then each :data:`LADDER_STEP` times the last,
    then the whole recipe."""
    out = [first]
    while out[-1] * LADDER_STEP < 1:
        out.append(out[-1] * LADDER_STEP)
    return out if out[-1] == 1 else [*out, Fraction(1)]


@dataclass(frozen=True)
class Projection:
    """A run's time as ``one_off + iterations * t_iter + epochs * t_val``: ``t_iter`` the steady seconds of a
    training iteration (its data included), ``t_val`` of one validation pass, ``one_off`` what the run spent
    beyond them (start-up, data loading, compilation, checkpoints, the test pass)."""

    t_iter: float
    t_val: float
    one_off: float
    iters_per_epoch: int
    steady_epochs: int

    def wall(self, iters: int) -> float:
        """Projected seconds of a run of ``iters`` iterations (a validation pass after each epoch)."""
        return self.one_off + iters * self.t_iter + math.ceil(iters / self.iters_per_epoch) * self.t_val


def projection(rows: list[dict[str, Any]], plan: dict[str, Any], wall_s: float) -> Projection:
    """The :class:`Projection` of one run: its ``metrics.csv`` ``rows`` (epoch seconds = training + validation,
    images/s of the training phase), its plan (``config.json``'s recipe) and its measured wall seconds.

    The epochs after the first are the steady state (the first pays compilation); with one epoch only, that
    epoch stands in. ``one_off`` is chosen so that the projection of the run itself is its measured time.
    """
    if not rows:
        raise ValueError("the run finished no epoch: nothing to project from")
    ipe, total, batch = plan["iters_per_epoch"], plan["total_iters"], plan["batch_size"]
    iters = [max(0, min(ipe, total - e * ipe)) for e in range(len(rows))]
    train = [n * batch / r["images_per_s"] for n, r in zip(iters, rows, strict=True)]
    val = [max(0.0, r["seconds"] - t) for r, t in zip(rows, train, strict=True)]
    steady = list(range(1, len(rows))) or [0]
    t_iter = sum(train[e] for e in steady) / sum(iters[e] for e in steady)
    t_val = sum(val[e] for e in steady) / len(steady)
    one_off = wall_s - (sum(iters) * t_iter + len(rows) * t_val)
    return Projection(t_iter, t_val, one_off, ipe, len(rows) - 1)


def get_args_parser() -> errors.ArgumentParser:
    p = errors.ArgumentParser(prog="python -m shared.bench.full_run", description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds the whole command may take")
    p.add_argument("--out", default="results/bench", help="folder for full-run-<device>.md/.json")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when PyTorch sees one, else cpu)")
    p.add_argument("--data-dir", default="data", help="where the synthetic set is prepared")
    p.add_argument("--dataset", default="synthetic_cifar", help=f"one of {', '.join(SYNTHETIC_DATASETS)}")
    p.add_argument("--model", default="resnet20", help="registry name (the recipe is the dataset's)")
    p.add_argument("--variant", default="amp_compile",
                   help=f"the trainer's fast path, as a torch bench variant: {', '.join(VARIANTS['torch'])}")
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's (128)")
    p.add_argument("--first-fraction", default=str(FIRST_FRACTION),
                   help="the first run's share of the recipe, e.g. 1/64; a larger run is a power of 2 times it")
    return p


def train_command(args: Any, device: str, run_dir: Path, iters: int | None) -> list[str]:
    """``python -m pytorch_impl.train`` with the variant's flags; ``iters`` None is the recipe's own length."""
    cmd = [sys.executable, "-m", "pytorch_impl.train", "--model", args.model, "--dataset", args.dataset,
           "--data-dir", args.data_dir, "--device", device, "--out", str(run_dir), "--no-progress",
           *torch_train_flags(args.variant, device)]
    cmd += ["--batch-size", str(args.batch_size)] if args.batch_size else []
    return cmd + (["--iters", str(iters)] if iters is not None else [])


def run_fraction(args: Any, device: str, fraction: Fraction, total_iters: int, budget: Budget,
                 workdir: Path) -> dict[str, Any]:
    """One trainer run of ``fraction`` of the recipe, its wall time measured from outside the process."""
    iters = None if fraction == 1 else max(1, round(total_iters * fraction))
    run_dir = workdir / f"run-{str(fraction).replace('/', '_')}"
    cmd = train_command(args, device, run_dir, iters)
    print(f"full-run: {fraction} of the recipe ({iters or total_iters:,} iterations), "
          f"{budget.remaining():.0f} s of budget left: {shell(cmd)}", file=sys.stderr, flush=True)
    box: list[process.Finished] = []
    wall = timing.timed_block(lambda: box.append(process.run(cmd, timeout=max(1.0, budget.remaining()),
                                                             show_stdout=True, env=process.child_env(keras=False))),
                              lambda: None, 1)
    done = box[0]
    out: dict[str, Any] = {"fraction": str(fraction), "iters": iters or total_iters, "wall_s": wall,
                           "command": shell(cmd)}
    if not done.ok:
        reason = "stopped at the budget's deadline" if done.timed_out else done.reason()
        return {**out, "status": "failed", "reason": reason}
    run = runs.read_run(run_dir)
    rows, plan = runs.read_metrics(run_dir), run["config"]["recipe"]
    proj = projection(rows, plan, wall)
    return {**out, "status": "measured", "epochs": rows, "plan": plan, "projection": asdict(proj),
            "test_acc": (run.get("results") or {}).get("test_acc")}


def choose_next(first: dict[str, Any], rungs: list[Fraction], total_iters: int,
                remaining_s: float) -> tuple[Fraction | None, list[dict[str, Any]]]:
    """The largest rung above the first whose projected wall time (x :data:`SAFETY`) fits in ``remaining_s``,
    and why each larger one was passed over."""
    proj = Projection(**first["projection"])
    passed = []
    for fraction in sorted(rungs[1:], reverse=True):
        iters = max(1, round(total_iters * fraction))
        predicted = proj.wall(iters)
        if predicted * SAFETY <= remaining_s:
            return fraction, passed
        passed.append({"fraction": str(fraction), "iters": iters, "projected_s": predicted,
                       "reason": f"projected {predicted:,.0f} s (x{SAFETY} = {predicted * SAFETY:,.0f} s) > "
                                 f"{remaining_s:,.0f} s left of the budget"})
    return None, passed


def summarize_run(report_runs: list[dict[str, Any]], full: dict[str, Any]) -> dict[str, Any]:
    """The full recipe's wall time: measured when the whole recipe ran, else projected from the largest run."""
    done = [r for r in report_runs if r["status"] == "measured"]
    if not done:
        return {"kind": "none", "wall_s": None}
    best = max(done, key=lambda r: Fraction(r["fraction"]))
    proj = Projection(**best["projection"])
    total, batch = full["total_iters"], full["batch_size"]
    steady_s = total * proj.t_iter + math.ceil(total / proj.iters_per_epoch) * proj.t_val
    measured = Fraction(best["fraction"]) == 1
    wall = best["wall_s"] if measured else proj.wall(total)
    return {"kind": "measured" if measured else "projected", "from_fraction": best["fraction"],
            "from_iters": best["iters"], "wall_s": wall, "images": total * batch,
            "images_per_s": total * batch / wall, "steady_images_per_s_with_eval": total * batch / steady_s,
            "steady_train_images_per_s": batch / proj.t_iter, "one_off_s": proj.one_off,
            "steady_epochs_behind_it": proj.steady_epochs}


def why_from_gpu_report(out: Path, label: str, model: str, variant: str, train_images_per_s: float) -> str | None:
    """The bound of this run's training (``train_images_per_s``, steady) against the same model and variant's step
    in ``gpu-<label>.json`` beside this report: input-bound when the run is slower than 0.9x that step, else
    what limits the step itself (docs/gpu.md); None without such a report or step."""
    path = out / f"gpu-{label}.json"
    if not path.is_file():
        return None
    rows = json.loads(path.read_text()).get("rows", [])
    step = next((r for r in rows if r["id"] == f"torch/{model}/{variant}/step" and r["status"] == "measured"
                 and timing.is_measured(r.get("train"))), None)
    if step is None:
        return None
    ratio = train_images_per_s / step["train"]["median"]
    verdict = bound.verdict(loop_over_step=ratio, **gpu_report.verdict_inputs(step, rows))
    if not verdict["bound"]:
        return None
    return (f"{verdict['bound']}: {verdict['why']} (this run trains at {train_images_per_s:,.0f} img/s, its step "
            f"at {step['train']['median']:,.0f} in {path.name})")


def markdown_report(report: dict[str, Any]) -> str:
    """The full run's report: what ran, the measured or projected wall time, the targets, the commands."""
    s, full, cpu = report["summary"], report["recipe"], report["cpu"]
    tag = " CPU" if cpu else ""
    d, m = report["device"], report["machine"]
    title = (f"# Full CIFAR recipe: {report['model']} on {d['name']}" if not cpu else
             f"# Full CIFAR recipe: {report['model']}, run on the CPU (every figure here is a CPU figure)")
    out = [title, "",
           f"- Device: {d['name']}" + ("" if cpu else f", driver {d.get('driver')}, CUDA {d.get('cuda')}, "
                                                      f"cuDNN {d.get('cudnn')}"),
           f"- Host: {m['cpu']}, {m['cores']} CPU cores; versions: "
           + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
           f"- Recipe: {full['total_iters']:,} iterations at batch {full['batch_size']} ({full['epochs']} epochs of "
           f"{full['iters_per_epoch']} iterations, {full['total_iters'] * full['batch_size']:,} images) on "
           f"**{report['dataset']} (SYNTHETIC data)**, `pytorch_impl.train` with "
           f"`{' '.join(report['flags']) or 'no fast-path flags'}`",
           f"- Budget {report['budget_s']:.0f} s, took {report['wall_s']:.0f} s; started {report['started_utc']}; "
           f"git {m.get('git_commit')}", ""]
    if s["kind"] == "measured":
        out.append(f"**Measured: the whole recipe took {s['wall_s']:,.1f} s{tag}** ({s['images_per_s']:,.0f} images/s "
                   "over the whole run, start-up, compilation, data and evaluation included).")
    elif s["kind"] == "projected":
        out.append(f"**PROJECTED, not measured: {s['wall_s']:,.1f} s{tag} for the whole recipe**, from a run of "
                   f"{s['from_fraction']} of it ({s['from_iters']:,} of {full['total_iters']:,} iterations, its lr "
                   f"schedule scaled to that length): its one-off seconds once, plus its steady seconds per iteration "
                   f"and per validation pass times the recipe's {full['total_iters']:,} iterations and "
                   f"{full['epochs']} passes ({s['images_per_s']:,.0f} images/s over the whole run)."
                   + (" That run had one epoch only: its first epoch, compilation included, stands in for the "
                      "steady state, so this projection is pessimistic." if s["steady_epochs_behind_it"] == 0 else ""))
    else:
        out.append("**No run finished**: nothing was measured or projected (see the runs below).")
    out += ["", "## Targets", "", *table(("Target", "Goal", "Value", "Verdict"), report["targets_rows"], "lrrl")]
    if report.get("why"):
        out += ["", f"Why (profile of the same path in the GPU report): {report['why']}"]
    body = []
    for r in report["runs"]:
        p = r.get("projection") or {}
        body.append([r["fraction"], f"{r['iters']:,}", len(r.get("epochs") or []), f"{r['wall_s']:,.1f}{tag}",
                     f"{r['plan']['batch_size'] / p['t_iter']:,.0f}{tag}" if p else "—",
                     f"{p['t_val']:.2f}" if p else "—", f"{p['one_off']:.1f}" if p else "—",
                     f"{r['test_acc']:.4f}" if r.get("test_acc") is not None else "—",
                     r["status"] + (f": {r['reason']}" if r.get("reason") else "")])
    out += ["", "## Runs", "", *table(("Fraction", "Iterations", "Epochs", "Wall s", "Steady train img/s",
                                       "Validation s per pass", "One-off s", "Test acc", "Status"), body,
                                      "lrrrrrrrl")]
    out += [f"- {p['fraction']} not run: {p['reason']}" for p in report["passed_over"]]
    out += ["", "## Commands", ""] + [f"- {r['fraction']}: `{r['command']}`" for r in report["runs"]]
    return "\n".join(out) + "\n"


def target_rows(summary: dict[str, Any], cpu: bool) -> list[list[str]]:
    """The two targets of the full recipe against the measured or projected figures."""
    goal = f"≥ {gpu_report.RESNET20_IMAGES_PER_S:,} img/s"
    if summary["wall_s"] is None:
        return [["Whole recipe", f"< {TARGET_WALL_S:.0f} s", "—", "not measured"],
                ["Sustained, data and evaluation included", goal, "—", "not measured"]]

    def verdict(ok: bool) -> str:
        return "CPU figure: not held to the GPU target" if cpu else ("met" if ok else "missed") + (
            " (projected)" if summary["kind"] == "projected" else "")

    tag = " CPU" if cpu else ""
    return [["Whole recipe, wall time", f"< {TARGET_WALL_S:.0f} s", f"{summary['wall_s']:,.1f} s{tag}",
             verdict(summary["wall_s"] < TARGET_WALL_S)],
            ["Sustained, data and evaluation included (steady state)", goal,
             f"{summary['steady_images_per_s_with_eval']:,.0f} img/s{tag}",
             verdict(summary["steady_images_per_s_with_eval"] >= gpu_report.RESNET20_IMAGES_PER_S)]]


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    budget = Budget(args.budget)
    first = parse_fraction(args.first_fraction)
    if not args.budget > 0:
        raise errors.UserError(f"--budget must be seconds > 0; got {args.budget}")
    if args.dataset not in SYNTHETIC_DATASETS:
        raise errors.UserError(f"unknown --dataset {args.dataset!r}; valid choices: {', '.join(SYNTHETIC_DATASETS)}")
    if args.device not in (None, "cpu", "cuda"):
        raise errors.UserError(f"unknown device {args.device!r}; valid choices: cpu, cuda")
    try:
        spec = get_spec(args.model)
        flags = torch_train_flags(args.variant, "cpu")
    except ValueError as e:
        raise errors.UserError(str(e)) from None
    out = check_writable(args.out, folder=True, what="the full-run report")
    started, commit = datetime.now(UTC), git_commit()
    device, torch_info = probe_device(args.device)
    flags = torch_train_flags(args.variant, device)
    from datasets import load_prepared

    prepared = load_prepared(args.dataset, args.data_dir)
    try:
        full = make_plan(recipe_for(args.dataset, spec), prepared.manifest["splits"]["train"],
                         batch_size=args.batch_size).to_dict()
    except ValueError as e:
        raise errors.UserError(str(e)) from None
    rungs = ladder(first)
    report_runs, passed = [], []
    with tempfile.TemporaryDirectory(prefix="full-run-") as tmp:
        report_runs.append(run_fraction(args, device, rungs[0], full["total_iters"], budget, Path(tmp)))
        if report_runs[0]["status"] == "measured" and len(rungs) > 1:
            chosen, passed = choose_next(report_runs[0], rungs, full["total_iters"], budget.remaining())
            if chosen is not None:
                report_runs.append(run_fraction(args, device, chosen, full["total_iters"], budget, Path(tmp)))
    summary = summarize_run(report_runs, full)
    dev = devices.describe(device, torch_info)
    report = {"kind": "full-run", "cpu": device == "cpu", "device": dev, "model": args.model,
              "dataset": args.dataset, "variant": args.variant, "flags": flags, "recipe": full,
              "machine": {**machine_info(), "git_commit": commit}, "budget_s": args.budget,
              "wall_s": round(budget.elapsed(), 1), "started_utc": started.isoformat(timespec="seconds"),
              "ladder": [str(f) for f in rungs], "runs": report_runs, "passed_over": passed, "summary": summary}
    report["targets_rows"] = target_rows(summary, report["cpu"])
    missed = any(row[3].startswith("missed") for row in report["targets_rows"])
    report["why"] = (why_from_gpu_report(out, dev["label"], args.model, args.variant,
                                         summary["steady_train_images_per_s"]) or
                     f"no gpu-{dev['label']}.json with this path beside this report: run make gpu-report first "
                     "for the profile") if missed else None
    base = out / f"full-run-{dev['label']}"
    atomic_write_json(base.with_suffix(".json"), report)
    atomic_write_text(base.with_suffix(".md"), markdown_report(report))
    print(markdown_report(report).split("## Runs")[0])
    print(f"wrote {base.with_suffix('.md')} and {base.with_suffix('.json')}")
    return 0 if summary["wall_s"] is not None else 1


if __name__ == "__main__":
    sys.exit(errors.run(main))
