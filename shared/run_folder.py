"""A training run's folder over its life, driven the same way by both trainers (the torch loop in plain PyTorch,
Keras ``fit`` through callbacks) on every process of a run: the first writes it, the others follow it.
The layout is ``shared/runs.py``'s; docs/training.md tells the life cycle. Imports neither torch nor tensorflow.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared import runs
from shared.data import augmentation
from shared.errors import UserError
from shared.io import WriteError, atomic_write_json, load_weights, refusal, save_weights, together, writing
from shared.machine import git_commit, library_versions
from shared.recipes import Plan
from shared.run_settings import RunSettings
from shared.signals import STOPPED, StopNow
from shared.spec import ModelSpec

CHECKPOINT_EVERY = 1  # epochs between resume checkpoints (and always after the last epoch)
CHECK_EVERY = 10  # training steps between host checks of the loss (progress bar, NaN guard): each one syncs


class NonFiniteLoss(UserError):
    """The training loss became NaN or infinite; the message says where, what is kept and what to do."""


@dataclass(frozen=True)
class EpochLog:
    """An epoch's training phase: mean loss and accuracy (sample-weighted), images seen, its seconds, and the
    lr of its last step."""

    loss: float
    acc: float
    images: int
    seconds: float
    lr: float


@dataclass
class Progress:
    """Where a run is: finished epochs, global iteration, best validation accuracy, metrics rows, and the position
    inside the epoch in progress when a stop signal ended the process there (``step``, and the framework's
    ``partial`` record of the epoch so far: its running sums, its training seconds).

    This is the framework-neutral part of every resume checkpoint (stored as JSON-able values).
    """

    epoch: int = 0  # epochs finished
    iteration: int = 0  # optimizer steps taken
    best_val_acc: float = -1.0
    best_epoch: int = 0
    wall_time_s: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)
    step: int = 0  # steps taken in epoch ``epoch + 1``
    partial: dict[str, Any] = field(default_factory=dict)

    def finish_epoch(self, row: dict[str, Any]) -> bool:
        """Record an epoch's metrics row; True when its validation accuracy is the best so far."""
        self.rows.append(row)
        self.epoch = int(row["epoch"])
        self.step, self.partial = 0, {}
        self.wall_time_s += float(row["seconds"])
        if row["val_acc"] > self.best_val_acc:
            self.best_val_acc, self.best_epoch = float(row["val_acc"]), self.epoch
            return True
        return False

    def stop_at(self, step: int, partial: dict[str, Any]) -> None:
        """Mark the position inside the epoch in progress: ``step`` steps taken, ``partial`` the epoch's record."""
        self.step, self.partial = step, partial

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "iteration": self.iteration, "best_val_acc": self.best_val_acc,
                "best_epoch": self.best_epoch, "wall_time_s": self.wall_time_s, "rows": list(self.rows),
                "step": self.step, "partial": dict(self.partial)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Progress:
        return cls(int(d["epoch"]), int(d["iteration"]), float(d["best_val_acc"]), int(d["best_epoch"]),
                   float(d["wall_time_s"]), [dict(r) for r in d["rows"]], int(d.get("step", 0)),
                   dict(d.get("partial", {})))

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]], plan: Plan, step: int = 0,
                  partial: dict[str, Any] | None = None) -> Progress:
        """The progress of a run whose first ``len(rows)`` epochs are done (``metrics.csv`` is its record), and
        ``step`` steps into the next one."""
        progress = cls()
        for row in rows:
            progress.finish_epoch(row)
        progress.iteration = sum(plan.iters_in_epoch(e) for e in range(progress.epoch)) + step
        progress.stop_at(step, partial or {})
        return progress


def new_config(settings: RunSettings, manifest: dict[str, Any], device: dict[str, Any],
               threads: dict[str, Any]) -> dict[str, Any]:
    """``config.json`` of a new run: every setting, the data it reads, the device and threads, versions."""
    spec = settings.spec
    return {
        "model": spec.name,
        "framework": settings.framework,
        "dataset": settings.dataset,
        "synthetic": bool(manifest.get("synthetic", False)),
        "spec": spec.to_dict(),
        "class_names": list(manifest["class_names"]),
        "input_size": spec.input_size,
        "normalization": {"mean": list(manifest["mean"]), "std": list(manifest["std"])},
        "augmentation": ({"pad": augmentation(settings.dataset).pad, "crop": spec.input_size, "hflip": True}
                         if settings.augment else None),
        "recipe": settings.plan.to_dict() | {"reference": settings.reference},
        "seed": settings.seed,
        "data": {"data_dir": settings.data_dir, "splits": manifest["splits"], "source": manifest.get("source"),
                 "version": manifest.get("version")},
        "init": settings.init,
        "fast_paths": settings.fast_paths(),
        "threads": threads,
        "versions": library_versions(),
        "git_commit": git_commit(),
        "device": device,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def metrics_row(epoch: int, train: EpochLog, val_loss: float, val_acc: float, seconds: float) -> dict[str, Any]:
    """One ``metrics.csv`` row (``epoch`` 1-based; ``lr`` of the epoch's last step; ``seconds`` train +
    validation; ``images_per_s`` of the training phase alone)."""
    return {"epoch": epoch, "train_loss": float(train.loss), "train_acc": float(train.acc),
            "val_loss": float(val_loss), "val_acc": float(val_acc), "lr": float(train.lr), "seconds": float(seconds),
            "images_per_s": float(train.images / train.seconds) if train.seconds > 0 else 0.0}


def weights_metadata(spec: ModelSpec, framework: str, epoch: int, **extra: Any) -> dict[str, str]:
    """safetensors metadata of best/last weights: spec (JSON), framework, epoch (+ extras)."""
    return {"spec": spec.to_json(), "framework": framework, "epoch": str(epoch),
            **{k: str(v) for k, v in extra.items()}}


def epoch_line(row: dict[str, Any], epochs: int, progress: Progress) -> str:
    """The one summary line printed after every epoch."""
    return (f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
            f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}  lr {row['lr']:.4g}  "
            f"{row['seconds']:.1f}s  {row['images_per_s']:.0f} img/s  "
            f"best val acc {progress.best_val_acc:.4f} (epoch {progress.best_epoch})")


class Scalars:
    """TensorBoard scalar events in the run folder, through tensorboard's own event writer.

    No framework is needed: tensorboard resolves its ``tf`` lazily and uses its TF-free stub when the
    module ``tensorboard.compat.notf`` exists (its documented no-TensorFlow switch). tensorflow must
    not be imported next to torch (torch.export crashes in such a process), and the Keras JAX/torch
    backends run without it.
    """

    def __init__(self, run_dir: Path) -> None:
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event, self._summary = Event, Summary
        self.path = run_dir
        self.events = EventFileWriter(str(run_dir))
        _quiet_writer_threads()

    def add(self, tag: str, value: float, step: int) -> None:
        summary = self._summary(value=[self._summary.Value(tag=tag, simple_value=float(value))])
        self.events.add_event(self._event(summary=summary, step=int(step), wall_time=time.time()))

    def add_row(self, row: dict[str, Any]) -> None:
        """An epoch's metrics row as scalars at step ``epoch``, written out; a refused write (a full disk) is a
        ``WriteError`` naming the events files."""
        e = row["epoch"]
        with writing(self.path / "events.out.tfevents.*"):
            for split in ("train", "val"):
                self.add(f"loss/{split}", row[f"{split}_loss"], e)
                self.add(f"accuracy/{split}", row[f"{split}_acc"], e)
            self.add("lr", row["lr"], e)
            self.add("images_per_s", row["images_per_s"], e)
            self.events.flush()

    def close(self) -> None:
        self.events.close()


def _quiet_writer_threads() -> None:
    """TensorBoard's writer thread prints a traceback when its write fails (a full disk); the next ``add`` or
    ``flush`` in the main thread raises the same error, which the run says in one line. Hide the thread's."""
    previous = threading.excepthook
    if getattr(previous, "quiets_tensorboard", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if not (type(args.thread).__module__.startswith("tensorboard.") and issubclass(args.exc_type, OSError)):
            previous(args)

    hook.quiets_tensorboard = True
    threading.excepthook = hook


class RunFolder:
    """One run folder. :meth:`start` opens it on every process of a run; only the owner (the first process)
    writes, and the others follow: their progress advances as the owner's. Close it (or use it as a context
    manager) to flush TensorBoard."""

    def __init__(self, settings: RunSettings, config: dict[str, Any], progress: Progress, owner: bool = True) -> None:
        self.settings, self.config, self.progress, self.owner = settings, config, progress, owner
        self.path, self.spec, self.plan = settings.run_dir, settings.spec, settings.plan
        # (epoch, step) of the resume checkpoint on disk: finished epochs, steps into the next; None: none yet
        self.kept: tuple[int, int] | None = (progress.epoch, progress.step) if settings.resumed else None
        self.steps: dict[str, list[float]] = {"loss": [], "lr": []}
        self.said: list[str] = []  # summary lines waiting for their epoch's files to land
        self.in_block = False  # inside :meth:`saving`
        self.scalars = None
        if owner:
            self.path.mkdir(parents=True, exist_ok=True)
            self.scalars = Scalars(self.path)

    @classmethod
    def start(cls, settings: RunSettings, progress: Progress, *, owner: bool, manifest: dict[str, Any],
              device: dict[str, Any], threads: dict[str, Any]) -> RunFolder:
        """The run at ``progress`` (a resume's checkpoint, or a new run's start): a new run's owner writes
        ``config.json``, complete, before anything else; a resumed run's owner cuts ``metrics.csv`` back to
        ``progress``; the other processes write nothing."""
        if not owner:
            return cls(settings, {"device": device}, progress, owner=False)
        if settings.resumed:
            runs.write_metrics(settings.run_dir, progress.rows)
            return cls(settings, dict(settings.saved or {}), progress)
        config = new_config(settings, manifest, device, threads)
        runs.write_config(settings.run_dir, config)
        return cls(settings, config, progress)

    def __enter__(self) -> RunFolder:
        return self

    @property
    def checkpoint_path(self) -> Path:
        """Where the framework's resume checkpoint lives (``runs.CHECKPOINTS``)."""
        return self.path / runs.CHECKPOINTS[self.settings.framework]

    def checkpoint_due(self, *, collective: bool = False) -> bool:
        """Whether this process writes the resume checkpoint now, at the end of epoch ``progress.epoch``: every
        :data:`CHECKPOINT_EVERY` epochs and after the last, on the owner; ``collective``: on every process (a
        save that all processes must join, as Keras' on several JAX processes)."""
        epoch = self.progress.epoch
        return (self.owner or collective) and (epoch % CHECKPOINT_EVERY == 0 or epoch >= self.plan.epochs)

    def check_loss(self, loss: float, lr: float) -> None:
        """The NaN guard: :class:`NonFiniteLoss` when the running training loss is NaN or infinite, saying where,
        which checkpoint is kept, and what to do."""
        if math.isfinite(loss):
            return
        keeps = (f"the last good checkpoint ({self.position(*self.kept)}) is kept in {self.path}" if self.kept
                 else f"no epoch finished, so {self.path} holds no checkpoint")
        raise NonFiniteLoss(f"training loss became {loss} at epoch {self.progress.epoch + 1}, iteration "
                            f"{self.progress.iteration} (lr {lr:g}); stopping. {keeps}. Lower --lr, or turn --amp "
                            f"off, and start again (or --resume {self.path} after fixing the cause).")

    @staticmethod
    def position(epoch: int, step: int) -> str:
        """``epoch 3``, or ``epoch 3, step 120`` inside epoch 3 (1-based epoch, steps taken in it)."""
        return f"epoch {epoch}" if step == 0 else f"epoch {epoch + 1}, step {step}"

    def keeps(self) -> str:
        """What a stopped run keeps on disk, and how to go on."""
        if self.kept is None:
            return f"no epoch finished, so {self.path} holds no checkpoint: start the run again"
        return f"the run keeps {self.position(*self.kept)}; resume with RESUME={self.path}"

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        """The run's files written inside land together (``shared.io.together``), the resume checkpoint last, and
        become the state a resume starts from: the epoch closed in the block, or the position inside the epoch
        that :meth:`Progress.stop_at` marked. A refused write (a full disk) is one line that says what the run
        keeps, and every file stays as it was."""
        self.in_block = True
        try:
            with together():
                yield
        except WriteError as e:
            keeps = self.keeps()
            raise e.advise(keeps.replace("resume with", "free space and resume with") if e.disk_full
                           else keeps) from None
        finally:
            self.in_block = False
        self.kept = (self.progress.epoch, self.progress.step)
        self.say()

    def stopped(self, signal: str = "SIGTERM") -> int:
        """After the checkpoint of a stop signal: the one line that says where and how to resume; exit status 143."""
        if self.owner:
            p = self.progress
            print(f"stopped by {signal} at epoch {p.epoch + 1}, step {p.step}; resume with RESUME={self.path}",
                  file=sys.stderr, flush=True)
        return STOPPED

    def stopped_at_once(self, stop: StopNow) -> int:
        """After a second SIGTERM or a SIGINT: the one line that says what the run keeps; its exit status."""
        return stop.said(self.keeps(), say=self.owner)

    def announce(self, where: str) -> None:
        """The run's first line: what trains where, for how long, into which folder."""
        if not self.owner:
            return
        step = f", step {self.progress.step}" if self.progress.step else ""
        verb = f"resuming at epoch {self.progress.epoch + 1}{step}" if self.settings.resumed else "training"
        plan = self.plan
        print(f"{verb} {self.spec.name} ({where}) on {self.settings.dataset}: {plan.epochs} epochs x "
              f"{plan.iters_per_epoch} it = {plan.total_iters} iterations, batch {plan.batch_size}, lr {plan.lr:g} "
              f"(milestones {list(plan.milestones)}) -> {self.path}", flush=True)

    def trace_step(self, loss: float, lr: float) -> None:
        """Record the loss and lr of one of the first ``--trace-steps`` optimizer steps (``steps.json``)."""
        self.steps["loss"].append(float(loss))
        self.steps["lr"].append(float(lr))

    def record_epoch(self, train: EpochLog, val_loss: float, val_acc: float, *, seconds: float,
                     weights: dict[str, Any]) -> bool:
        """Close an epoch: its ``metrics.csv`` row, last and (when validation accuracy improved) best weights
        (``weights``: canonical arrays), each written atomically; ``steps.json`` when tracing; TensorBoard; the
        summary line (inside :meth:`saving`, once the block's files have landed). ``seconds``: training and
        validation. True when the weights are the best so far."""
        framework, progress = self.settings.framework, self.progress
        row = metrics_row(progress.epoch + 1, train, val_loss, val_acc, seconds)
        improved = progress.finish_epoch(row)
        if not self.owner:
            return improved
        runs.write_metrics(self.path, progress.rows)
        save_weights(self.path / runs.LAST, weights, weights_metadata(self.spec, framework, progress.epoch))
        if improved:
            save_weights(self.path / runs.BEST, weights,
                         weights_metadata(self.spec, framework, progress.epoch, val_acc=row["val_acc"]))
        if self.steps["loss"]:
            atomic_write_json(self.path / "steps.json", self.steps)
        self.scalars.add_row(row)
        self.said.append(epoch_line(row, self.plan.epochs, progress))
        if not self.in_block:
            self.say()
        return improved

    def say(self) -> None:
        """Print the summary lines of the epochs written (after their files have landed)."""
        from tqdm import tqdm

        for line in self.said:
            tqdm.write(line, file=sys.stdout)
        self.said.clear()
        sys.stdout.flush()

    def best_weights(self) -> dict[str, Any]:
        """The canonical arrays of ``best.safetensors`` (the test split is evaluated with them)."""
        return load_weights(self.path / runs.BEST)[0]

    def finish(self, test_loss: float, test_acc: float) -> dict[str, Any]:
        """``results.json``: the test split evaluated once, with the best (validation) weights."""
        p = self.progress
        if not self.owner:
            return {}
        results = {"test_acc": float(test_acc), "test_loss": float(test_loss), "best_epoch": p.best_epoch,
                   "best_val_acc": p.best_val_acc, "epochs": p.epoch, "iterations": p.iteration,
                   "total_iters": self.plan.total_iters, "wall_time_s": round(p.wall_time_s, 3),
                   "weights": runs.BEST, "finished": True}
        runs.write_results(self.path, results)
        print(f"test acc {test_acc:.4f} loss {test_loss:.4f} with the best weights (epoch {p.best_epoch}, "
              f"val acc {p.best_val_acc:.4f}); {p.wall_time_s:.1f}s -> {self.path}", flush=True)
        return results

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        try:
            self.close()
        except Exception as e:  # TensorBoard's writer thread met the same full disk: the first error is the one
            if kind is None:
                raise (refusal(self.path, e) or e) from None

    def close(self) -> None:
        if self.scalars is not None:
            scalars, self.scalars = self.scalars, None
            scalars.close()
