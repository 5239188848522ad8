"""The callback ``keras_impl.train`` hands to ``model.fit`` to drive the shared run folder from ``fit``'s events, and
the resume backup it writes, both through public Keras API only (docs/training.md).

At the end of every epoch :class:`RecordRun` writes the metrics row, the weights and the backup together; on a
SIGTERM it writes the backup of the position inside the epoch and raises :class:`StopTraining` out of ``fit``.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import math
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from keras_impl.weights import get_weights
from shared.io import ReadError, atomic_write, atomic_write_json, free_bytes
from shared.run_folder import CHECK_EVERY, EpochLog, RunFolder
from shared.signals import StopRequest


@keras.saving.register_keras_serializable(package="resnet_xf")
class BatchLoss(keras.metrics.Metric):
    """The cross-entropy of the last batch alone (``fit``'s ``loss`` log is the epoch's running mean); compiled in
    only for ``--trace-steps``."""

    def __init__(self, name: str = "batch_loss", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.value = self.add_variable(shape=(), initializer="zeros", name="value")

    def update_state(self, y_true, y_pred, sample_weight=None) -> None:
        loss = keras.losses.sparse_categorical_crossentropy(y_true, keras.ops.cast(y_pred, "float32"),
                                                            from_logits=True)
        self.value.assign(keras.ops.mean(loss))

    def result(self):
        return keras.ops.convert_to_tensor(self.value)


class StopTraining(Exception):  # noqa: N818 (a stop, not an error)
    """Raised out of ``fit`` once the checkpoint of a stop signal is written (``stop_training`` would first run the
    epoch's validation and its end)."""


class ResumeBackup:
    """The run's resume checkpoint: the model's and the optimizer's variables in a new ``.weights.h5`` file, then
    the metadata naming it (``epoch`` finished, ``step`` into the next, ``partial``: the epoch's running metric
    state, ``weights``, ``backend``), each written atomically and the metadata last; the previous file is removed
    after, so a kill at any instant leaves a whole checkpoint. :meth:`restore` reads it back before ``fit``."""

    def __init__(self, run: RunFolder, backend: str) -> None:
        self.run, self.backend = run, backend
        self.meta_path = run.checkpoint_path
        self.dir = self.meta_path.parent

    @staticmethod
    def read(meta_path: Path) -> dict[str, Any]:
        """The metadata of the last backup."""
        try:
            return json.loads(meta_path.read_text(encoding="utf-8"))
        except (ValueError, OSError):
            raise ReadError(f"cannot read the resume backup {meta_path}: truncated or corrupt; restore it from a "
                            "copy, or start the run again") from None

    @classmethod
    def restore(cls, model: keras.Model, meta_path: Path) -> dict[str, Any]:
        """Load the last backup into ``model`` and its (compiled) optimizer; its metadata."""
        meta = cls.read(meta_path)
        weights = meta_path.parent / meta["weights"]
        model.optimizer.build(model.trainable_variables)  # the file holds the optimizer's variables too
        try:
            model.load_weights(weights)
        except Exception:  # h5py's or Keras' own message for a truncated or foreign file
            raise ReadError(f"cannot read the resume backup {weights}: truncated or corrupt; restore it from a copy, "
                            "or start the run again") from None
        return meta

    def save(self, model: keras.Model) -> None:
        """The backup of the run at ``run.progress`` (its epoch, and its step when inside one), staged in the run
        folder's save block. On several JAX processes saving is collective (it creates variables): every process
        takes part, and only the first keeps a file."""
        if not self.run.owner:
            with tempfile.TemporaryDirectory() as tmp:
                model.save_weights(Path(tmp) / "backup.weights.h5")
            return
        p = self.run.progress
        name = f"epoch-{p.epoch:04d}" + (f"-step-{p.step:05d}" if p.step else "") + ".weights.h5"
        atomic_write(self.dir / name, lambda tmp: save_weights_safely(model, tmp), suffix=".weights.h5")
        atomic_write_json(self.meta_path, {"epoch": p.epoch, "step": p.step, "partial": p.partial, "weights": name,
                                           "backend": self.backend})

    def prune(self) -> None:
        """Remove the backup files the metadata no longer names (after the save block has committed)."""
        if self.run.owner and self.meta_path.is_file():
            keep = self.read(self.meta_path)["weights"]
            for old in self.dir.glob("epoch-*.weights.h5"):
                if old.name != keep:
                    old.unlink(missing_ok=True)


H5_PER_VARIABLE = 4096  # bytes of HDF5 structure per saved variable, at most (measured: 1.2-1.5 kB)


def save_weights_safely(model: keras.Model, path: str) -> None:
    """``model.save_weights(path)``, refused first with ENOSPC when the disk cannot take it: HDF5, once a write of
    it has failed, ends the process with SIGSEGV at exit, so it must not start a file it cannot finish. Should the
    disk fill up meanwhile, h5py's tracebacks for the file's failed closes are hidden (the first error is the one
    to say)."""
    saved = [*model.weights, *model.optimizer.variables]
    need = sum(math.prod(v.shape) * np.dtype(v.dtype).itemsize + H5_PER_VARIABLE for v in saved) + (256 << 10)
    free = free_bytes(path)
    if free is not None and free < need:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    hooks = sys.excepthook, sys.unraisablehook
    sys.excepthook = sys.unraisablehook = lambda *args: None
    try:
        model.save_weights(path, overwrite=True)
    except Exception as e:
        traceback.clear_frames(e.__traceback__)  # the frames that hold the file's objects
        raise e.with_traceback(None) from None
    finally:
        gc.collect()
        sys.excepthook, sys.unraisablehook = hooks


def metric_state(model: keras.Model) -> list[Any]:
    """The running state of the compiled metrics (the epoch's loss and accuracy sums so far), as JSON values."""
    return [keras.ops.convert_to_numpy(v).tolist() for v in model.metrics_variables]


def set_metric_state(model: keras.Model, state: list[Any], size: int) -> None:
    """Restore :func:`metric_state` (at an epoch's begin, after ``fit`` has reset the metrics); ``size``: the
    model's input size."""
    if len(model.metrics_variables) < len(state):  # TensorFlow creates the compiled metrics in the first step
        x = np.zeros((1, size, size, 3), "float32")
        model.compute_metrics(x, np.zeros(1, "int32"), model(x))
    for v, value in zip(model.metrics_variables, state, strict=True):
        v.assign(np.asarray(value, dtype=v.dtype))


class RecordRun(keras.callbacks.Callback):
    """The run folder, written from ``fit``'s events as the torch loop writes it: per batch the iteration count,
    the NaN guard, ``--trace-steps``, the stop at ``total_iters`` inside the last epoch and the stop signal; per
    epoch ``record_epoch`` and the backup.

    A run resumed inside an epoch fits the rest of that epoch first (a dataset that starts at its step): its
    metric state is restored at the epoch's begin, after ``fit`` has reset it, so the epoch's row is the one an
    uninterrupted run writes. ``agree`` (several processes): the collective by which they agree to stop, joined at
    every host check; one process stops after any step. ``scope``: the distribution scope the model was built in
    (MirroredStrategy's), entered to restore the metric state.
    """

    def __init__(self, run: RunFolder, backup: ResumeBackup, stop: StopRequest,
                 agree: Callable[[bool], bool] | None = None,
                 scope: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> None:
        super().__init__()
        self.run, self.plan, self.progress = run, run.plan, run.progress
        self.backup, self.stop, self.agree, self.scope = backup, stop, agree, scope

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.t0, self.t_train = time.perf_counter(), None
        self.steps = self.plan.iters_in_epoch(epoch)
        self.first, self.seconds = self.progress.step, float(self.progress.partial.get("seconds", 0.0))
        if "metrics" in self.progress.partial:
            with self.scope():
                set_metric_state(self.model, self.progress.partial["metrics"], self.run.spec.input_size)

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        step, lr = self.first + batch + 1, self.plan.lr_at(self.progress.iteration)
        if self.progress.iteration < self.run.settings.trace_steps:
            self.run.trace_step(float(logs["batch_loss"]), lr)
        self.progress.iteration += 1
        checked = step % CHECK_EVERY == 0 or step == self.steps
        if checked:
            self.run.check_loss(float(logs["loss"]), lr)
        if step < self.steps and self.stopping(checked):  # at the last step: after the epoch's end instead
            self.save_stop(step)
        if self.progress.iteration >= self.plan.total_iters:
            self.model.stop_training = True  # fit counts whole epochs; the recipe may end inside one

    def stopping(self, checked: bool) -> bool:
        """Whether a stop signal ends the epoch here: at once alone, at a host check when several processes
        must agree."""
        if self.agree is None:
            return self.stop.requested
        return checked and self.agree(self.stop.requested)

    def save_stop(self, step: int) -> None:
        """The backup of the position inside the epoch (the model's variables are synced for callbacks on every
        backend), then :class:`StopTraining`."""
        model = self.model
        self.progress.stop_at(step, {"metrics": metric_state(model),
                                     "seconds": self.seconds + time.perf_counter() - self.t0})
        with self.run.saving():
            self.backup.save(model)
        self.backup.prune()
        raise StopTraining()

    def on_test_begin(self, logs=None) -> None:
        if self.t_train is None:
            self.t_train = time.perf_counter() - self.t0

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        t_train = self.seconds + (self.t_train or time.perf_counter() - self.t0)
        train = EpochLog(float(logs["loss"]), float(logs["acc"]), self.steps * self.plan.batch_size, t_train,
                         self.plan.lr_at(self.progress.iteration - 1))
        weights = get_weights(self.model, self.run.spec) if self.run.owner else {}
        with self.run.saving():  # the epoch's row, weights and backup land together, or none of them
            self.run.record_epoch(train, float(logs["val_ce"]), float(logs["val_acc"]),
                                  seconds=self.seconds + time.perf_counter() - self.t0, weights=weights)
            if self.run.checkpoint_due(collective=True):
                self.backup.save(self.model)
        self.backup.prune()
        if self.progress.epoch < self.plan.epochs and self.stopping(checked=True):
            raise StopTraining()
