"""Framework-neutral pieces of the two training CLIs (``pytorch_impl.train``, ``keras_impl.train``).

Both CLIs accept the same flags (:func:`train_arg_parser`), resolve a run the same way
(:func:`setup_run`: data, spec, recipe, plan, run folder, or the saved state of ``--resume``), log
the same per-epoch row and summary line (:class:`EpochLog`, :func:`epoch_line`), track the best
validation accuracy the same way (:class:`Progress`) and stop the same way on a non-finite loss
(:func:`check_finite`). Only the framework-specific steps (model, optimizer, one step, checkpoint
format) live in the framework packages. This module imports neither torch nor tensorflow.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared import runs
from shared.data import DATASETS, LABELS, augmentation, with_labels
from shared.machine import library_versions
from shared.recipes import Plan, make_plan, recipe_for
from shared.spec import SHORTCUTS, ModelSpec, get_spec

TRUE = ("1", "true", "yes", "on", "y")
AMP_DTYPES = ("auto", "bfloat16", "float16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
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


def train_arg_parser(prog: str, framework: str) -> argparse.ArgumentParser:
    """The flags both training CLIs accept (one command line for both); a few are honoured by one framework only."""
    p = argparse.ArgumentParser(
        prog=prog, description=f"Train a ResNet with {framework} (the paper's recipe by default).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default="resnet20", help="registry name (resnet20, resnet110, resnet34, plain20, ...)")
    g.add_argument("--dataset", default="cifar10", choices=DATASETS, help="prepared dataset")
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
                   help="torch: N DDP processes on this machine, started through torch.distributed.run "
                        "(one per GPU; gloo processes with --device cpu)")
    g.add_argument("--strategy", default="auto", choices=("auto", "default", "mirrored"),
                   help="keras: tf.distribute strategy (auto = mirrored when more than one GPU is visible)")
    return p


def fail(message: str) -> SystemExit:
    """A user error: one line on stderr, exit status 2 (as argparse), no traceback."""
    return SystemExit(f"error: {message}")


# Setting a run up -------------------------------------------------------------------------------
@dataclass
class RunSetup:
    """Everything a framework needs to start (or continue) a run."""

    args: argparse.Namespace
    framework: str
    run_dir: Path
    spec: ModelSpec
    plan: Plan
    prepared: Any
    config: dict[str, Any]
    resumed: bool = False


def load_data(dataset: str, data_dir: str) -> Any:
    """``datasets.load_prepared`` with its errors turned into one-line user errors."""
    import datasets

    try:
        return datasets.load_prepared(dataset, data_dir)
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as e:
        raise fail(str(e)) from e


def setup_run(args: argparse.Namespace, framework: str) -> RunSetup:
    """Resolve the data, spec, plan and run folder of a new run, or reload them for ``--resume``."""
    if args.resume:
        return _resume_setup(args, framework)
    if args.epochs is not None and args.iters is not None:
        raise fail(f"give --epochs or --iters, not both; got --epochs {args.epochs} --iters {args.iters}")
    try:
        args.dataset = with_labels(args.dataset, args.labels)
    except ValueError as e:
        raise fail(str(e)) from e
    prepared = load_data(args.dataset, args.data_dir)
    manifest = prepared.manifest
    if args.num_classes is not None and args.num_classes != manifest["num_classes"]:
        raise fail(f"--num-classes {args.num_classes} does not match {args.dataset}, which has "
                   f"{manifest['num_classes']} classes ({', '.join(manifest['class_names'])})")
    try:
        spec = get_spec(args.model, num_classes=manifest["num_classes"], shortcut=args.shortcut,
                        input_size=manifest["image_size"])
        recipe = recipe_for(args.dataset, spec)
        plan = make_plan(recipe, manifest["splits"]["train"], epochs=args.epochs, iters=args.iters,
                         batch_size=args.batch_size, lr=args.lr)
    except ValueError as e:
        raise fail(str(e)) from e
    if args.init and not Path(args.init).is_file():
        raise fail(f"--init {args.init}: no such weight file")
    run_dir = Path(args.out) if args.out else runs.default_run_dir(args.dataset, spec.name, framework)
    if (run_dir / runs.CONFIG).exists():
        raise fail(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out")
    config = {
        "model": spec.name,
        "framework": framework,
        "dataset": args.dataset,
        "synthetic": bool(manifest.get("synthetic", False)),
        "spec": spec.to_dict(),
        "class_names": list(manifest["class_names"]),
        "input_size": spec.input_size,
        "normalization": {"mean": list(manifest["mean"]), "std": list(manifest["std"])},
        "augmentation": ({"pad": augmentation(args.dataset).pad, "crop": spec.input_size, "hflip": True}
                         if not args.no_augment else None),
        "recipe": plan.to_dict() | {"reference": recipe.reference},
        "seed": args.seed,
        "data": {"data_dir": str(args.data_dir), "splits": manifest["splits"], "source": manifest.get("source"),
                 "version": manifest.get("version")},
        "init": args.init,
        "fast_paths": {k: getattr(args, k) for k in FAST_PATHS},
        "versions": library_versions(),
        "git_commit": runs.git_commit(),
        "device": None,  # filled in by the framework once the device is known
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    return RunSetup(args, framework, run_dir, spec, plan, prepared, config)


def _resume_setup(args: argparse.Namespace, framework: str) -> RunSetup:
    try:
        run = runs.read_run(args.resume)
    except runs.NotARunError as e:
        raise fail(f"--resume: {e}") from e
    config = run["config"]
    if config["framework"] != framework:
        raise fail(f"--resume {args.resume} is a {config['framework']} run; resume it with "
                   f"python -m {'pytorch_impl' if config['framework'] == 'torch' else 'keras_impl'}.train")
    if run["checkpoint"] is None:
        raise fail(f"--resume {args.resume}: no checkpoint yet ({runs.CHECKPOINTS[framework]} is written at the "
                   "end of every epoch); start the run again instead")
    if run["finished"]:
        raise fail(f"--resume {args.resume}: the run has already finished (results.json)")
    # The saved configuration wins: the run continues exactly as it was started. Say so when a flag
    # asks for something else, rather than ignore it silently.
    saved = {"model": config["model"], "dataset": config["dataset"], "epochs": config["recipe"].get("epochs"),
             "iters": config["recipe"].get("total_iters"), "batch_size": config["recipe"].get("batch_size"),
             "lr": config["recipe"].get("lr"), "num_classes": config["spec"]["num_classes"],
             "shortcut": config["spec"]["shortcut"]}
    for key, value in saved.items():
        given = getattr(args, key, None)
        if given is not None and value is not None and given != value:
            print(f"note: --{key.replace('_', '-')} {given} ignored: resuming {args.resume}, which runs with "
                  f"{key} {value}", file=sys.stderr)
    for key in FAST_PATHS:
        setattr(args, key, config["fast_paths"].get(key, FAST_PATH_DEFAULTS.get(key)))
    args.dataset, args.seed, args.init = config["dataset"], config["seed"], config.get("init")
    args.no_augment = config.get("augmentation") is None
    args.data_dir = args.data_dir if args.data_dir != "data" else config["data"]["data_dir"]
    prepared = load_data(config["dataset"], args.data_dir)
    if prepared.manifest["splits"] != config["data"]["splits"]:
        raise fail(f"--resume: the prepared {config['dataset']} splits {prepared.manifest['splits']} differ from "
                   f"the run's {config['data']['splits']}")
    spec = ModelSpec.from_dict(config["spec"])
    plan = Plan.from_dict({k: v for k, v in config["recipe"].items() if k != "reference"})
    return RunSetup(args, framework, Path(args.resume), spec, plan, prepared, config, resumed=True)


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


def seed_python(seed: int) -> None:
    """Seed Python's own RNG (nothing in training draws from it; kept for completeness)."""
    random.seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


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


@dataclass
class EpochLog:
    """Running sums of one epoch's training loss and accuracy (sample-weighted)."""

    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0

    def add(self, mean_loss: float, correct: int, n: int) -> None:
        self.loss_sum += mean_loss * n
        self.correct += int(correct)
        self.seen += int(n)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.seen, 1)

    @property
    def acc(self) -> float:
        return self.correct / max(self.seen, 1)


@dataclass
class Progress:
    """Where a run is: finished epochs, global iteration, best validation accuracy, metrics rows.

    This is the framework-neutral part of every resume checkpoint (stored as JSON-able values).
    """

    epoch: int = 0  # epochs finished
    iteration: int = 0  # optimizer steps taken
    best_val_acc: float = -1.0
    best_epoch: int = 0
    wall_time_s: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)

    def finish_epoch(self, row: dict[str, Any]) -> bool:
        """Record an epoch's metrics row; True when its validation accuracy is the best so far."""
        self.rows.append(row)
        self.epoch = int(row["epoch"])
        if row["val_acc"] > self.best_val_acc:
            self.best_val_acc, self.best_epoch = float(row["val_acc"]), self.epoch
            return True
        return False

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "iteration": self.iteration, "best_val_acc": self.best_val_acc,
                "best_epoch": self.best_epoch, "wall_time_s": self.wall_time_s, "rows": list(self.rows)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Progress:
        return cls(int(d["epoch"]), int(d["iteration"]), float(d["best_val_acc"]), int(d["best_epoch"]),
                   float(d["wall_time_s"]), [dict(r) for r in d["rows"]])


def metrics_row(epoch: int, train: EpochLog, val_loss: float, val_acc: float, lr: float, seconds: float) -> dict:
    """One ``metrics.csv`` row (``epoch`` is 1-based; ``lr`` is the lr of the epoch's last step)."""
    return {"epoch": epoch, "train_loss": float(train.loss), "train_acc": float(train.acc),
            "val_loss": float(val_loss), "val_acc": float(val_acc), "lr": float(lr), "seconds": float(seconds),
            "images_per_s": float(train.seen / seconds) if seconds > 0 else 0.0}


def epoch_line(row: dict[str, Any], epochs: int, progress: Progress) -> str:
    """The one summary line printed after every epoch."""
    return (f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
            f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}  lr {row['lr']:.4g}  "
            f"{row['seconds']:.1f}s  {row['images_per_s']:.0f} img/s  "
            f"best val acc {progress.best_val_acc:.4f} (epoch {progress.best_epoch})")


def weights_metadata(spec: ModelSpec, framework: str, epoch: int, **extra: Any) -> dict[str, str]:
    """safetensors metadata of best/last weights: spec (JSON), framework, epoch (+ extras)."""
    return {"spec": spec.to_json(), "framework": framework, "epoch": str(epoch),
            **{k: str(v) for k, v in extra.items()}}


def end_of_epoch(setup: RunSetup, framework: str, progress: Progress, row: dict[str, Any],
                 arrays: dict[str, Any], save_checkpoint: Any, writer: Any) -> None:
    """Close an epoch the same way in both frameworks: the metrics row, the last (and, when val
    accuracy improved, best) canonical weights, then the framework's resume checkpoint
    (``save_checkpoint(path)``; None where the framework writes it itself right after, as Keras'
    BackupAndRestore callback does), each written atomically and in this order; then TensorBoard
    scalars and the summary line."""
    from tqdm import tqdm

    from shared.io import save_weights

    run_dir, spec = setup.run_dir, setup.spec
    improved = progress.finish_epoch(row)
    runs.write_metrics(run_dir, progress.rows)
    save_weights(run_dir / runs.LAST, arrays, weights_metadata(spec, framework, progress.epoch))
    if improved:
        save_weights(run_dir / runs.BEST, arrays,
                     weights_metadata(spec, framework, progress.epoch, val_acc=row["val_acc"]))
    if save_checkpoint is not None:
        save_checkpoint(run_dir / runs.CHECKPOINTS[framework])
    e = row["epoch"]
    for split in ("train", "val"):
        writer.add_scalar(f"loss/{split}", row[f"{split}_loss"], e)
        writer.add_scalar(f"accuracy/{split}", row[f"{split}_acc"], e)
    writer.add_scalar("lr", row["lr"], e)
    writer.add_scalar("images_per_s", row["images_per_s"], e)
    writer.flush()
    tqdm.write(epoch_line(row, setup.plan.epochs, progress), file=sys.stdout)
    sys.stdout.flush()


def results_dict(test_loss: float, test_acc: float, progress: Progress, plan: Plan) -> dict[str, Any]:
    """``results.json``: the test split evaluated once, with the best (validation) weights."""
    return {"test_acc": float(test_acc), "test_loss": float(test_loss), "best_epoch": progress.best_epoch,
            "best_val_acc": progress.best_val_acc, "epochs": progress.epoch, "iterations": progress.iteration,
            "total_iters": plan.total_iters, "wall_time_s": round(progress.wall_time_s, 3),
            "weights": runs.BEST, "finished": True}


def write_steps(run_dir: Path, losses: list[float], lrs: list[float]) -> None:
    """``steps.json``: the loss and lr of the first optimizer steps (``--trace-steps``)."""
    from shared.io import atomic_write_json

    atomic_write_json(run_dir / "steps.json", {"loss": [float(x) for x in losses], "lr": [float(x) for x in lrs]})
