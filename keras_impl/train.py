"""Train a ResNet with Keras 3, ``model.compile`` + ``model.fit`` with callbacks, on any backend: the recipe, data
plan and run folder of the torch loop (docs/training.md, docs/keras-backends.md).

    KERAS_BACKEND=jax python -m keras_impl.train --model resnet20 --dataset cifar10 [--epochs E | --iters N] ...
    python -m keras_impl.train ... --strategy mirrored     # TF: MirroredStrategy; JAX: keras.distribution.DataParallel

SIGTERM stops it after the current step with a backup of the position inside the epoch (exit 143).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Any

import keras  # the package's __init__ has checked KERAS_BACKEND before this runs

import datasets
from keras_impl import distributed
from keras_impl.backend_table import CURRENT as BACKEND
from keras_impl.backend_table import device_name
from keras_impl.callbacks import BatchLoss, RecordRun, ResumeBackup, StopTraining
from keras_impl.data import EpochDataset, Part, SetEpoch
from keras_impl.optim import RecipeSchedule, make_sgd
from keras_impl.resnet import build_model
from keras_impl.weights import get_weights, set_weights
from shared import errors, runs
from shared.devices import bf16_falls_back
from shared.errors import UserError
from shared.recipes import Plan
from shared.run_folder import Progress, RunFolder
from shared.run_settings import RunSettings, check_run_folder, initial_weights, resolve_run
from shared.signals import StopNow, StopRequest
from shared.threads import choose_threads
from shared.train_flags import train_arg_parser

FRAMEWORK = "keras"


def get_args_parser() -> errors.ArgumentParser:
    """The training flags (shared with ``pytorch_impl.train``)."""
    return train_arg_parser("python -m keras_impl.train", FRAMEWORK)


def compile_model(model: keras.Model, plan: Plan, jit: bool, trace: bool) -> None:
    """The recipe as ``model.compile``: TorchSGD on the recipe's schedule, cross-entropy on the logits."""
    optimizer = make_sgd(RecipeSchedule(plan.to_dict()), plan.momentum, weight_decay=plan.weight_decay,
                         nesterov=plan.nesterov)
    # Weighted, so that the weight-0 images padding an evaluation batch over several devices count for
    # nothing; "ce" is the evaluation loss the run folder records (Keras' own "loss" averages per batch).
    weighted = [keras.metrics.SparseCategoricalAccuracy(name="acc"),
                keras.metrics.SparseCategoricalCrossentropy(from_logits=True, name="ce")]
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[BatchLoss()] if trace else None, weighted_metrics=weighted,
                  jit_compile=BACKEND.jit_compile(jit))


def set_up(settings: RunSettings) -> tuple[str, Any, int, distributed.Processes, dict[str, Any]]:
    """This process's threads, processes, device, replicas and precision, in that order: (device, the scope to
    build and compile in, replicas, the processes, the threads record)."""
    threads, thread_record = choose_threads(settings, BACKEND.threads())
    if threads is not None:
        BACKEND.set_threads(threads)
    elif settings.threads is not None and BACKEND.threads() is None:  # say so rather than ignore it silently
        print(f"note: --threads {settings.threads} ignored on the {BACKEND.name} backend (XLA sizes its CPU pool at "
              "start-up; set XLA_FLAGS=--xla_cpu_multi_thread_eigen=false for one thread)", file=sys.stderr)
    if settings.compile or settings.channels_last:
        print("note: --compile/--channels-last are torch switches; for Keras use --jit", file=sys.stderr)
    processes = distributed.initialize(BACKEND)  # before JAX's first look at its devices
    device = device_name(settings.device)
    scope, replicas = BACKEND.place(device, settings.strategy, deterministic=not settings.jit)
    if settings.plan.batch_size % replicas:
        raise UserError(f"--batch-size {settings.plan.batch_size} must be divisible by the {replicas} replicas")
    # bf16 on CPU (no loss scaling needed; float32 where bf16 would be emulated), fp16 on GPU (compile then adds
    # the LossScaleOptimizer)
    if settings.amp and not bf16_falls_back(settings.amp, bf16_on_cpu=device == "cpu", say=processes.owner):
        keras.mixed_precision.set_global_policy("mixed_float16" if device.startswith("cuda") else "mixed_bfloat16")
    return device, scope, replicas, processes, thread_record


def describe(device: str, scope: Any, replicas: int, processes: distributed.Processes) -> dict[str, Any]:
    """The ``device`` record of ``config.json``."""
    distribution = keras.distribution.distribution()
    strategy = type(scope).__name__ if hasattr(scope, "scope") else None
    return {"type": "cuda" if device.startswith("cuda") else "cpu", "name": device, "backend": BACKEND.name,
            "replicas": replicas, "processes": processes.count,
            "strategy": strategy or (type(distribution).__name__ if distribution else None),
            "policy": keras.mixed_precision.global_policy().name}


def evaluate(model: keras.Model, data: EpochDataset) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) in inference mode over every image of ``data``."""
    logs = model.evaluate(BACKEND.fit_input(data), verbose=0, return_dict=True)
    return float(logs["ce"]), float(logs["acc"])


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if os.environ.get(distributed.INDEX, "0") == "0":  # the process that writes (or launches the ones that do)
        check_run_folder(args)
    if args.nproc != 1 and distributed.COUNT not in os.environ:
        return distributed.launch(args.nproc, BACKEND, args.device, sys.argv[1:] if argv is None else list(argv))
    with distributed.errors_said_once(), StopRequest() as stop:  # SIGTERM: finish the step, back up, exit 143
        try:
            return train(args, stop)
        except StopNow as e:  # before the run folder was open
            return e.said("before training started; nothing was written",
                          say=os.environ.get(distributed.INDEX, "0") == "0")


def train(args: argparse.Namespace, stop: StopRequest) -> int:
    """One training process: the whole run, or its part of a run over several processes; 143 when a SIGTERM
    stopped it."""
    settings, data = resolve_run(args, FRAMEWORK, datasets.load_prepared)
    device, scope, replicas, processes, threads = set_up(settings)
    stop.rearm()  # joining several JAX processes replaced the SIGTERM handler with JAX's own
    plan, spec = settings.plan, settings.spec
    in_scope = scope.scope if hasattr(scope, "scope") else contextlib.nullcontext
    with in_scope():  # MirroredStrategy's variables, the optimizer's restored ones too, are made in its scope
        model = build_model(spec, seed=settings.seed)
        if (init := initial_weights(settings)) is not None:
            set_weights(model, spec, init)
        compile_model(model, plan, settings.jit, trace=bool(settings.trace_steps))
        saved = ResumeBackup.restore(model, settings.run_dir / runs.CHECKPOINTS[FRAMEWORK]) if settings.resumed else {}
    progress = Progress()
    if settings.resumed:
        if saved["backend"] != BACKEND.name:
            print(f"note: resuming a run backed up on the {saved['backend']} backend on {BACKEND.name}: the weights "
                  "carry over; steps differ from an uninterrupted run in float rounding", file=sys.stderr)
        # The backup holds model, optimizer, epoch and step; the run's progress is metrics.csv up to that epoch.
        progress = Progress.from_rows(runs.read_metrics(settings.run_dir)[: saved["epoch"]], plan,
                                      saved.get("step", 0), saved.get("partial"))
    record = describe(device, scope, replicas, processes)
    run = RunFolder.start(settings, progress, owner=processes.owner, manifest=data.manifest, device=record,
                          threads=threads)
    where = f"{device}, {record['strategy']} x{replicas}" if record["strategy"] else device
    run.announce(f"{FRAMEWORK}/{BACKEND.name}, {where}" + (f" over {processes.count} processes"
                                                           if processes.count > 1 else ""))
    part = Part(processes.index, processes.count, replicas)  # each process feeds its part of every global batch
    batches = {"ahead": BACKEND.batches_ahead, "part": part}
    val_data = EpochDataset(data, "val", plan.batch_size, train=False, **batches)
    shown = settings.show_progress and processes.owner  # Keras' bar first: it ends its line before the epoch's
    rest = [*([keras.callbacks.ProgbarLogger()] if shown else []),
            RecordRun(run, ResumeBackup(run, BACKEND.name), stop, distributed.agreement(processes),
                      scope=in_scope)]

    def fit(start: int, epochs: int) -> None:
        """Epochs up to ``epochs`` from the run's, each from its batch ``start`` (shuffle=False: the epoch plan has
        shuffled already, and fit would reorder a PyDataset's batches)."""
        train_data = EpochDataset(data, "train", plan.batch_size, train=settings.augment, seed=settings.seed,
                                  start=start, **batches)
        model.fit(BACKEND.fit_input(train_data), epochs=epochs, initial_epoch=run.progress.epoch,
                  validation_data=BACKEND.fit_input(val_data), callbacks=[SetEpoch(train_data), *rest],
                  shuffle=False, verbose=1 if shown else 0)

    with run:
        try:
            if run.progress.step:  # resumed inside an epoch: the rest of it first
                fit(run.progress.step, run.progress.epoch + 1)
            if run.progress.epoch < plan.epochs:
                fit(0, plan.epochs)
            best = run.best_weights() if processes.owner else get_weights(model, spec)
            set_weights(model, spec, distributed.from_owner(processes, best))
            run.finish(*evaluate(model, EpochDataset(data, "test", plan.batch_size, train=False, part=part)))
        except StopTraining:
            return run.stopped(stop.signal)
        except StopNow as e:
            return run.stopped_at_once(e)
    return 0


if __name__ == "__main__":
    sys.exit(errors.run(main))
