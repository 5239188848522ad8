"""Train a ResNet with Keras 3, ``model.compile`` + ``model.fit``, on any backend: the same recipe and
run folder as PyTorch.

    KERAS_BACKEND=jax python -m keras_impl.train --model resnet20 --dataset cifar10 [--epochs E | --iters N] ...
    python -m keras_impl.train ... --strategy mirrored     # TF: MirroredStrategy; JAX: keras.distribution.DataParallel

The backend is ``KERAS_BACKEND`` (tensorflow, jax or torch; ``make train-keras BACKEND=jax``). What
``fit`` is given, and why:

* **optimizer** :class:`keras_impl.optim.TorchSGD`: ``torch.optim.SGD`` in ``keras.ops`` (coupled weight
  decay ``g += wd * w`` before momentum, ``buf = mu * buf + g``, ``w -= lr * buf``). Keras' own SGD has
  decoupled decay and ``v = mu * v - lr * g``, which lags one lr behind at every milestone.
* **learning rate** :class:`RecipeSchedule`: ``shared.recipes.lr_at`` of every iteration as a Keras
  ``LearningRateSchedule`` of ``optimizer.iterations`` (warm-up and milestones included), so the lr of
  step ``i`` is the float32 of the same number the torch loop writes into its param groups.
* **loss** ``SparseCategoricalCrossentropy(from_logits=True)``, the batch mean as torch's.
* **data** :class:`keras_impl.data.EpochDataset`: the shared epoch plan in numpy, no tensorflow.
* **callbacks**: :class:`RunFolder` (metrics.csv, best/last safetensors, TensorBoard scalars, the
  summary line, the NaN guard: ``shared.training.end_of_epoch`` as the torch loop uses it), then
  :class:`Backup` (``keras.callbacks.BackupAndRestore``, written atomically) for the exact resume
  after a SIGKILL, and Keras' own progress bar (``verbose=1``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import keras  # the package's __init__ has checked KERAS_BACKEND before this runs
import numpy as np

from keras_impl.data import EpochDataset, SetEpoch
from keras_impl.optim import make_sgd
from keras_impl.resnet import build_model as build_resnet
from keras_impl.weights import get_weights, set_weights
from shared import machine, runs
from shared.io import atomic_write_json, load_weights
from shared.recipes import Plan, lr_at
from shared.spec import ModelSpec
from shared.training import (
    NonFiniteLoss,
    Progress,
    RunSetup,
    check_finite,
    end_of_epoch,
    fail,
    nonfinite_message,
    resolve_device_name,
    results_dict,
    seed_python,
    setup_run,
    train_arg_parser,
    write_steps,
)

FRAMEWORK = "keras"
BACKEND = keras.backend.backend()
CHECK_EVERY = 10  # steps between NaN checks (each reads the loss back from the device)
BACKUP_DIR = Path(runs.CHECKPOINTS[FRAMEWORK]).parent  # backup/ in the run folder


def get_args_parser() -> argparse.ArgumentParser:
    """The training flags (shared with ``pytorch_impl.train``)."""
    return train_arg_parser("python -m keras_impl.train", FRAMEWORK)


# The recipe as Keras objects --------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="resnet_xf")
class RecipeSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """``shared.recipes.lr_at(plan, step)`` as a Keras schedule, exactly.

    The lr of every iteration is tabulated once from the shared function (float64 there, float32 here,
    as torch's param groups hand it to the float32 update) and looked up by ``optimizer.iterations``;
    a formula re-derived in float32 ops could differ from it in the last bit after a milestone.
    """

    def __init__(self, plan: dict[str, Any]) -> None:
        self.plan = Plan.from_dict(plan)
        self.table = np.array([lr_at(self.plan, i) for i in range(self.plan.total_iters)], np.float32)

    def __call__(self, step):
        i = keras.ops.minimum(keras.ops.cast(step, "int32"), len(self.table) - 1)
        return keras.ops.take(keras.ops.convert_to_tensor(self.table), i)

    def get_config(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict()}


@keras.saving.register_keras_serializable(package="resnet_xf")
class BatchLoss(keras.metrics.Metric):
    """The cross-entropy of the last batch alone (``fit``'s ``loss`` log is the epoch's running mean);
    compiled in only for ``--trace-steps``."""

    def __init__(self, name: str = "batch_loss", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.value = self.add_variable(shape=(), initializer="zeros", name="value")

    def update_state(self, y_true, y_pred, sample_weight=None) -> None:
        loss = keras.losses.sparse_categorical_crossentropy(y_true, keras.ops.cast(y_pred, "float32"),
                                                            from_logits=True)
        self.value.assign(keras.ops.mean(loss))

    def result(self):
        return keras.ops.convert_to_tensor(self.value)


def compile_model(model: keras.Model, plan: Plan, jit: bool, trace: bool) -> None:
    """The recipe as ``model.compile``: TorchSGD on the recipe's schedule, cross-entropy on the logits."""
    optimizer = make_sgd(model, RecipeSchedule(plan.to_dict()), plan.momentum, plan.weight_decay, plan.nesterov)
    metrics: list[Any] = [keras.metrics.SparseCategoricalAccuracy(name="acc")]
    if trace:
        metrics.append(BatchLoss())
    # JAX without jit runs op by op; on TF and torch, jit (XLA, torch.compile) is the --jit fast path.
    jit_compile = True if BACKEND == "jax" else bool(jit)
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=metrics, jit_compile=jit_compile)


# Backend facts ----------------------------------------------------------------------------------
def set_threads(workers: int) -> None:
    """``--workers``: CPU threads of the backend's ops."""
    if workers < 1:
        raise fail(f"--workers must be >= 1; got {workers}")
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with contextlib.suppress(RuntimeError):  # the pool exists already (main() called twice)
            tf.config.threading.set_intra_op_parallelism_threads(workers)
    elif BACKEND == "torch":
        import torch

        torch.set_num_threads(workers)
    else:  # XLA reads its CPU thread count once, at start-up: say so rather than ignore it silently
        print(f"note: --workers {workers} ignored on the JAX backend (XLA sizes its CPU pool at start-up; "
              "set XLA_FLAGS=--xla_cpu_multi_thread_eigen=false for one thread)", file=sys.stderr)


def gpu_count() -> int:
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return len(tf.config.list_physical_devices("GPU"))
    if BACKEND == "jax":
        import jax

        return sum(d.platform == "gpu" for d in jax.devices())
    import torch

    return torch.cuda.device_count()


def init_device(requested: str, strategy: str) -> tuple[str, Any, int]:
    """(device name, the scope to build and compile in, replicas) for ``--device`` and ``--strategy``.

    TensorFlow: ``tf.distribute.MirroredStrategy`` over the visible GPUs (``auto`` when more than one,
    ``mirrored`` also on the CPU). JAX: ``keras.distribution.DataParallel`` over the visible devices
    (``auto`` when more than one). PyTorch backend: one device (keras.distribution supports JAX only;
    for several GPUs use ``pytorch_impl.train`` under torchrun).
    """
    name = resolve_device_name(requested, gpu_count())
    if BACKEND == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if name == "cpu":
            tf.config.set_visible_devices([], "GPU")
            gpus = []
        elif ":" in name:
            gpus = [gpus[int(name.split(":")[1])]]
            tf.config.set_visible_devices(gpus, "GPU")
        if name == "cpu":
            tf.config.experimental.enable_op_determinism()  # bit-exact same-seed runs and resume on CPU
        if strategy == "mirrored" or (strategy == "auto" and len(gpus) > 1):
            mirrored = tf.distribute.MirroredStrategy(devices=[f"/gpu:{i}" for i in range(len(gpus))] or ["/cpu:0"])
            return name, mirrored, mirrored.num_replicas_in_sync
        return name, contextlib.nullcontext(), 1
    if BACKEND == "jax":
        devices = keras.distribution.list_devices("gpu" if name.startswith("cuda") else "cpu")
        if strategy == "mirrored" or (strategy == "auto" and len(devices) > 1):
            keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
            return name, contextlib.nullcontext(), len(devices)
        return name, contextlib.nullcontext(), 1
    if strategy == "mirrored":
        raise fail("--strategy mirrored: Keras' torch backend trains on one device (keras.distribution is "
                   "JAX-only); use KERAS_BACKEND=jax or tensorflow, or pytorch_impl.train under torchrun")
    import torch

    if name.startswith("cuda"):
        torch.set_default_device(name)
    return name, contextlib.nullcontext(), 1


def scope_of(scope: Any):
    return scope.scope() if hasattr(scope, "scope") else scope


def build_model(spec: ModelSpec, scope: Any, seed: int, init: str | None = None) -> keras.Model:
    """The ResNet of ``spec`` in the strategy's scope: seeded random init, or canonical weights from ``init``."""
    keras.utils.set_random_seed(seed)
    with scope_of(scope):
        model = build_resnet(spec)
    if init:
        try:
            arrays, _ = load_weights(init)
            set_weights(model, spec, arrays)
        except ValueError as e:
            raise fail(f"--init {init}: {e}") from e
    return model


# Callbacks ---------------------------------------------------------------------------------------
class Backup(keras.callbacks.BackupAndRestore):
    """``keras.callbacks.BackupAndRestore`` (model, optimizer and epoch after every epoch; ``fit``
    restarts from it) with a backup that a SIGKILL at any instant leaves whole.

    Keras' own overwrites ``latest.weights.h5`` and then its metadata in place: a kill between the two
    resumes the wrong epoch. Here every epoch's weights go to a new file and the metadata naming it is
    replaced atomically last; the previous file is removed after that.
    """

    def __init__(self, backup_dir: Path) -> None:
        super().__init__(str(backup_dir), save_freq="epoch", delete_checkpoint=False)
        self.dir = Path(backup_dir)
        self.meta_path = self.dir / Path(runs.CHECKPOINTS[FRAMEWORK]).name

    def saved(self) -> dict[str, Any] | None:
        """The metadata of the last backup (``epoch``, ``weights``), or None when there is none."""
        if not self.meta_path.is_file():
            return None
        return json.loads(self.meta_path.read_text(encoding="utf-8"))

    def _save_model(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        old = self.saved()
        name = f"epoch-{self._current_epoch:04d}.weights.h5"
        self.model.save_weights(self.dir / name, overwrite=True)  # a new file: never read until named below
        atomic_write_json(self.meta_path, {"epoch": self._current_epoch, "batch": 0, "weights": name,
                                           "backend": BACKEND})
        if old and old["weights"] != name:
            (self.dir / old["weights"]).unlink(missing_ok=True)

    def _load_model(self) -> None:
        meta = self.saved()
        if meta is None:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(self.dir / meta["weights"])
        self.model._initial_epoch = meta["epoch"]  # what BackupAndRestore itself sets


class RunFolder(keras.callbacks.Callback):
    """The run folder at the end of every epoch, as the torch loop writes it (``shared.training.end_of_epoch``:
    metrics.csv row, last/best canonical safetensors, TensorBoard scalars, the summary line), plus the
    NaN guard, the ``--trace-steps`` record and the stop at ``total_iters`` inside the last epoch.

    Listed before :class:`Backup`, so an epoch's row and weights are on disk before its checkpoint.
    """

    def __init__(self, setup: RunSetup, progress: Progress, writer: Any, trace: int = 0) -> None:
        super().__init__()
        self.setup, self.plan, self.progress, self.writer = setup, setup.plan, progress, writer
        self.trace: dict[str, list[float]] | None = {"loss": [], "lr": []} if trace else None
        self.trace_limit = trace

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.t0, self.t_train = time.perf_counter(), None
        self.steps = self.plan.iters_in_epoch(epoch)

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        lr = self.plan.lr_at(self.progress.iteration)
        self.progress.iteration += 1
        if self.trace is not None and len(self.trace["loss"]) < self.trace_limit:
            self.trace["loss"].append(float(logs["batch_loss"]))
            self.trace["lr"].append(lr)
        if (batch + 1) % CHECK_EVERY == 0 or batch + 1 == self.steps:
            check_finite(float(logs["loss"]), self.progress.epoch, self.progress.iteration, lr)
        if self.progress.iteration >= self.plan.total_iters:
            self.model.stop_training = True  # fit counts whole epochs; the recipe may end inside one

    def on_test_begin(self, logs=None) -> None:
        if self.t_train is None:
            self.t_train = time.perf_counter() - self.t0

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        seconds = time.perf_counter() - self.t0
        seen = self.steps * self.plan.batch_size
        row = {"epoch": epoch + 1, "train_loss": float(logs["loss"]), "train_acc": float(logs["acc"]),
               "val_loss": float(logs["val_loss"]), "val_acc": float(logs["val_acc"]),
               "lr": self.plan.lr_at(self.progress.iteration - 1), "seconds": seconds,
               "images_per_s": seen / (self.t_train or seconds)}
        self.progress.wall_time_s += seconds
        # The resume checkpoint is written next, by Backup (the following callback).
        end_of_epoch(self.setup, FRAMEWORK, self.progress, row, get_weights(self.model, self.setup.spec), None,
                     self.writer)
        if self.trace is not None:
            write_steps(self.setup.run_dir, self.trace["loss"], self.trace["lr"])


def progress_from_rows(rows: list[dict[str, Any]], plan: Plan) -> Progress:
    """The progress of a run whose first ``len(rows)`` epochs are done (metrics.csv is its record)."""
    progress = Progress()
    for row in rows:
        progress.finish_epoch(row)
        progress.wall_time_s += row["seconds"]
    progress.iteration = sum(plan.iters_in_epoch(e) for e in range(progress.epoch))
    return progress


def tensorboard_writer(run_dir: Path):
    """TensorBoard scalars in the run folder under the torch loop's tags, without tensorflow.

    ``keras.callbacks.TensorBoard`` does not fit: it needs tensorflow (absent on the JAX/torch route) and
    writes ``train/``/``validation/`` sub-runs with ``epoch_*`` tags instead of the shared layout. This
    writes the same scalar events through tensorboard's own TF-free writer (its ``notf`` switch).
    """
    import types

    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    class Writer:
        def __init__(self) -> None:
            self.events = EventFileWriter(str(run_dir))

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(value))])
            self.events.add_event(Event(summary=summary, step=int(step), wall_time=time.time()))

        def flush(self) -> None:
            self.events.flush()

        def close(self) -> None:
            self.events.close()

    return Writer()


def _device_description(device: str, replicas: int, scope: Any) -> dict[str, Any]:
    strategy = type(scope).__name__ if hasattr(scope, "scope") else None
    distribution = keras.distribution.distribution()
    return {"type": "cuda" if device.startswith("cuda") else "cpu", "name": device, "backend": BACKEND,
            "replicas": replicas, "strategy": strategy or (type(distribution).__name__ if distribution else None),
            "policy": keras.mixed_precision.global_policy().name}


def evaluate(model: keras.Model, data: EpochDataset) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) in inference mode over every batch of ``data``."""
    logs = model.evaluate(data, verbose=0, return_dict=True)
    return float(logs["loss"]), float(logs["acc"])


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.workers is not None:
        set_threads(args.workers)
    setup = setup_run(args, FRAMEWORK)
    if args.compile or args.channels_last:
        print("note: --compile/--channels-last are torch switches; for Keras use --jit", file=sys.stderr)
    device, scope, replicas = init_device(args.device, args.strategy)
    if args.amp and device == "cpu" and not machine.cpu_has_bf16():
        print("note: --amp ignored: this CPU has no native bf16 (mixed_bfloat16 measured 13x slower than float32 "
              "on such a CPU); training in float32", file=sys.stderr)
    elif args.amp:  # bf16 on CPU (no loss scaling needed), fp16 on GPU (compile adds the LossScaleOptimizer)
        keras.mixed_precision.set_global_policy("mixed_float16" if device.startswith("cuda") else "mixed_bfloat16")
    plan, spec = setup.plan, setup.spec
    if plan.batch_size % replicas:
        raise fail(f"--batch-size {plan.batch_size} must be divisible by the {replicas} replicas")
    seed_python(args.seed)

    model = build_model(spec, scope, args.seed, None if setup.resumed else args.init)
    with scope_of(scope):
        compile_model(model, plan, args.jit, bool(args.trace_steps))
    backup = Backup(setup.run_dir / BACKUP_DIR)
    progress = Progress()
    if setup.resumed:
        saved = backup.saved()
        if saved.get("backend", BACKEND) != BACKEND:
            print(f"note: resuming a run backed up on the {saved['backend']} backend on {BACKEND}: the weights "
                  "carry over; steps differ from an uninterrupted run in float rounding", file=sys.stderr)
        progress = progress_from_rows(runs.read_metrics(setup.run_dir)[: saved["epoch"]], plan)
    train_data = EpochDataset(setup.prepared, "train", plan.batch_size, train=not args.no_augment, seed=args.seed)
    val_data = EpochDataset(setup.prepared, "val", plan.batch_size, train=False)

    setup.run_dir.mkdir(parents=True, exist_ok=True)
    if not setup.resumed:
        setup.config["device"] = _device_description(device, replicas, scope)
        runs.write_config(setup.run_dir, setup.config)
    else:
        runs.write_metrics(setup.run_dir, progress.rows)  # drop rows written after the checkpoint
    writer = tensorboard_writer(setup.run_dir)
    verb = f"resuming at epoch {progress.epoch + 1}" if setup.resumed else "training"
    strategy = setup.config["device"]["strategy"] if setup.config.get("device") else None
    where = f"{device}, {strategy} x{replicas}" if strategy else device
    print(f"{verb} {spec.name} ({FRAMEWORK}/{BACKEND}, {where}) on {setup.config['dataset']}: {plan.epochs} epochs "
          f"x {plan.iters_per_epoch} it = {plan.total_iters} iterations, batch {plan.batch_size}, lr {plan.lr:g} "
          f"(milestones {list(plan.milestones)}) -> {setup.run_dir}", flush=True)
    # Keras' progress bar first, so it closes its line before the epoch's summary line is printed.
    bar = [keras.callbacks.ProgbarLogger()] if not args.no_progress else []
    callbacks = [SetEpoch(train_data), *bar, RunFolder(setup, progress, writer, args.trace_steps), backup]
    try:
        try:
            # shuffle=False: the epoch plan has shuffled already (fit would reorder a PyDataset's batches).
            model.fit(train_data, epochs=plan.epochs, validation_data=val_data, callbacks=callbacks, shuffle=False,
                      verbose=0 if args.no_progress else 1)
        except NonFiniteLoss as e:
            raise SystemExit(nonfinite_message(e, setup.run_dir, progress.epoch)) from None
        arrays, _ = load_weights(setup.run_dir / runs.BEST)
        set_weights(model, spec, arrays)
        test_loss, test_acc = evaluate(model, EpochDataset(setup.prepared, "test", plan.batch_size, train=False))
        runs.write_results(setup.run_dir, results_dict(test_loss, test_acc, progress, plan))
        print(f"test acc {test_acc:.4f} loss {test_loss:.4f} with the best weights (epoch {progress.best_epoch}, "
              f"val acc {progress.best_val_acc:.4f}); {progress.wall_time_s:.1f}s -> {setup.run_dir}", flush=True)
    finally:
        writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
