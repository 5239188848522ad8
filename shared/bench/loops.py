"""The real training loops, timed beside their steps: ``pytorch_impl.train`` and ``keras_impl.train`` (once per
Keras backend) with their own input pipeline, callbacks and run folder, profiled where one misses its target
(docs/bench.md, "What is measured").
"""

from __future__ import annotations

import pstats
import sys
from pathlib import Path
from typing import Any

from shared import process, runs
from shared.bench.catalog import LOOP_MODULES, backend_of
from shared.bench.timing import first_line, is_measured, summarize

LOOP_TARGET = 0.9  # a loop's images/s over its own step's
KERAS_TARGET = 0.8  # the best Keras loop over the PyTorch loop
PROFILE_ROWS = 12


def loop_env(label: str) -> dict[str, str]:
    """The child environment of ``label``: its Keras backend made explicit."""
    backend = backend_of(label)
    return process.child_env(KERAS_BACKEND=backend) if backend else process.child_env(keras=False)


def loop_command(label: str, model: str, batch_size: int, epochs: int, device: str, data_dir: str,
                 run_dir: Path, profile: Path | None = None, dataset: str = "synthetic",
                 flags: tuple[str, ...] = ()) -> list[str]:
    """``python [-m cProfile -o FILE] -m <package>.train`` on a synthetic set, no progress bar, with the
    trainer's ``flags`` (e.g. ``--amp``)."""
    args = ["--model", model, "--dataset", dataset, "--data-dir", data_dir, "--epochs", str(epochs),
            "--batch-size", str(batch_size), "--device", device, "--out", str(run_dir), "--no-progress", *flags]
    prefix = [sys.executable, "-m", "cProfile", "-o", str(profile)] if profile else [sys.executable]
    return [*prefix, "-m", LOOP_MODULES[label], *args]


def epoch_images(run_dir: Path) -> list[int]:
    """The training images of each epoch of a run, from the plan in its ``config.json``."""
    plan = runs.read_run(run_dir)["config"]["recipe"]
    ipe, total, batch = plan["iters_per_epoch"], plan["total_iters"], plan["batch_size"]
    return [batch * max(0, min(ipe, total - e * ipe)) for e in range(plan["epochs"])]


def loop_speed(run_dir: Path) -> dict[str, Any]:
    """Images/s of every epoch after the first, from the run's ``metrics.csv`` (median, spread), and
    ``with_eval``: the same epochs' training images over their training + validation seconds."""
    rows = runs.read_metrics(run_dir)
    if len(rows) < 2:
        raise ValueError(f"{run_dir}: {len(rows)} epoch(s) in metrics.csv; the loop figure needs at least 2")
    images = epoch_images(run_dir)
    return {**summarize(r["images_per_s"] for r in rows[1:]), "epochs": len(rows),
            "first_epoch_images_per_s": rows[0]["images_per_s"],
            "with_eval": summarize(images[r["epoch"] - 1] / r["seconds"] for r in rows[1:])}


def run_loop(label: str, cfg: Any, workdir: Path, profile: bool = False, flags: tuple[str, ...] = (),
             tag: str = "") -> dict[str, Any]:
    """One training loop in its own process: its speed, or ``{"error": reason}``; with ``profile``, the
    cProfile table instead. Either way ``command`` is the command line that ran."""
    tag = f"{label}{tag}-profile" if profile else f"{label}{tag}"
    run_dir = workdir / f"loop-{tag}"
    prof = workdir / f"{tag}.prof" if profile else None
    cmd = loop_command(label, cfg.model, cfg.settings.batch_size, cfg.loop_epochs, cfg.device, cfg.data_dir,
                       run_dir, prof, cfg.dataset, flags)
    print(f"  {label} training loop{' under cProfile' if profile else ''}: {' '.join(cmd[1:])}",
          file=sys.stderr, flush=True)
    done = process.run(cmd, timeout=cfg.timeout, echo=cfg.echo, env=loop_env(label))
    if not done.ok:
        return {"error": done.reason(), "command": cmd}
    try:
        return {**(profile_table(prof) if profile else loop_speed(run_dir)), "command": cmd}
    except (OSError, ValueError, KeyError) as e:
        return {"error": first_line(e), "command": cmd}


def profile_table(path: Path, rows: int = PROFILE_ROWS) -> dict[str, Any]:
    """The functions with the most own time in a cProfile file: name, calls, own and cumulative seconds."""
    stats = pstats.Stats(str(path)).stats  # {(file, line, name): (primitive calls, calls, own s, cum s, callers)}
    total = sum(v[2] for v in stats.values())
    top = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:rows]
    entries = [{"function": _where(key), "calls": v[1], "own_s": v[2], "own_pct": 100 * v[2] / total if total else 0.0,
                "cumulative_s": v[3]} for key, v in top]
    return {"total_s": total, "entries": entries}


def _where(key: tuple[str, int, str]) -> str:
    file, line, name = key
    if file == "~":  # a C function: cProfile names it {built-in method ...}
        return name
    parts = Path(file).parts
    short = "/".join(parts[-2:]) if "site-packages" not in parts else "/".join(
        parts[parts.index("site-packages") + 1:])
    return f"{short}:{line}({name})"


def add_loop_ratios(loops: dict[str, dict[str, Any]], steps: dict[str, Any]) -> dict[str, Any]:
    """Each loop's ratio to its own step (``steps[label]`` = the step row's train summary) and the best
    Keras loop's ratio to the PyTorch loop; returns the latter as ``{"label", "ratio"}`` (None if unknown)."""
    for label, loop in loops.items():
        step = steps.get(label)
        loop["step"] = step["median"] if is_measured(step) else None
        loop["ratio_to_step"] = loop["median"] / loop["step"] if is_measured(loop) and loop["step"] else None
    torch_loop = loops.get("torch")
    keras = {k: v for k, v in loops.items() if k != "torch" and is_measured(v)}
    if not keras or not is_measured(torch_loop):
        return {"label": None, "ratio": None}
    best = max(keras, key=lambda k: keras[k]["median"])
    return {"label": best, "ratio": keras[best]["median"] / torch_loop["median"]}


def missed(loops: dict[str, dict[str, Any]], best: dict[str, Any]) -> list[str]:
    """The loops to profile: each below :data:`LOOP_TARGET` of its step, and the best Keras loop and the
    PyTorch loop when that one is below :data:`KERAS_TARGET` of PyTorch's."""
    out = [k for k, v in loops.items() if v.get("ratio_to_step") is not None and v["ratio_to_step"] < LOOP_TARGET]
    if best["ratio"] is not None and best["ratio"] < KERAS_TARGET:
        out += [k for k in (best["label"], "torch") if k not in out]
    return out
