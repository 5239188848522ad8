"""The Keras callbacks that ``keras_impl.train`` hands to ``model.fit``: the shared run folder and the
resume backup, driven the Keras way.

* :class:`RunFolder` adapts :class:`shared.run_folder.RunFolder` to ``fit``'s events: the iteration
  count, the NaN guard and ``--trace-steps`` per batch, the stop at ``total_iters`` inside the last
  epoch, and ``record_epoch`` (metrics.csv row, best/last safetensors, TensorBoard, the summary line)
  at the end of every epoch.
* :class:`Backup` is ``keras.callbacks.BackupAndRestore`` (model, optimizer and epoch; ``fit``
  restarts from it) written so that a SIGKILL at any instant leaves it whole.

``RunFolder`` is listed before ``Backup``, so an epoch's row and weights are on disk before its checkpoint.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import keras

from keras_impl.weights import get_weights
from shared import run_folder
from shared.io import atomic_write_json
from shared.training import EpochLog, check_finite, metrics_row

CHECK_EVERY = 10  # steps between NaN checks (each reads the loss back from the device)


class RunFolder(keras.callbacks.Callback):
    """The shared run folder, written from ``fit``'s callbacks as the torch loop writes it."""

    def __init__(self, folder: run_folder.RunFolder) -> None:
        super().__init__()
        self.folder, self.plan, self.progress = folder, folder.plan, folder.progress
        self.trace_steps = folder.settings.trace_steps

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.t0, self.t_train = time.perf_counter(), None
        self.steps = self.plan.iters_in_epoch(epoch)

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        lr = self.plan.lr_at(self.progress.iteration)
        if self.progress.iteration < self.trace_steps:
            self.folder.trace_step(float(logs["batch_loss"]), lr)
        self.progress.iteration += 1
        if (batch + 1) % CHECK_EVERY == 0 or batch + 1 == self.steps:
            check_finite(float(logs["loss"]), self.progress.epoch, self.progress.iteration, lr)
        if self.progress.iteration >= self.plan.total_iters:
            self.model.stop_training = True  # fit counts whole epochs; the recipe may end inside one

    def on_test_begin(self, logs=None) -> None:
        if self.t_train is None:
            self.t_train = time.perf_counter() - self.t0

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        seconds = time.perf_counter() - self.t0
        train = EpochLog(float(logs["loss"]), float(logs["acc"]), self.steps * self.plan.batch_size,
                         self.t_train or seconds)
        row = metrics_row(epoch + 1, train, logs["val_ce"], logs["val_acc"],
                          self.plan.lr_at(self.progress.iteration - 1), seconds)
        self.folder.record_epoch(row, get_weights(self.model, self.folder.spec) if self.folder.owner else {})


class Backup(keras.callbacks.BackupAndRestore):
    """``keras.callbacks.BackupAndRestore`` at the run folder's checkpoint path and cadence, with a backup
    that a SIGKILL at any instant leaves whole.

    Keras' own overwrites ``latest.weights.h5`` and then its metadata in place: a kill between the two
    resumes the wrong epoch. Here every epoch's weights go to a new file and the metadata naming it is
    replaced atomically last; the previous file is removed after that.
    """

    def __init__(self, folder: run_folder.RunFolder, backend: str) -> None:
        self.meta_path = folder.checkpoint_path
        self.dir, self.folder, self.backend = self.meta_path.parent, folder, backend
        super().__init__(str(self.dir), save_freq="epoch", delete_checkpoint=False)

    @staticmethod
    def read(meta_path: Path) -> dict[str, Any] | None:
        """The metadata of the last backup (``epoch``, ``weights``, ``backend``), or None when there is none."""
        if not meta_path.is_file():
            return None
        return json.loads(meta_path.read_text(encoding="utf-8"))

    def _save_model(self) -> None:
        if not self.folder.checkpoint_due(self._current_epoch):
            return
        if not self.folder.owner:  # saving is collective on several JAX processes (it creates variables): take
            with tempfile.TemporaryDirectory() as tmp:  # part, keep nothing; the first process writes the backup
                self.model.save_weights(Path(tmp) / "backup.weights.h5")
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        old = self.read(self.meta_path)
        name = f"epoch-{self._current_epoch:04d}.weights.h5"
        self.model.save_weights(self.dir / name, overwrite=True)  # a new file: never read until named below
        atomic_write_json(self.meta_path, {"epoch": self._current_epoch, "batch": 0, "weights": name,
                                           "backend": self.backend})
        if old and old["weights"] != name:
            (self.dir / old["weights"]).unlink(missing_ok=True)

    def _load_model(self) -> None:
        meta = self.read(self.meta_path)
        if meta is None:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(self.dir / meta["weights"])
        self.model._initial_epoch = meta["epoch"]  # what BackupAndRestore itself sets
