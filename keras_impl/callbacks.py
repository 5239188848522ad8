"""The callbacks ``keras_impl.train`` hands to ``model.fit``: the shared run folder driven from ``fit``'s events,
and the resume backup, both through public Keras API only (docs/training.md).

:class:`RecordRun` is listed before :class:`ResumeBackup`, so an epoch's row and weights are on disk before its
checkpoint.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import keras

from keras_impl.weights import get_weights
from shared.io import atomic_write_json
from shared.run_folder import CHECK_EVERY, EpochLog, RunFolder


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


class RecordRun(keras.callbacks.Callback):
    """The run folder, written from ``fit``'s events as the torch loop writes it: per batch the iteration count,
    the NaN guard, ``--trace-steps`` and the stop at ``total_iters`` inside the last epoch; per epoch
    ``record_epoch``."""

    def __init__(self, run: RunFolder) -> None:
        super().__init__()
        self.run, self.plan, self.progress = run, run.plan, run.progress

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.t0, self.t_train = time.perf_counter(), None
        self.steps = self.plan.iters_in_epoch(epoch)

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        lr = self.plan.lr_at(self.progress.iteration)
        if self.progress.iteration < self.run.settings.trace_steps:
            self.run.trace_step(float(logs["batch_loss"]), lr)
        self.progress.iteration += 1
        if (batch + 1) % CHECK_EVERY == 0 or batch + 1 == self.steps:
            self.run.check_loss(float(logs["loss"]), lr)
        if self.progress.iteration >= self.plan.total_iters:
            self.model.stop_training = True  # fit counts whole epochs; the recipe may end inside one

    def on_test_begin(self, logs=None) -> None:
        if self.t_train is None:
            self.t_train = time.perf_counter() - self.t0

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        train = EpochLog(float(logs["loss"]), float(logs["acc"]), self.steps * self.plan.batch_size,
                         self.t_train or time.perf_counter() - self.t0, self.plan.lr_at(self.progress.iteration - 1))
        weights = get_weights(self.model, self.run.spec) if self.run.owner else {}
        self.run.record_epoch(train, float(logs["val_ce"]), float(logs["val_acc"]),
                              seconds=time.perf_counter() - self.t0, weights=weights)


class ResumeBackup(keras.callbacks.Callback):
    """The run's resume checkpoint after every due epoch: the model's and the optimizer's variables in a new
    ``.weights.h5`` file, then the metadata naming it (``epoch``, ``weights``, ``backend``) replaced atomically,
    then the previous file removed, so a SIGKILL at any instant leaves a whole checkpoint. :meth:`restore` reads
    it back before ``fit(initial_epoch=...)``."""

    def __init__(self, run: RunFolder, backend: str) -> None:
        super().__init__()
        self.run, self.backend = run, backend
        self.meta_path = run.checkpoint_path
        self.dir = self.meta_path.parent

    @staticmethod
    def read(meta_path: Path) -> dict[str, Any]:
        """The metadata of the last backup."""
        return json.loads(meta_path.read_text(encoding="utf-8"))

    @classmethod
    def restore(cls, model: keras.Model, meta_path: Path) -> dict[str, Any]:
        """Load the last backup into ``model`` and its (compiled) optimizer; its metadata."""
        meta = cls.read(meta_path)
        model.optimizer.build(model.trainable_variables)  # the file holds the optimizer's variables too
        model.load_weights(meta_path.parent / meta["weights"])
        return meta

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if not self.run.checkpoint_due(collective=True):
            return
        if not self.run.owner:  # saving is collective on several JAX processes (it creates variables): take
            with tempfile.TemporaryDirectory() as tmp:  # part, keep nothing; the first process writes the backup
                self.model.save_weights(Path(tmp) / "backup.weights.h5")
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        old = self.read(self.meta_path) if self.meta_path.is_file() else None
        name = f"epoch-{epoch + 1:04d}.weights.h5"
        self.model.save_weights(self.dir / name, overwrite=True)  # a new file: never read until named below
        atomic_write_json(self.meta_path, {"epoch": epoch + 1, "weights": name, "backend": self.backend})
        if old and old["weights"] != name:
            (self.dir / old["weights"]).unlink(missing_ok=True)
