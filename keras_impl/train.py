"""Train a ResNet with Keras 3 (TensorFlow backend): the same recipe and run folder as PyTorch.

    python -m keras_impl.train --model resnet20 --dataset cifar10 [--epochs E | --iters N] ...
    python -m keras_impl.train ... --strategy mirrored            # tf.distribute.MirroredStrategy

Mirrors ``pytorch_impl/train.py`` function for function. What differs from ``model.fit`` and why:

* :class:`keras_impl.optim.TorchSGD` is ``torch.optim.SGD`` written as a Keras optimizer: coupled weight decay
  (``g += wd * w`` before momentum; Keras' own ``weight_decay`` is decoupled), torch's momentum
  (``buf = mu * buf + g``, ``w -= lr * buf``). Keras' SGD keeps ``v = mu * v - lr * g`` instead, which
  is the same only while the lr is constant: at a milestone torch's step shrinks at once, Keras'
  velocity still carries the old lr. With TorchSGD both frameworks take the same steps throughout.
* The lr of every step is ``shared.recipes.lr_at(plan, iteration)``, assigned to the optimizer's lr
  variable before the step (inside the compiled step function, so nothing retraces).
* A custom train step (``tf.GradientTape`` under ``tf.function``, ``jit_compile`` with ``--jit``)
  averages the cross-entropy over the global batch, as torch's mean loss does.
* Checkpoints (``checkpoint.npz``) hold every model and optimizer variable plus the progress as
  JSON; written atomically, read back with ``allow_pickle=False`` (no code runs on load).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tqdm import tqdm  # noqa: E402

from keras_impl.data import make_dataset  # noqa: E402
from keras_impl.optim import make_sgd  # noqa: E402
from keras_impl.resnet import build_model as build_resnet  # noqa: E402
from keras_impl.weights import get_weights, set_weights  # noqa: E402
from shared import runs  # noqa: E402
from shared.io import atomic_write, load_weights  # noqa: E402
from shared.recipes import Plan  # noqa: E402
from shared.spec import ModelSpec  # noqa: E402
from shared.training import (  # noqa: E402
    EpochLog,
    NonFiniteLoss,
    Progress,
    RunSetup,
    check_finite,
    end_of_epoch,
    fail,
    metrics_row,
    nonfinite_message,
    resolve_device_name,
    results_dict,
    seed_python,
    setup_run,
    train_arg_parser,
    write_steps,
)

FRAMEWORK = "keras"
CHECK_EVERY = 10  # steps between host syncs (progress bar, NaN guard); every step is checked at the end


def get_args_parser() -> argparse.ArgumentParser:
    """The training flags (shared with ``pytorch_impl.train``)."""
    return train_arg_parser("python -m keras_impl.train", FRAMEWORK)


class Context:
    """Device, precision and tf.distribute facts of this process."""

    def __init__(self, device: str, amp: bool, strategy: tf.distribute.Strategy, jit: bool) -> None:
        self.device, self.amp, self.strategy, self.jit = device, amp, strategy, jit
        self.replicas = strategy.num_replicas_in_sync
        self.distributed = isinstance(strategy, tf.distribute.MirroredStrategy)
        self.main = True

    def distribute(self, ds: tf.data.Dataset):
        return self.strategy.experimental_distribute_dataset(ds) if self.distributed else ds


def init_distributed(requested_device: str, strategy: str) -> tuple[str, tf.distribute.Strategy]:
    """(device name, strategy): hides the GPUs for ``--device cpu``; MirroredStrategy over every
    visible GPU when more than one is visible (``auto``) or when forced (``mirrored``, also on CPU)."""
    gpus = tf.config.list_physical_devices("GPU")
    name = resolve_device_name(requested_device, len(gpus))
    if name == "cpu":
        tf.config.set_visible_devices([], "GPU")
        gpus = []
    elif ":" in name:
        gpus = [gpus[int(name.split(":")[1])]]
        tf.config.set_visible_devices(gpus, "GPU")
    if strategy == "mirrored" or (strategy == "auto" and len(gpus) > 1):
        devices = [f"/gpu:{i}" for i in range(len(gpus))] or ["/cpu:0"]
        return name, tf.distribute.MirroredStrategy(devices=devices)
    return name, tf.distribute.get_strategy()


def build_model(spec: ModelSpec, ctx: Context, seed: int, init: str | None = None) -> keras.Model:
    """The ResNet of ``spec`` in the strategy's scope: seeded random init, or canonical weights from ``init``."""
    keras.utils.set_random_seed(seed)
    with ctx.strategy.scope():
        model = build_resnet(spec)
    if init:
        try:
            arrays, _ = load_weights(init)
            set_weights(model, spec, arrays)
        except ValueError as e:
            raise fail(f"--init {init}: {e}") from e
    return model


def build_optimizer(model: keras.Model, plan: Plan, ctx: Context) -> keras.optimizers.Optimizer:
    """``keras_impl.optim.TorchSGD`` with the recipe's momentum and coupled weight decay on every
    trainable variable; wrapped in a LossScaleOptimizer under float16 (GPU ``--amp``). Built, so its variables exist."""
    with ctx.strategy.scope():
        opt = make_sgd(model, plan.lr, plan.momentum, plan.weight_decay, plan.nesterov)
        if keras.mixed_precision.global_policy().compute_dtype == "float16":
            opt = keras.optimizers.LossScaleOptimizer(opt)
        opt.build(model.trainable_variables)
    return opt


def _inner(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    return getattr(optimizer, "inner_optimizer", optimizer)


def set_lr(optimizer: keras.optimizers.Optimizer, lr) -> None:
    _inner(optimizer).learning_rate.assign(lr)


def make_steps(model: keras.Model, optimizer: keras.optimizers.Optimizer, ctx: Context, global_batch: int):
    """(train_step(x, y, lr) -> (loss, correct, n), eval_step(x, y) -> (loss_sum, correct, n)), compiled."""
    variables = model.trainable_variables

    def replica_train(x, y):
        with tf.GradientTape() as tape:
            logits = tf.cast(model(x, training=True), tf.float32)
            per_example = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
            loss = tf.reduce_sum(per_example) / global_batch  # the global batch mean, as torch's mean loss
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        optimizer.apply_gradients(zip(grads, variables))  # sums gradients over replicas
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y), tf.float32))
        return loss, correct, tf.cast(tf.shape(y)[0], tf.float32)

    def replica_eval(x, y):
        logits = tf.cast(model(x, training=False), tf.float32)
        loss = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y), tf.float32))
        return loss, correct, tf.cast(tf.shape(y)[0], tf.float32)

    replica_train = tf.function(replica_train, jit_compile=ctx.jit) if ctx.jit else replica_train
    replica_eval = tf.function(replica_eval, jit_compile=ctx.jit) if ctx.jit else replica_eval

    def reduce(values):
        return tuple(ctx.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in values)

    @tf.function
    def train_step(x, y, lr):
        set_lr(optimizer, lr)
        return reduce(ctx.strategy.run(replica_train, args=(x, y)))

    @tf.function
    def eval_step(x, y):
        return reduce(ctx.strategy.run(replica_eval, args=(x, y)))

    return train_step, eval_step


def train_one_epoch(train_step, dataset, plan: Plan, epoch: int, progress: Progress, ctx: Context,
                    trace: dict[str, list] | None = None, show_progress: bool = True) -> tuple[EpochLog, float]:
    """One epoch of SGD steps with the per-iteration lr; returns (train loss/acc sums, last lr)."""
    steps = plan.iters_in_epoch(epoch)
    sums = tf.zeros(3, tf.float64)  # loss * n, correct, n
    bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{plan.epochs}", unit="it", leave=False, dynamic_ncols=True,
               disable=not show_progress, file=sys.stderr)
    lr = plan.lr_at(progress.iteration)
    for i, (x, y) in zip(range(steps), ctx.distribute(dataset)):
        lr = plan.lr_at(progress.iteration)
        loss, correct, n = train_step(x, y, tf.constant(lr, tf.float32))
        progress.iteration += 1
        sums += tf.cast(tf.stack([loss * n, correct, n]), tf.float64)
        if trace is not None and len(trace["loss"]) < trace["limit"]:
            trace["loss"].append(float(loss))
            trace["lr"].append(lr)
        if (i + 1) % CHECK_EVERY == 0 or i + 1 == steps:
            total = sums.numpy().tolist()
            check_finite(total[0], epoch, progress.iteration, lr)
            bar.set_postfix(loss=f"{total[0] / total[2]:.4f}", acc=f"{total[1] / total[2]:.3f}", lr=f"{lr:.3g}")
            bar.update((i + 1) - bar.n)
    bar.close()
    total = sums.numpy().tolist()
    return EpochLog(total[0], int(total[1]), int(total[2])), lr


def evaluate(eval_step, dataset, ctx: Context) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) in inference mode over every batch of ``dataset``."""
    loss_sum = correct = n = 0.0
    for x, y in ctx.distribute(dataset):
        loss, c, m = eval_step(x, y)
        loss_sum, correct, n = loss_sum + float(loss), correct + float(c), n + float(m)
    return loss_sum / max(n, 1.0), correct / max(n, 1.0)


def _state_bytes(state: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(json.dumps(state).encode("utf-8"), dtype=np.uint8)


def save_checkpoint(path: Path, model: keras.Model, optimizer: keras.optimizers.Optimizer, progress: Progress,
                    ctx: Context) -> Path:
    """The resume checkpoint, atomically: every model and optimizer variable, progress and RNG as JSON."""
    arrays = {f"model/{v.path}": keras.ops.convert_to_numpy(v) for v in model.variables}
    arrays |= {f"optimizer/{i:05d}": keras.ops.convert_to_numpy(v) for i, v in enumerate(optimizer.variables)}
    version, internal, gauss = random.getstate()
    state = {"format": 1, "framework": FRAMEWORK, "progress": progress.to_dict(),
             "optimizer_paths": [v.path for v in optimizer.variables],
             "rng": {"python": [version, list(internal), gauss]}}
    arrays["state"] = _state_bytes(state)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write(path, write)


def load_checkpoint(path: Path, model: keras.Model, optimizer: keras.optimizers.Optimizer, ctx: Context) -> Progress:
    """Restore a :func:`save_checkpoint` file (``allow_pickle=False``: only arrays, no code)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
        state = json.loads(data.pop("state").tobytes().decode("utf-8"))
    except Exception as e:  # a truncated or foreign file
        raise fail(f"cannot read checkpoint {path} ({type(e).__name__}: {e})") from e
    variables = {f"model/{v.path}": v for v in model.variables}
    opt_vars = list(optimizer.variables)
    if set(variables) != {k for k in data if k.startswith("model/")} or len(opt_vars) != len(state["optimizer_paths"]):
        raise fail(f"checkpoint {path} does not match this model/optimizer ({model.name})")
    for key, var in variables.items():
        var.assign(data[key])
    for i, var in enumerate(opt_vars):
        var.assign(data[f"optimizer/{i:05d}"])
    version, internal, gauss = state["rng"]["python"]
    random.setstate((version, tuple(internal), gauss))
    return Progress.from_dict(state["progress"])


class TensorBoardWriter:
    """tf.summary scalars in the run folder (the same tags as the torch side's SummaryWriter)."""

    def __init__(self, run_dir: Path) -> None:
        self.writer = tf.summary.create_file_writer(str(run_dir))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        with self.writer.as_default():
            tf.summary.scalar(tag, value, step=step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def tensorboard_writer(run_dir: Path) -> TensorBoardWriter:
    """TensorBoard events in the run folder (``tensorboard --logdir runs`` overlays both frameworks)."""
    return TensorBoardWriter(run_dir)


def _device_description(device: str, ctx: Context) -> dict[str, Any]:
    desc: dict[str, Any] = {"type": "cuda" if device.startswith("cuda") else "cpu", "name": device,
                            "replicas": ctx.replicas, "strategy": type(ctx.strategy).__name__,
                            "policy": keras.mixed_precision.global_policy().name}
    if desc["type"] == "cuda":
        desc["gpu"] = [tf.config.experimental.get_device_details(g).get("device_name", g.name)
                       for g in tf.config.get_visible_devices("GPU")]
    return desc


def _end_of_epoch(setup: RunSetup, model: keras.Model, optimizer, progress: Progress, row: dict, ctx: Context,
                  writer) -> None:
    """Metrics, weights, checkpoint, TensorBoard and the summary line (``shared.training.end_of_epoch``)."""
    end_of_epoch(setup, FRAMEWORK, progress, row, get_weights(model, setup.spec),
                 lambda path: save_checkpoint(path, model, optimizer, progress, ctx), writer)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.workers is not None:
        if args.workers < 1:
            raise fail(f"--workers must be >= 1; got {args.workers}")
        try:
            tf.config.threading.set_intra_op_parallelism_threads(args.workers)
        except RuntimeError:  # TF already started in this process (e.g. main() called twice): keep its pool
            print(f"note: --workers {args.workers} ignored: TensorFlow's thread pool already exists",
                  file=sys.stderr)
    setup = setup_run(args, FRAMEWORK)
    if args.compile or args.channels_last:
        print("note: --compile/--channels-last are torch switches; for Keras use --jit (XLA)", file=sys.stderr)
    device, strategy = init_distributed(args.device, args.strategy)
    if device == "cpu":
        tf.config.experimental.enable_op_determinism()  # bit-exact resume and same-seed runs on CPU
    if args.amp:  # bf16 on CPU (no loss scaling needed), fp16 + LossScaleOptimizer on GPU
        keras.mixed_precision.set_global_policy("mixed_float16" if device.startswith("cuda") else "mixed_bfloat16")
    ctx = Context(device, args.amp, strategy, args.jit)
    plan, spec = setup.plan, setup.spec
    if plan.batch_size % ctx.replicas:
        raise fail(f"--batch-size {plan.batch_size} must be divisible by the {ctx.replicas} replicas")
    seed_python(args.seed)

    model = build_model(spec, ctx, args.seed, None if setup.resumed else args.init)
    optimizer = build_optimizer(model, plan, ctx)
    progress = Progress()
    if setup.resumed:
        progress = load_checkpoint(setup.run_dir / runs.CHECKPOINTS[FRAMEWORK], model, optimizer, ctx)
    train_step, eval_step = make_steps(model, optimizer, ctx, plan.batch_size)
    val_ds = make_dataset(setup.prepared, "val", plan.batch_size, train=False)

    setup.run_dir.mkdir(parents=True, exist_ok=True)
    if not setup.resumed:
        setup.config["device"] = _device_description(device, ctx)
        runs.write_config(setup.run_dir, setup.config)
    else:
        runs.write_metrics(setup.run_dir, progress.rows)  # drop rows written after the checkpoint
    writer = tensorboard_writer(setup.run_dir)
    verb = f"resuming at epoch {progress.epoch + 1}" if setup.resumed else "training"
    where = f"{device}, {type(strategy).__name__} x{ctx.replicas}" if ctx.distributed else device
    print(f"{verb} {spec.name} ({FRAMEWORK}, {where}) on {setup.config['dataset']}: {plan.epochs} epochs x "
          f"{plan.iters_per_epoch} it = {plan.total_iters} iterations, batch {plan.batch_size}, lr {plan.lr:g} "
          f"(milestones {list(plan.milestones)}) -> {setup.run_dir}", flush=True)
    trace = {"loss": [], "lr": [], "limit": args.trace_steps} if args.trace_steps else None

    try:
        while progress.epoch < plan.epochs:
            epoch, t0 = progress.epoch, time.perf_counter()
            train_ds = make_dataset(setup.prepared, "train", plan.batch_size, train=not args.no_augment,
                                    seed=args.seed, epoch=epoch)
            try:
                log, lr = train_one_epoch(train_step, train_ds, plan, epoch, progress, ctx, trace,
                                          not args.no_progress)
            except NonFiniteLoss as e:
                raise SystemExit(nonfinite_message(e, setup.run_dir, progress.epoch)) from None
            train_s = time.perf_counter() - t0
            val_loss, val_acc = evaluate(eval_step, val_ds, ctx)
            seconds = time.perf_counter() - t0
            row = metrics_row(epoch + 1, log, val_loss, val_acc, lr, seconds)
            row["images_per_s"] = log.seen / train_s
            progress.wall_time_s += seconds
            _end_of_epoch(setup, model, optimizer, progress, row, ctx, writer)
            if trace is not None:
                write_steps(setup.run_dir, trace["loss"], trace["lr"])
        arrays, _ = load_weights(setup.run_dir / runs.BEST)
        set_weights(model, spec, arrays)
        test_ds = make_dataset(setup.prepared, "test", plan.batch_size, train=False)
        test_loss, test_acc = evaluate(eval_step, test_ds, ctx)
        results = results_dict(test_loss, test_acc, progress, plan)
        runs.write_results(setup.run_dir, results)
        print(f"test acc {test_acc:.4f} loss {test_loss:.4f} with the best weights (epoch {progress.best_epoch}, "
              f"val acc {progress.best_val_acc:.4f}); {progress.wall_time_s:.1f}s -> {setup.run_dir}", flush=True)
    finally:
        writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
