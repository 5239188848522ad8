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
* **callbacks** (``keras_impl/callbacks.py``): :class:`~keras_impl.callbacks.RunFolder` drives the
  shared run folder (:class:`shared.run_folder.RunFolder`, as the torch loop does: metrics.csv,
  best/last safetensors, TensorBoard scalars, the summary line) and the NaN guard; then
  :class:`~keras_impl.callbacks.Backup` (``keras.callbacks.BackupAndRestore``, written atomically) for
  the exact resume after a SIGKILL; and Keras' own progress bar (``verbose=1``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Any

import keras  # the package's __init__ has checked KERAS_BACKEND before this runs
import numpy as np

import datasets
from keras_impl import distributed
from keras_impl.callbacks import Backup, RunFolder
from keras_impl.data import EpochDataset, Part, SetEpoch, fit_input
from keras_impl.optim import make_sgd
from keras_impl.resnet import build_model as build_resnet
from keras_impl.weights import get_weights, set_weights
from shared import machine, run_folder, runs, training
from shared.io import load_weights
from shared.recipes import Plan, lr_at
from shared.spec import ModelSpec
from shared.training import NonFiniteLoss, fail, resolve_device_name

FRAMEWORK = "keras"
BACKEND = keras.backend.backend()
# Batches prepared ahead of the step in a background thread: on TensorFlow, whose from_generator input
# waits for each batch (keras_impl.data.fit_input). JAX dispatches its step asynchronously, and the torch
# backend's step uses both cores: there a thread would only compete.
BATCHES_AHEAD = 2 if BACKEND == "tensorflow" else 0


def get_args_parser() -> argparse.ArgumentParser:
    """The training flags (shared with ``pytorch_impl.train``)."""
    return training.train_arg_parser("python -m keras_impl.train", FRAMEWORK)


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
    # Weighted, so that the weight-0 images padding an evaluation batch over several devices count for
    # nothing; "ce" is the evaluation loss the run folder records (Keras' own "loss" averages per batch).
    weighted = [keras.metrics.SparseCategoricalAccuracy(name="acc"),
                keras.metrics.SparseCategoricalCrossentropy(from_logits=True, name="ce")]
    # JAX without jit runs op by op; on TF and torch, jit (XLA, torch.compile) is the --jit fast path.
    jit_compile = True if BACKEND == "jax" else bool(jit)
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[BatchLoss()] if trace else None, weighted_metrics=weighted, jit_compile=jit_compile)


# Backend facts ----------------------------------------------------------------------------------
def thread_count() -> int | None:
    """The backend's intra-op CPU threads now; None on JAX (XLA sizes its CPU pool once, at start-up)."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.config.threading.get_intra_op_parallelism_threads() or machine.cpu_cores()  # 0: one per core
    if BACKEND == "torch":
        import torch

        return torch.get_num_threads()
    return None


def set_threads(count: int) -> None:
    """Set the backend's intra-op CPU threads (before its first op)."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with contextlib.suppress(RuntimeError):  # the pool exists already (main() called twice)
            tf.config.threading.set_intra_op_parallelism_threads(count)
    elif BACKEND == "torch":
        import torch

        torch.set_num_threads(count)


def gpu_count() -> int:
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return len(tf.config.list_physical_devices("GPU"))
    if BACKEND == "jax":
        import jax

        return sum(d.platform == "gpu" for d in jax.devices())
    import torch

    return torch.cuda.device_count()


def init_device(requested: str, strategy: str, deterministic: bool = True) -> tuple[str, Any, int]:
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
        if name == "cpu" and deterministic:
            tf.config.experimental.enable_op_determinism()  # bit-exact same-seed runs and resume on CPU
        if strategy == "mirrored" or (strategy == "auto" and len(gpus) > 1):
            # On the CPU: one replica per logical CPU device (one, unless configured before TF started).
            cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
            mirrored = tf.distribute.MirroredStrategy(devices=[f"/gpu:{i}" for i in range(len(gpus))] or cpus)
            return name, mirrored, mirrored.num_replicas_in_sync
        return name, contextlib.nullcontext(), 1
    if BACKEND == "jax":
        devices = keras.distribution.list_devices("gpu" if name.startswith("cuda") else "cpu")
        if strategy == "mirrored" or (strategy == "auto" and len(devices) > 1):
            # auto_shard_dataset=False: each process's EpochDataset yields its own part of every batch.
            keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices,
                                                                                auto_shard_dataset=False))
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


def _device_description(device: str, replicas: int, scope: Any,
                        processes: distributed.Processes) -> dict[str, Any]:
    strategy = type(scope).__name__ if hasattr(scope, "scope") else None
    distribution = keras.distribution.distribution()
    return {"type": "cuda" if device.startswith("cuda") else "cpu", "name": device, "backend": BACKEND,
            "replicas": replicas, "processes": processes.count,
            "strategy": strategy or (type(distribution).__name__ if distribution else None),
            "policy": keras.mixed_precision.global_policy().name}


def evaluate(model: keras.Model, data: EpochDataset) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) in inference mode over every image of ``data``."""
    logs = model.evaluate(fit_input(data), verbose=0, return_dict=True)
    return float(logs["ce"]), float(logs["acc"])


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.nproc != 1 and distributed.COUNT not in os.environ:
        return distributed.launch(args.nproc, BACKEND, args.device, sys.argv[1:] if argv is None else list(argv))
    with distributed.errors_said_once():
        return train(args)


def train(args: argparse.Namespace) -> int:
    """One training process: the whole run, or its part of a run over several processes."""
    settings, prepared = training.setup_run(args, FRAMEWORK, datasets.load_prepared)
    threads, thread_record = training.choose_threads(settings, thread_count())
    if threads is not None:
        set_threads(threads)
    elif settings.workers is not None and BACKEND == "jax":  # say so rather than ignore it silently
        print(f"note: --workers {settings.workers} ignored on the JAX backend (XLA sizes its CPU pool at start-up; "
              "set XLA_FLAGS=--xla_cpu_multi_thread_eigen=false for one thread)", file=sys.stderr)
    if settings.compile or settings.channels_last:
        print("note: --compile/--channels-last are torch switches; for Keras use --jit", file=sys.stderr)
    processes = distributed.initialize(BACKEND)  # before JAX's first look at its devices
    # Keras compiles without XLA while TF's op determinism is on (trainer.model_supports_jit): --jit gives it up.
    device, scope, replicas = init_device(settings.device, settings.strategy, deterministic=not settings.jit)
    # bf16 on CPU (no loss scaling needed; float32 where bf16 would be emulated), fp16 on GPU (compile adds the
    # LossScaleOptimizer)
    if settings.amp and not training.emulated_bf16(settings.amp, bf16_on_cpu=device == "cpu", say=processes.owner):
        keras.mixed_precision.set_global_policy("mixed_float16" if device.startswith("cuda") else "mixed_bfloat16")
    plan, spec = settings.plan, settings.spec
    if plan.batch_size % replicas:
        raise fail(f"--batch-size {plan.batch_size} must be divisible by the {replicas} replicas")

    model = build_model(spec, scope, settings.seed, None if settings.resumed else settings.init)
    with scope_of(scope):
        compile_model(model, plan, settings.jit, bool(settings.trace_steps))
    if settings.resumed:
        saved = Backup.read(settings.run_dir / runs.CHECKPOINTS[FRAMEWORK])
        if saved.get("backend", BACKEND) != BACKEND:
            print(f"note: resuming a run backed up on the {saved['backend']} backend on {BACKEND}: the weights "
                  "carry over; steps differ from an uninterrupted run in float rounding", file=sys.stderr)
        # Keras' backup holds model, optimizer and epoch; the run's progress is metrics.csv up to that epoch.
        progress = run_folder.Progress.from_rows(runs.read_metrics(settings.run_dir)[: saved["epoch"]], plan)
        folder = (run_folder.RunFolder.reopen(settings, progress) if processes.owner
                  else run_folder.RunFolder.follow(settings, dict(settings.saved or {}), progress))
    else:
        device_record = _device_description(device, replicas, scope, processes)
        folder = (run_folder.RunFolder.create(settings, prepared.manifest, device_record, thread_record)
                  if processes.owner else run_folder.RunFolder.follow(settings, {"device": device_record},
                                                                      run_folder.Progress()))
    strategy = folder.config["device"].get("strategy")
    where = f"{device}, {strategy} x{replicas}" if strategy else device
    folder.announce(f"{FRAMEWORK}/{BACKEND}, {where}" + (f" over {processes.count} processes"
                                                         if processes.count > 1 else ""))
    # Every process feeds its part of each global batch (the whole batch when alone).
    part = Part(processes.index, processes.count, replicas)
    train_data = EpochDataset(prepared, "train", plan.batch_size, train=settings.augment, seed=settings.seed,
                              ahead=BATCHES_AHEAD, part=part)
    val_data = EpochDataset(prepared, "val", plan.batch_size, train=False, ahead=BATCHES_AHEAD, part=part)
    # Keras' progress bar first, so it closes its line before the epoch's summary line is printed.
    shown = settings.show_progress and processes.owner
    callbacks = [SetEpoch(train_data), *([keras.callbacks.ProgbarLogger()] if shown else []), RunFolder(folder),
                 Backup(folder, BACKEND)]
    with folder:
        try:
            # shuffle=False: the epoch plan has shuffled already (fit would reorder a PyDataset's batches).
            model.fit(fit_input(train_data), epochs=plan.epochs, validation_data=fit_input(val_data),
                      callbacks=callbacks, shuffle=False, verbose=1 if shown else 0)
        except NonFiniteLoss as e:
            raise SystemExit(training.nonfinite_message(e, settings.run_dir, folder.progress.epoch)) from None
        best = folder.best_weights() if processes.owner else get_weights(model, spec)
        set_weights(model, spec, distributed.from_owner(processes, best))
        folder.finish(*evaluate(model, EpochDataset(prepared, "test", plan.batch_size, train=False, part=part)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
