"""Every setting of one training run, resolved once from the command line (a new run) or from the run's
``config.json`` (``--resume``), and read, never written, by both trainers (docs/training.md).
Imports neither torch nor tensorflow.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared import runs
from shared.data import with_labels
from shared.errors import UserError
from shared.io import check_writable, load_weights
from shared.names import check_weight_keys
from shared.process import package
from shared.recipes import Plan, make_plan, recipe_for
from shared.spec import ModelSpec, get_spec
from shared.train_flags import DEFAULT_DATASET, DEFAULT_MODEL

FAST_PATHS = ("amp", "compile", "channels_last", "jit", "strategy", "amp_dtype", "compile_mode")
# What runs saved before a fast path existed mean by it.
FAST_PATH_DEFAULTS = {"amp_dtype": "auto", "compile_mode": "default"}

Loader = Callable[[str, str], Any]  # datasets.load_prepared(name, data_dir) -> a Prepared dataset


@dataclass(frozen=True)
class RunSettings:
    """One run's settings. ``saved`` is the ``config.json`` of a resumed run; what concerns only this
    invocation (device request, threads, progress bar, step trace) always comes from the command line."""

    framework: str
    run_dir: Path
    spec: ModelSpec
    plan: Plan
    reference: str | None  # the recipe's source (paper table, ...)
    dataset: str
    data_dir: str
    seed: int
    init: str | None
    augment: bool
    amp: bool
    compile: bool
    channels_last: bool
    jit: bool
    strategy: str
    amp_dtype: str
    compile_mode: str
    threads: int | None  # --threads as given (None: the framework's default threading)
    device: str  # --device as given (auto, cpu, cuda, ...)
    trace_steps: int = 0
    show_progress: bool = True
    saved: dict[str, Any] | None = None

    @property
    def resumed(self) -> bool:
        return self.saved is not None

    def fast_paths(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in FAST_PATHS}


def check_run_folder(args: argparse.Namespace) -> None:
    """Refuse, before any data is loaded or process started, a run folder that cannot be written: ``--resume``'s,
    ``--out``, or ``runs/`` where the default one goes. One line naming it; a refused run leaves no folder."""
    check_writable(args.resume or args.out or "runs", folder=True, what="the run folder", keep_folders=False)


def resolve_run(args: argparse.Namespace, framework: str, load: Loader) -> tuple[RunSettings, Any]:
    """(settings, prepared data) of a new run, or of the run that ``--resume`` names."""
    if args.resume:
        return _resumed(args, framework, load)
    try:
        dataset = with_labels(args.dataset or DEFAULT_DATASET, args.labels)
        prepared = load(dataset, args.data_dir)
        manifest = prepared.manifest
        if args.num_classes is not None and args.num_classes != manifest["num_classes"]:
            raise ValueError(f"--num-classes {args.num_classes} does not match {dataset}, which has "
                             f"{manifest['num_classes']} classes ({', '.join(manifest['class_names'])})")
        spec = get_spec(args.model or DEFAULT_MODEL, num_classes=manifest["num_classes"], shortcut=args.shortcut,
                        input_size=manifest["image_size"])
        recipe = recipe_for(dataset, spec)
        plan = make_plan(recipe, manifest["splits"]["train"], epochs=args.epochs, iters=args.iters,
                         batch_size=args.batch_size, lr=args.lr)
    except (ValueError, OSError) as e:
        raise UserError(str(e)) from None
    if args.init and not Path(args.init).is_file():
        raise UserError(f"--init {args.init}: no such weight file")
    run_dir = Path(args.out) if args.out else runs.default_run_dir(dataset, spec.name, framework)
    if (run_dir / runs.CONFIG).exists():
        raise UserError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out")
    settings = RunSettings(
        framework, run_dir, spec, plan, recipe.reference, dataset, str(args.data_dir), args.seed, args.init,
        not args.no_augment, **{k: getattr(args, k) for k in FAST_PATHS}, threads=args.threads, device=args.device,
        trace_steps=args.trace_steps, show_progress=not args.no_progress)
    return settings, prepared


def _resumed(args: argparse.Namespace, framework: str, load: Loader) -> tuple[RunSettings, Any]:
    try:
        run = runs.read_run(args.resume)
    except runs.NotARunError as e:
        raise UserError(f"--resume: {e}") from None
    config = run["config"]
    if config["framework"] != framework:
        raise UserError(f"--resume {args.resume} is a {config['framework']} run; resume it with "
                        f"python -m {package(config['framework'])}.train")
    if run["checkpoint"] is None:
        raise UserError(f"--resume {args.resume}: no checkpoint yet ({runs.CHECKPOINTS[framework]} is written at "
                        "the end of every epoch); start the run again instead")
    if run["finished"]:
        raise UserError(f"--resume {args.resume}: the run has already finished (results.json)")
    # The saved configuration wins: the run continues exactly as it was started. Say so when a flag
    # asks for something else, rather than ignore it silently.
    recipe = config["recipe"]
    saved = {"model": config["model"], "dataset": config["dataset"], "epochs": recipe.get("epochs"),
             "iters": recipe.get("total_iters"), "batch_size": recipe.get("batch_size"), "lr": recipe.get("lr"),
             "num_classes": config["spec"]["num_classes"], "shortcut": config["spec"]["shortcut"]}
    for key, value in saved.items():
        given = getattr(args, key, None)
        if given is not None and value is not None and given != value:
            print(f"note: --{key.replace('_', '-')} {given} ignored: resuming {args.resume}, which runs with "
                  f"{key} {value}", file=sys.stderr)
    data_dir = args.data_dir if args.data_dir != "data" else config["data"]["data_dir"]
    try:
        prepared = load(config["dataset"], data_dir)
    except (ValueError, OSError) as e:
        raise UserError(str(e)) from None
    if prepared.manifest["splits"] != config["data"]["splits"]:
        raise UserError(f"--resume: the prepared {config['dataset']} splits {prepared.manifest['splits']} differ "
                        f"from the run's {config['data']['splits']}")
    fast = {k: config["fast_paths"].get(k, FAST_PATH_DEFAULTS.get(k)) for k in FAST_PATHS}
    settings = RunSettings(
        framework, Path(args.resume), ModelSpec.from_dict(config["spec"]),
        Plan.from_dict({k: v for k, v in recipe.items() if k != "reference"}), recipe.get("reference"),
        config["dataset"], str(data_dir), config["seed"], config.get("init"), config.get("augmentation") is not None,
        **fast, threads=args.threads, device=args.device, trace_steps=args.trace_steps,
        show_progress=not args.no_progress, saved=config)
    return settings, prepared


def initial_weights(settings: RunSettings) -> dict[str, Any] | None:
    """The canonical arrays ``--init`` names, checked against the run's model; None for a random init (and on
    resume, where the checkpoint holds the weights)."""
    if settings.init is None or settings.resumed:
        return None
    try:
        arrays, _ = load_weights(settings.init)
        check_weight_keys(settings.spec, arrays)
    except (ValueError, OSError) as e:
        raise UserError(f"--init {settings.init}: {e}") from None
    return arrays
