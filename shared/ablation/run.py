"""Plain vs residual at equal epochs, in both frameworks, over seeds: train every cell, then report (docs/ablation.md).

    python -m shared.ablation --ablation cifar10|cifar100|cats_vs_dogs [--seeds 0,1,2] [--epochs E] [--frameworks ...]

One trainer subprocess per cell and seed, each into a fixed folder, so a re-run skips, resumes or restarts each run.
Imports neither torch nor tensorflow.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared import errors, process
from shared.ablation.catalog import ABLATIONS, TASKS
from shared.ablation.markdown import format_seconds
from shared.ablation.report import build_report, write_report
from shared.backends import KERAS_LABELS, split_label
from shared.data import DATASETS
from shared.errors import UserError
from shared.io import atomic_write_json, check_writable
from shared.machine import cpu_cores, cpu_model, git_commit, gpu_names
from shared.process import FRAMEWORKS
from shared.recipes import check_overrides
from shared.runs import CHECKPOINTS, NotARunError, read_run
from shared.spec import SHORTCUTS, get_spec

# A cell's framework label: torch, keras (on the backend KERAS_BACKEND / make BACKEND= names, as before) or
# keras-<backend>, so that one report can hold several Keras backends.
LABELS = (*FRAMEWORKS, *KERAS_LABELS)
STATE_FILE = "ablation-state.json"
# Settings that change what a cell computes: a re-run with other values must not reuse the cells. The seed is
# not one of them: each seed has its own folder, so another seed adds runs instead of replacing them.
RESULT_SETTINGS = ("ablation", "dataset", "epochs", "iters", "batch_size", "lr", "shortcut", "num_classes")
SEED_DIR = re.compile(r"seed-(\d+)")
@dataclass(frozen=True)
class Cell:
    """One training run of the ablation: a model under a framework label and one seed, in its fixed folder."""

    model: str
    label: str
    seed: int
    path: Path

    @property
    def name(self) -> str:
        return f"{self.model}-{self.label}"

    @property
    def key(self) -> str:
        """``seed-0/plain20-torch``: the run's folder under the runs folder, and its name in messages."""
        return f"{seed_dir(self.seed)}/{self.name}"

    @property
    def framework(self) -> str:
        """``torch`` or ``keras`` (the training script and its checkpoint)."""
        return split_label(self.label)[0]

    @property
    def backend(self) -> str | None:
        """The Keras backend a ``keras-<backend>`` label pins (None: the environment's)."""
        return split_label(self.label)[1]

    def env(self) -> dict[str, str]:
        """The training process's environment (its Keras backend made explicit)."""
        extra = {"KERAS_BACKEND": self.backend} if self.backend else {}
        return process.child_env(keras=self.framework == "keras", **extra)


def report_stem(ablation: str, dataset: str) -> str:
    """``ablation-cifar10``; ``ablation-cifar10-synthetic`` when the cells ran on another dataset."""
    return f"ablation-{ablation}" if dataset == ablation else f"ablation-{ablation}-{dataset}"


def seed_dir(seed: int) -> str:
    return f"seed-{seed}"


def plan_cells(models: list[str], frameworks: list[str], seeds: list[int], runs_dir: Path) -> list[Cell]:
    """Every (model, framework label) cell once per seed, seed-major then model-major (so the first seed's
    table is complete first), each in ``runs_dir/seed-<seed>/<model>-<label>``."""
    return [Cell(m, fw, s, runs_dir / seed_dir(s) / f"{m}-{fw}") for s in seeds for m in models for fw in frameworks]


def parse_seeds(text: str) -> list[int]:
    """``--seeds``: ``0,1,2`` names the seeds; one number ``N`` alone means N seeds, ``0..N-1``."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise UserError(f"--seeds takes seeds separated by commas (0,1,2) or a count (3); got {text!r}")
    values = [int(p) for p in parts]
    if "," not in text:
        if values[0] < 1:
            raise UserError(f"--seeds N asks for N seeds (0..N-1), so N must be >= 1; got {text!r}")
        return list(range(values[0]))
    if len(set(values)) != len(values):
        raise UserError(f"--seeds names a seed twice; got {text!r}")
    return values


def seeds_in(runs_dir: Path) -> list[int]:
    """The seeds that have a folder in ``runs_dir`` (``seed-<k>/``), in order."""
    if not runs_dir.is_dir():
        return []
    found = (SEED_DIR.fullmatch(p.name) for p in runs_dir.iterdir() if p.is_dir())
    return sorted(int(m.group(1)) for m in found if m)


def check_layout(runs_dir: Path) -> None:
    """Refuse a runs folder in the single-seed layout of earlier versions (run folders directly inside it),
    with the command that moves them into their seed's folder (docs/ablation.md says why they are not moved)."""
    if not runs_dir.is_dir():
        return
    old = sorted(p for p in runs_dir.iterdir() if p.is_dir() and (p / "config.json").is_file())
    if not old:
        return
    by_seed: dict[int, list[str]] = {}
    for p in old:
        try:
            seed = int(json.loads((p / "config.json").read_text(encoding="utf-8")).get("seed", 0))
        except (ValueError, TypeError):  # an unreadable config: the old default seed
            seed = 0
        by_seed.setdefault(seed, []).append(shlex.quote(str(p)))
    moves = " && ".join(f"mkdir -p {shlex.quote(str(runs_dir / seed_dir(s)))} && mv {' '.join(ps)} "
                        f"{shlex.quote(str(runs_dir / seed_dir(s)))}/" for s, ps in sorted(by_seed.items()))
    raise UserError(f"{runs_dir} holds {len(old)} run folder(s) in the single-seed layout of earlier versions "
                    f"({', '.join(p.name for p in old)}); each seed now has its own folder: move them with `{moves}` "
                    "and run the command again")


def cell_status(cell: Cell) -> str:
    """``finished`` (skip), ``resume`` (a checkpoint exists), ``restart`` (a folder without one) or ``new``."""
    if not cell.path.exists():
        return "new"
    try:
        run = read_run(cell.path)
    except NotARunError as e:
        if (cell.path / CHECKPOINTS[cell.framework]).is_file():  # never delete a checkpoint on a guess
            raise UserError(f"{cell.path} holds a checkpoint but no readable run ({e}); "
                            "repair or delete it by hand") from e
        return "restart"
    if run["finished"]:
        return "finished"
    if (cell.path / CHECKPOINTS[cell.framework]).is_file():
        return "resume"
    return "restart"


def check_cell(cell: Cell, settings: dict[str, Any]) -> None:
    """Refuse a cell folder whose run was started with other epochs, seed or batch size than asked for."""
    config = read_run(cell.path)["config"]
    recipe = config.get("recipe") or {}
    saved = {"epochs": recipe.get("epochs"), "iters": recipe.get("total_iters"),
             "batch_size": recipe.get("batch_size"), "lr": recipe.get("lr"), "seed": config.get("seed"),
             "dataset": config.get("dataset")}
    asked = {**settings, "seed": cell.seed}
    diff = [k for k, v in saved.items() if asked.get(k) is not None and v is not None and v != asked[k]]
    if diff:
        changes = ", ".join(f"{k} {saved[k]!r} (asked: {asked[k]!r})" for k in diff)
        raise UserError(f"{cell.path} was trained with {changes}; pass another --runs-dir or delete it")


def train_command(cell: Cell, settings: dict[str, Any], *, resume: bool) -> list[str]:
    """The train CLI invocation of a cell (absolute paths: it runs from the repository root)."""
    cmd = process.module_command(cell.framework, "train", "--model", cell.model, "--dataset", settings["dataset"],
                                 "--data-dir", Path(settings["data_dir"]).resolve(),
                                 "--shortcut", settings["shortcut"], "--seed", cell.seed, "--out", cell.path.resolve())
    for key in ("epochs", "iters", "batch_size", "lr", "num_classes"):
        if settings.get(key) is not None:
            cmd += [f"--{key.replace('_', '-')}", str(settings[key])]
    if resume:
        cmd += ["--resume", str(cell.path.resolve())]
    return cmd + shlex.split(settings.get("train_args") or "")


def shown(cell: Cell, cmd: list[str]) -> str:
    """The command as a shell line, with the Keras backend a ``keras-<backend>`` cell sets."""
    return (f"KERAS_BACKEND={cell.backend} " if cell.backend else "") + shlex.join(cmd)


def hardware_line() -> str:
    """This machine in one line: GPU names when there are any, then the CPU model and core count."""
    gpus = gpu_names()
    cpu = f"CPU: {cpu_model()} ({cpu_cores()} cores)"
    if not gpus:
        return f"{cpu}, no GPU"
    counts = {g: gpus.count(g) for g in dict.fromkeys(gpus)}
    return "GPU: " + ", ".join(f"{n}x {g}" for g, n in counts.items()) + f"; {cpu}"


def load_state(runs_dir: Path, settings: dict[str, Any], *, adopt: bool = False) -> dict[str, Any]:
    """The runs folder's bookkeeping; a clear error when it was made with other result settings.

    With ``adopt`` (report only) the saved settings replace the command line's instead, and the seeds are the
    folder's own unless the command line named some.
    """
    if adopt and not settings["seeds_given"]:
        settings["seeds"] = seeds_in(runs_dir) or settings["seeds"]
    path = runs_dir / STATE_FILE
    if not path.is_file():
        return {"settings": {k: settings.get(k) for k in RESULT_SETTINGS}, "cells": {}}
    state = json.loads(path.read_text(encoding="utf-8"))
    old = state.get("settings", {})
    if adopt:
        settings.update({k: old[k] for k in RESULT_SETTINGS if k in old})
    diff = [k for k in RESULT_SETTINGS if old.get(k) != settings.get(k)]
    if diff:
        changes = ", ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in diff)
        raise UserError(f"{runs_dir} holds cells trained with other settings ({changes}); "
                        "pass another --runs-dir or delete that folder to start over")
    return state


def _say(msg: str) -> None:
    print(msg, flush=True)


def run_cells(cells: list[Cell], settings: dict[str, Any], state: dict[str, Any], runs_dir: Path) -> list[str]:
    """Train the cells that are not finished, one after the other; return the names of failed cells."""
    hardware = hardware_line()
    failed: list[str] = []
    t_all = time.monotonic()
    for i, cell in enumerate(cells, start=1):
        tag = f"[{i}/{len(cells)}] {cell.key}"
        status = cell_status(cell)
        if status == "finished":
            _say(f"{tag}: skipped (finished earlier: {cell.path})")
            continue
        if status == "restart":  # no checkpoint: nothing to resume, start the cell from scratch
            shutil.rmtree(cell.path)
        action = "resuming from its checkpoint" if status == "resume" else "training"
        _say(f"{tag}: {action} -> {cell.path}")
        cmd = train_command(cell, settings, resume=status == "resume")
        t0 = time.monotonic()
        # the cell's stdout (epoch lines) and stderr (progress bars) reach the user as they come
        rc = process.run(cmd, show_stdout=True, env=cell.env()).returncode
        elapsed = time.monotonic() - t0
        entry = {"status": "finished" if rc == 0 else f"failed (exit {rc})", "seconds": round(elapsed, 1),
                 "hardware": hardware, "command": shown(cell, cmd), "ended": datetime.now(UTC).isoformat()}
        state["cells"][cell.key] = entry
        atomic_write_json(runs_dir / STATE_FILE, state)
        if rc != 0:
            _say(f"{tag}: FAILED (exit {rc}) after {format_seconds(elapsed)}")
            failed.append(cell.key)
            break
        _say(f"{tag}: finished in {format_seconds(elapsed)} (total {format_seconds(time.monotonic() - t_all)})")
    return failed


def write_ablation_report(cells: list[Cell], settings: dict[str, Any], state: dict[str, Any],
                          out_dir: Path, stem: str, paper: str) -> dict[str, Path]:
    """Build and write the Markdown/JSON table and the PNG plots from the cells' run folders."""
    recorded = [c.get("hardware") for c in state["cells"].values() if c.get("hardware")]
    ab = ABLATIONS[settings["ablation"]]
    report, curves = build_report(
        [(c.model, c.label, c.seed, c.path if c.path.exists() else None) for c in cells],
        dataset=settings["dataset"], epochs=settings["epochs"], seeds=settings["seeds"],
        batch_size=settings["batch_size"], hardware=recorded or [hardware_line()], git_commit=git_commit(),
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), paper=paper, published=ab.published,
        dataset_task=TASKS.get(settings["dataset"], settings["dataset"]),
    )
    report["ablation"] = settings["ablation"]
    report["frameworks"] = settings["frameworks"]
    report["runs_dir"] = str(settings["runs_dir"])
    return write_report(report, curves, out_dir, stem)


def get_parser() -> argparse.ArgumentParser:
    p = errors.ArgumentParser(
        prog="python -m shared.ablation",
        description="Train plain and residual twins for the same epochs in both frameworks; write the table "
                    "and plots. Re-running skips finished runs and resumes an interrupted one.",
    )
    p.add_argument("--ablation", default="cifar10", help=f"cell set: {', '.join(ABLATIONS)} (default cifar10)")
    p.add_argument("--dataset", help="train on this dataset instead of the ablation's own (e.g. synthetic)")
    p.add_argument("--frameworks", default="torch,keras",
                   help=f"comma-separated labels: {', '.join(LABELS)} (default torch,keras; keras = $KERAS_BACKEND)")
    p.add_argument("--models", help="comma-separated models instead of the ablation's set (e.g. plain8,resnet8)")
    p.add_argument("--shortcut", help=f"shortcut option {'/'.join(SHORTCUTS)} (default: the ablation's)")
    p.add_argument("--epochs", type=int, help="epochs of every cell (default: the dataset recipe's length)")
    p.add_argument("--iters", type=int, help="iterations of every cell instead of --epochs")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int, help="one seed for every cell (default 0)")
    p.add_argument("--seeds", help="train every cell once per seed: 0,1,2 names them, 3 alone means 0,1,2")
    p.add_argument("--num-classes", type=int, help="default: the dataset's number of classes")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--runs-dir", help="cell folders go here (default runs/ablation/<name>)")
    p.add_argument("--out", default="results", help="folder of the table and plots (default results)")
    p.add_argument("--train-args", default="", help='extra train CLI flags for every cell, e.g. "--amp on"')
    p.add_argument("--report-only", action="store_true", help="train nothing; write the table from the cells")
    p.add_argument("--dry-run", action="store_true", help="print each cell's status and command; run nothing")
    return p


def parse_settings(argv: list[str] | None) -> tuple[dict[str, Any], argparse.Namespace]:
    """Validated settings from the command line (a UserError names a bad value and the choices)."""
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.ablation not in ABLATIONS:
        raise errors.UserError(f"unknown ablation {args.ablation!r}; valid choices: {', '.join(ABLATIONS)}")
    ab = ABLATIONS[args.ablation]
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    bad = [f for f in frameworks if f not in LABELS]
    if bad or not frameworks:
        raise errors.UserError(f"unknown framework(s) {bad or args.frameworks!r}; valid choices: {', '.join(LABELS)}")
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else list(ab.models)
    for m in models:
        try:
            get_spec(m)
        except ValueError as e:
            raise errors.UserError(str(e)) from None
    if args.shortcut is not None and args.shortcut not in SHORTCUTS:
        raise errors.UserError(f"unknown shortcut {args.shortcut!r}; valid choices: {', '.join(SHORTCUTS)}")
    try:  # before any cell trains: what every cell's recipe would refuse
        check_overrides(epochs=args.epochs, iters=args.iters, batch_size=args.batch_size, lr=args.lr)
    except ValueError as e:
        raise errors.UserError(str(e)) from None
    if args.num_classes is not None and args.num_classes < 1:
        raise errors.UserError(f"--num-classes must be >= 1; got {args.num_classes}")
    if args.dataset is not None and args.dataset not in DATASETS:
        raise errors.UserError(f"unknown dataset {args.dataset!r}; valid choices: {', '.join(DATASETS)}")
    if args.seed is not None and args.seeds is not None:
        raise errors.UserError("give --seed or --seeds, not both")
    if args.seed is not None and args.seed < 0:
        raise errors.UserError(f"--seed must be >= 0; got {args.seed}")
    seeds = parse_seeds(args.seeds) if args.seeds is not None else [0 if args.seed is None else args.seed]
    dataset = args.dataset or ab.dataset
    stem = report_stem(ab.name, dataset)
    runs_dir = Path(args.runs_dir) if args.runs_dir else Path("runs") / "ablation" / stem.removeprefix("ablation-")
    settings = {
        "ablation": ab.name, "dataset": dataset, "frameworks": frameworks, "models": models,
        "shortcut": args.shortcut or ab.shortcut, "epochs": args.epochs, "iters": args.iters,
        "batch_size": args.batch_size, "lr": args.lr, "seeds": seeds, "num_classes": args.num_classes,
        "seeds_given": args.seed is not None or args.seeds is not None,
        "data_dir": args.data_dir, "runs_dir": runs_dir, "train_args": args.train_args, "stem": stem,
    }
    return settings, args


def main(argv: list[str] | None = None) -> int:
    settings, args = parse_settings(argv)
    ab = ABLATIONS[settings["ablation"]]
    runs_dir: Path = settings["runs_dir"]
    check_layout(runs_dir)
    state = load_state(runs_dir, settings, adopt=args.report_only)
    seeds = settings["seeds"]
    cells = plan_cells(settings["models"], settings["frameworks"], seeds, runs_dir)
    _say(f"ablation {ab.name} on {settings['dataset']}: {len(cells) // len(seeds)} cells "
         f"({', '.join(settings['models'])} x {', '.join(settings['frameworks'])}) x {len(seeds)} "
         f"seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))}) = {len(cells)} runs, "
         f"epochs {settings['epochs'] or 'recipe default'}, runs in {runs_dir}")
    if args.dry_run:
        for cell in cells:
            status = cell_status(cell)
            cmd = train_command(cell, settings, resume=status == "resume")
            _say(f"{cell.key}: {status}" + ("" if status == "finished" else f": {shown(cell, cmd)}"))
        return 0
    for cell in cells:  # before anything is written: no run may come from one with other settings
        if cell_status(cell) in ("finished", "resume"):
            check_cell(cell, settings)
    out = Path(args.out)
    check_writable(out, folder=True, what="the ablation report folder")
    failed: list[str] = []
    if not args.report_only:
        check_writable(runs_dir, folder=True, what="the ablation runs folder")
        atomic_write_json(runs_dir / STATE_FILE, state)
        try:
            failed = run_cells(cells, settings, state, runs_dir)
        except KeyboardInterrupt:
            _say("interrupted: finished runs are kept; run the same command again to resume")
            return 130
    if failed and not any(cell_status(c) == "finished" for c in cells):
        paths = {}  # nothing to report: no empty table in the results folder
    else:
        paths = write_ablation_report(cells, settings, state, out, settings["stem"], ab.paper)
    for kind, path in paths.items():
        _say(f"wrote {kind}: {path}")
    if failed:
        _say(f"error: run {failed[0]} failed; its output is above. Finished runs are kept: "
             "fix the cause and run the same command again")
        return 1
    return 0
