"""Framework-neutral pieces of the two training CLIs (``pytorch_impl.train``, ``keras_impl.train``).

Both CLIs accept the same flags (:func:`train_arg_parser`) and resolve them into one :class:`Settings`
object (:func:`setup_run`): from the command line for a new run, from the run's ``config.json`` for
``--resume``. They pick their threads the same way (:func:`choose_threads`), build the same metrics
row (:class:`EpochLog`, :func:`metrics_row`) and stop the same way on a non-finite loss
(:func:`check_finite`). The run folder itself is :class:`shared.run_folder.RunFolder`. The data are
loaded by the trainers (they pass ``datasets.load_prepared`` in). This module imports neither torch
nor tensorflow.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared import machine, runs
from shared.data import DATASETS, LABELS, with_labels
from shared.process import package
from shared.recipes import Plan, make_plan, recipe_for
from shared.spec import SHORTCUTS, ModelSpec, get_spec

TRUE = ("1", "true", "yes", "on", "y")
AMP_DTYPES = ("auto", "bfloat16", "float16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DEFAULT_MODEL, DEFAULT_DATASET = "resnet20", "cifar10"
FAST_PATHS = ("amp", "compile", "channels_last", "jit", "strategy", "amp_dtype", "compile_mode")
# What runs saved before a fast path existed mean by it.
FAST_PATH_DEFAULTS = {"amp_dtype": "auto", "compile_mode": "default"}
FALSE = ("0", "false", "no", "off", "n", "")


def parse_bool(value: str | bool) -> bool:
    """``--amp``, ``--amp 1``, ``--amp true``... (the Makefile passes ``--amp $(AMP)``)."""
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in TRUE:
        return True
    if v in FALSE:
        return False
    raise argparse.ArgumentTypeError(
        f"expected a boolean ({'/'.join(TRUE[:4])} or {'/'.join(FALSE[:4])}); got {value!r}")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help, except None (not given: the help says what happens then)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


def train_arg_parser(prog: str, framework: str) -> argparse.ArgumentParser:
    """The flags both training CLIs accept (one command line for both); a few are honoured by one framework only."""
    p = argparse.ArgumentParser(
        prog=prog, description=f"Train a ResNet with {framework} (the paper's recipe by default).",
        formatter_class=_HelpFormatter,
    )
    g = p.add_argument_group("model and data")
    # None: not given (a resume then says nothing about it); a new run takes DEFAULT_MODEL / DEFAULT_DATASET
    g.add_argument("--model", default=None, help=f"registry name (default {DEFAULT_MODEL}; resnet110, resnet34, "
                                                 "plain20, ...)")
    g.add_argument("--dataset", default=None, choices=DATASETS, help=f"prepared dataset (default {DEFAULT_DATASET})")
    g.add_argument("--labels", default=None, choices=tuple(LABELS["cifar100"]),
                   help="cifar100's label set: fine (100 classes) or coarse (20 superclasses: cifar100_coarse)")
    g.add_argument("--data-dir", default="data", help="where datasets are prepared (python -m datasets.prepare)")
    g.add_argument("--num-classes", type=int, default=None, help="default: the dataset's class count")
    g.add_argument("--shortcut", choices=SHORTCUTS, default=None, help="override the model's shortcut option")
    g = p.add_argument_group("recipe (defaults: the dataset's recipe, shared/recipes.py)")
    g.add_argument("--epochs", type=int, default=None, help="run length in epochs (lr milestones at 50%%/75%%)")
    g.add_argument("--iters", type=int, default=None, help="run length in iterations (CIFAR default 64000)")
    g.add_argument("--batch-size", type=int, default=None, help="global batch size (CIFAR 128)")
    g.add_argument("--lr", type=float, default=None, help="base learning rate (CIFAR 0.1)")
    g.add_argument("--seed", type=int, default=0, help="seed of the initial weights and of every epoch's data plan")
    g.add_argument("--init", default=None, metavar="WEIGHTS",
                   help="start from these canonical weights (.safetensors) instead of a random init")
    g.add_argument("--no-augment", action="store_true",
                   help="train on the training split in order, without shuffle or augmentation (parity checks)")
    g = p.add_argument_group("run folder")
    g.add_argument("--out", default=None, help="the run folder (default runs/<dataset>/<model>/<framework>-<time>)")
    g.add_argument("--resume", default=None, metavar="RUN", help="continue the run in this folder from its checkpoint")
    g.add_argument("--trace-steps", type=int, default=0, metavar="N",
                   help="also record the loss of the first N optimizer steps in steps.json")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (the per-epoch line stays)")
    g = p.add_argument_group("fast paths")
    g.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:N / gpu")
    for flag, text in (("--amp", "mixed precision (bf16 on CPU, fp16 + loss scaling on GPU)"),
                       ("--compile", "torch.compile the model (torch)"),
                       ("--channels-last", "channels_last memory format (torch)"),
                       ("--jit", "XLA jit_compile the train/eval steps (keras)")):
        g.add_argument(flag, type=parse_bool, nargs="?", const=True, default=False, metavar="BOOL", help=text)
    g.add_argument("--amp-dtype", default="auto", choices=AMP_DTYPES,
                   help="torch --amp dtype: auto = bfloat16 on CPU, float16 + loss scaling on CUDA; bfloat16 on "
                        "GPUs that have it needs no loss scaling")
    g.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                   help="torch.compile mode for --compile; reduce-overhead replays CUDA graphs on GPUs")
    g.add_argument("--workers", type=int, default=None,
                   help="CPU threads for the framework's ops (default: the framework's own choice)")
    g.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="N processes on this machine: torch DDP through torch.distributed.run (one per GPU; gloo "
                        "with --device cpu); keras on the jax backend, joined by keras.distribution.initialize")
    g.add_argument("--strategy", default="auto", choices=("auto", "default", "mirrored"),
                   help="keras: tf.distribute strategy (auto = mirrored when more than one GPU is visible)")
    return p


def without_nproc(argv: list[str]) -> list[str]:
    """``argv`` less ``--nproc N`` / ``--nproc=N``: the command each launched training process runs."""
    rest, skip = [], False
    for arg in argv:
        if not skip and not arg.startswith("--nproc"):
            rest.append(arg)
        skip = arg == "--nproc"
    return rest


def emulated_bf16(amp: bool, bf16_on_cpu: bool, say: bool = True) -> bool:
    """Whether ``--amp`` must fall back to float32: it asks for bf16 on a CPU without native bf16, where
    emulated bf16 measured ~13x slower than float32 (0.07-0.08x); ``say``: print the one-line note."""
    fallback = amp and bf16_on_cpu and not machine.cpu_has_bf16()
    if fallback and say:
        print("note: --amp ignored: this CPU has no native bf16 (emulated bf16 measured 13x slower than float32 on "
              "such a CPU); training in float32", file=sys.stderr)
    return fallback


def fail(message: str) -> SystemExit:
    """A user error: one line on stderr, exit status 2 (as argparse), no traceback."""
    return SystemExit(f"error: {message}")


# The settings of a run ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """Every setting of one run, resolved once (:func:`setup_run`) and read, never written, by the trainer.

    A new run takes them from the command line; ``--resume`` from the run's ``config.json`` (``saved``),
    except what only concerns this invocation (device request, progress bar, step trace).
    """

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
    workers: int | None  # --workers as given (None: the framework's default threading)
    device: str  # --device as given (auto, cpu, cuda, ...)
    trace_steps: int = 0
    show_progress: bool = True
    saved: dict[str, Any] | None = None  # the config.json of the run being resumed

    @property
    def resumed(self) -> bool:
        return self.saved is not None

    def fast_paths(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in FAST_PATHS}


Loader = Callable[[str, str], Any]  # datasets.load_prepared(name, data_dir) -> a Prepared dataset


def load_data(load: Loader, dataset: str, data_dir: str) -> Any:
    """``load(dataset, data_dir)`` with its errors turned into one-line user errors."""
    try:
        return load(dataset, data_dir)
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as e:
        raise fail(str(e)) from e


def setup_run(args: argparse.Namespace, framework: str, load: Loader) -> tuple[Settings, Any]:
    """(settings, prepared data) of a new run, or of the run that ``--resume`` names."""
    if args.resume:
        return _resume_setup(args, framework, load)
    if args.epochs is not None and args.iters is not None:
        raise fail(f"give --epochs or --iters, not both; got --epochs {args.epochs} --iters {args.iters}")
    try:
        dataset = with_labels(args.dataset or DEFAULT_DATASET, args.labels)
    except ValueError as e:
        raise fail(str(e)) from e
    prepared = load_data(load, dataset, args.data_dir)
    manifest = prepared.manifest
    if args.num_classes is not None and args.num_classes != manifest["num_classes"]:
        raise fail(f"--num-classes {args.num_classes} does not match {dataset}, which has "
                   f"{manifest['num_classes']} classes ({', '.join(manifest['class_names'])})")
    try:
        spec = get_spec(args.model or DEFAULT_MODEL, num_classes=manifest["num_classes"], shortcut=args.shortcut,
                        input_size=manifest["image_size"])
        recipe = recipe_for(dataset, spec)
        plan = make_plan(recipe, manifest["splits"]["train"], epochs=args.epochs, iters=args.iters,
                         batch_size=args.batch_size, lr=args.lr)
    except ValueError as e:
        raise fail(str(e)) from e
    if args.init and not Path(args.init).is_file():
        raise fail(f"--init {args.init}: no such weight file")
    run_dir = Path(args.out) if args.out else runs.default_run_dir(dataset, spec.name, framework)
    if (run_dir / runs.CONFIG).exists():
        raise fail(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out")
    settings = Settings(
        framework, run_dir, spec, plan, recipe.reference, dataset, str(args.data_dir), args.seed, args.init,
        not args.no_augment, **{k: getattr(args, k) for k in FAST_PATHS}, workers=args.workers, device=args.device,
        trace_steps=args.trace_steps, show_progress=not args.no_progress)
    return settings, prepared


def _resume_setup(args: argparse.Namespace, framework: str, load: Loader) -> tuple[Settings, Any]:
    try:
        run = runs.read_run(args.resume)
    except runs.NotARunError as e:
        raise fail(f"--resume: {e}") from e
    config = run["config"]
    if config["framework"] != framework:
        raise fail(f"--resume {args.resume} is a {config['framework']} run; resume it with "
                   f"python -m {package(config['framework'])}.train")
    if run["checkpoint"] is None:
        raise fail(f"--resume {args.resume}: no checkpoint yet ({runs.CHECKPOINTS[framework]} is written at the "
                   "end of every epoch); start the run again instead")
    if run["finished"]:
        raise fail(f"--resume {args.resume}: the run has already finished (results.json)")
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
    prepared = load_data(load, config["dataset"], data_dir)
    if prepared.manifest["splits"] != config["data"]["splits"]:
        raise fail(f"--resume: the prepared {config['dataset']} splits {prepared.manifest['splits']} differ from "
                   f"the run's {config['data']['splits']}")
    fast = {k: config["fast_paths"].get(k, FAST_PATH_DEFAULTS.get(k)) for k in FAST_PATHS}
    settings = Settings(
        framework, Path(args.resume), ModelSpec.from_dict(config["spec"]),
        Plan.from_dict({k: v for k, v in recipe.items() if k != "reference"}), recipe.get("reference"),
        config["dataset"], str(data_dir), config["seed"], config.get("init"), config.get("augmentation") is not None,
        **fast, workers=args.workers, device=args.device, trace_steps=args.trace_steps,
        show_progress=not args.no_progress, saved=config)
    return settings, prepared


def choose_threads(settings: Settings, default: int | None, say: bool = True) -> tuple[int | None, dict[str, Any]]:
    """(intra-op thread count to set, or None to keep the framework's default; the ``threads`` record).

    ``default`` is the framework's own count in this process (None where it cannot be changed once
    running, as XLA's CPU pool). Results depend on the thread count, so ``--resume`` restores the count
    the run started with and says so in one line (``say``: the first of several processes says it); a
    different explicit ``--workers`` is refused.
    """
    workers = settings.workers
    if workers is not None and workers < 1:
        raise fail(f"--workers must be >= 1; got {workers}")
    if default is None:  # the framework sizes its pool at start-up: nothing to set or restore here
        return None, {"workers": workers, "intra_op": None}
    saved = (settings.saved or {}).get("threads")
    if saved is None or saved.get("intra_op") is None:  # a new run (or a resumed one that recorded none)
        return workers, {"workers": workers, "intra_op": workers or default}
    count = int(saved["intra_op"])
    if workers is not None and workers != count:
        raise fail(f"--workers {workers}: {settings.run_dir} started with {count} intra-op thread(s) and resumes "
                   f"with them (results depend on the thread count); leave --workers out or give --workers {count}")
    if saved.get("workers") is None and default == count:
        if say:
            print(f"note: resuming with the framework's default threading ({count} intra-op threads), as the "
                  "run started", file=sys.stderr)
        return None, saved
    how = (f"--workers {count}" if saved.get("workers") is not None
           else f"the default where it started; this machine's default is {default}")
    if say:
        print(f"note: resuming with {count} intra-op thread(s) ({how}), as the run started", file=sys.stderr)
    return count, saved


def resolve_device_name(requested: str, cuda_count: int) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible else ``cpu``; a clear error for unknown/unavailable ones."""
    req = (requested or "auto").lower()
    if req == "gpu":
        req = "cuda"
    if req == "auto":
        return "cuda" if cuda_count > 0 else "cpu"
    if req == "cpu":
        return "cpu"
    if req == "cuda" or (req.startswith("cuda:") and req[5:].isdigit()):
        if cuda_count == 0:
            raise fail(f"--device {requested}: no CUDA GPU is visible on this machine; valid choices: auto, cpu")
        if ":" in req and int(req[5:]) >= cuda_count:
            raise fail(f"--device {requested}: only {cuda_count} GPU(s) visible (cuda:0..cuda:{cuda_count - 1})")
        return req
    raise fail(f"unknown --device {requested!r}; valid choices: auto, cpu, cuda, cuda:N, gpu")


# During a run ------------------------------------------------------------------------------------
class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


def check_finite(loss: float, epoch: int, iteration: int, lr: float) -> None:
    """Raise :class:`NonFiniteLoss` with where it happened when ``loss`` is NaN or +-inf."""
    if not math.isfinite(loss):
        raise NonFiniteLoss(f"training loss became {loss} at epoch {epoch + 1}, iteration {iteration} (lr {lr:g})")


def nonfinite_message(err: NonFiniteLoss, run_dir: Path, last_good_epoch: int) -> str:
    """The one-line message a run stops with when its loss diverges."""
    kept = (f"the last good checkpoint (epoch {last_good_epoch}) is kept in {run_dir}"
            if last_good_epoch > 0 else f"no epoch finished, so {run_dir} holds no checkpoint")
    return (f"error: {err}; stopping. {kept}. Lower --lr, or turn --amp off, and start again "
            f"(or --resume {run_dir} after fixing the cause).")


@dataclass(frozen=True)
class EpochLog:
    """An epoch's training phase: mean loss, accuracy (sample-weighted), images seen, seconds it took."""

    loss: float
    acc: float
    images: int
    seconds: float


def metrics_row(epoch: int, train: EpochLog, val_loss: float, val_acc: float, lr: float, seconds: float) -> dict:
    """One ``metrics.csv`` row (``epoch`` is 1-based; ``lr`` is the lr of the epoch's last step; ``seconds``
    train + validation; ``images_per_s`` of the training phase alone)."""
    return {"epoch": epoch, "train_loss": float(train.loss), "train_acc": float(train.acc),
            "val_loss": float(val_loss), "val_acc": float(val_acc), "lr": float(lr), "seconds": float(seconds),
            "images_per_s": float(train.images / train.seconds) if train.seconds > 0 else 0.0}
