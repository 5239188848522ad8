"""A run folder over its life, driven by both training loops (the torch loop in plain PyTorch, the Keras
``fit`` through callbacks).

* :meth:`RunFolder.create` writes ``config.json`` once, complete (the device and threads are resolved
  before it is written); :meth:`RunFolder.reopen` continues a resumed run from its checkpoint's
  :class:`Progress`, cutting ``metrics.csv`` back to it.
* :meth:`RunFolder.record_epoch` closes an epoch: the ``metrics.csv`` row, last (and, when validation
  accuracy improved, best) canonical safetensors, TensorBoard scalars and the summary line. The
  loop then writes its framework's resume checkpoint at :attr:`RunFolder.checkpoint_path` when
  :meth:`RunFolder.checkpoint_due` says so, so a checkpoint never runs ahead of the rows and weights.
* :meth:`RunFolder.finish` writes ``results.json``.

The layout is ``shared/runs.py``'s. This module imports neither torch nor tensorflow.
"""

from __future__ import annotations

import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared import runs
from shared.data import augmentation
from shared.io import atomic_write_json, load_weights, save_weights
from shared.machine import git_commit, library_versions
from shared.recipes import Plan
from shared.spec import ModelSpec
from shared.training import Settings

CHECKPOINT_EVERY = 1  # epochs between resume checkpoints (and always after the last epoch)


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
        self.wall_time_s += float(row["seconds"])
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

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]], plan: Plan) -> Progress:
        """The progress of a run whose first ``len(rows)`` epochs are done (``metrics.csv`` is its record)."""
        progress = cls()
        for row in rows:
            progress.finish_epoch(row)
        progress.iteration = sum(plan.iters_in_epoch(e) for e in range(progress.epoch))
        return progress


def new_config(settings: Settings, manifest: dict[str, Any], device: dict[str, Any],
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
        self.events = EventFileWriter(str(run_dir))

    def add(self, tag: str, value: float, step: int) -> None:
        summary = self._summary(value=[self._summary.Value(tag=tag, simple_value=float(value))])
        self.events.add_event(self._event(summary=summary, step=int(step), wall_time=time.time()))

    def flush(self) -> None:
        self.events.flush()

    def close(self) -> None:
        self.events.close()


class RunFolder:
    """One run folder, written by the process that owns it (the first of several). Use :meth:`create` or
    :meth:`reopen`; close it (or use it as a context manager) to flush TensorBoard. The other processes of
    a run that a loop drives the same way on each (Keras on several JAX processes) :meth:`follow` it:
    their progress advances as the owner's, and they write nothing."""

    def __init__(self, settings: Settings, config: dict[str, Any], progress: Progress, owner: bool = True) -> None:
        self.settings, self.config, self.progress, self.owner = settings, config, progress, owner
        self.path, self.spec, self.plan = settings.run_dir, settings.spec, settings.plan
        self.steps: dict[str, list[float]] = {"loss": [], "lr": []}
        self.scalars = None
        if owner:
            self.path.mkdir(parents=True, exist_ok=True)
            self.scalars = Scalars(self.path)

    @classmethod
    def create(cls, settings: Settings, manifest: dict[str, Any], device: dict[str, Any],
               threads: dict[str, Any]) -> RunFolder:
        """A new run: ``config.json`` written, complete, before anything else."""
        config = new_config(settings, manifest, device, threads)
        runs.write_config(settings.run_dir, config)
        return cls(settings, config, Progress())

    @classmethod
    def follow(cls, settings: Settings, config: dict[str, Any], progress: Progress) -> RunFolder:
        """The run as a process that does not own the folder sees it: nothing is written."""
        return cls(settings, config, progress, owner=False)

    @classmethod
    def reopen(cls, settings: Settings, progress: Progress) -> RunFolder:
        """A resumed run at its checkpoint's ``progress``: rows written after the checkpoint are dropped."""
        runs.write_metrics(settings.run_dir, progress.rows)
        return cls(settings, dict(settings.saved or {}), progress)

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def checkpoint_path(self) -> Path:
        """Where the framework's resume checkpoint lives (``runs.CHECKPOINTS``)."""
        return self.path / runs.CHECKPOINTS[self.settings.framework]

    def checkpoint_due(self, epoch: int) -> bool:
        """Whether the resume checkpoint is written after (1-based) ``epoch``."""
        return epoch % CHECKPOINT_EVERY == 0 or epoch >= self.plan.epochs

    def announce(self, where: str) -> None:
        """The run's first line: what trains where, for how long, into which folder."""
        if not self.owner:
            return
        verb = f"resuming at epoch {self.progress.epoch + 1}" if self.settings.resumed else "training"
        plan = self.plan
        print(f"{verb} {self.spec.name} ({where}) on {self.settings.dataset}: {plan.epochs} epochs x "
              f"{plan.iters_per_epoch} it = {plan.total_iters} iterations, batch {plan.batch_size}, lr {plan.lr:g} "
              f"(milestones {list(plan.milestones)}) -> {self.path}", flush=True)

    def trace_step(self, loss: float, lr: float) -> None:
        """Record the loss and lr of one of the first ``--trace-steps`` optimizer steps (``steps.json``)."""
        self.steps["loss"].append(float(loss))
        self.steps["lr"].append(float(lr))

    def record_epoch(self, row: dict[str, Any], arrays: dict[str, Any]) -> bool:
        """Close an epoch (``row`` from ``shared.training.metrics_row``, ``arrays`` the canonical weights):
        the metrics row, last and (when val accuracy improved) best weights, each written atomically;
        ``steps.json`` when tracing; TensorBoard; the summary line. True when the weights are the best."""
        framework, progress = self.settings.framework, self.progress
        improved = progress.finish_epoch(row)
        if not self.owner:
            return improved
        runs.write_metrics(self.path, progress.rows)
        save_weights(self.path / runs.LAST, arrays, weights_metadata(self.spec, framework, progress.epoch))
        if improved:
            save_weights(self.path / runs.BEST, arrays,
                         weights_metadata(self.spec, framework, progress.epoch, val_acc=row["val_acc"]))
        if self.steps["loss"]:
            atomic_write_json(self.path / "steps.json", self.steps)
        e = row["epoch"]
        for split in ("train", "val"):
            self.scalars.add(f"loss/{split}", row[f"{split}_loss"], e)
            self.scalars.add(f"accuracy/{split}", row[f"{split}_acc"], e)
        self.scalars.add("lr", row["lr"], e)
        self.scalars.add("images_per_s", row["images_per_s"], e)
        self.scalars.flush()
        from tqdm import tqdm

        tqdm.write(epoch_line(row, self.plan.epochs, progress), file=sys.stdout)
        sys.stdout.flush()
        return improved

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

    def close(self) -> None:
        if self.scalars is not None:
            self.scalars.close()
