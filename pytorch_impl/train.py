"""Train a ResNet with PyTorch: the paper's recipe, a self-explaining run folder, exact resume.

    python -m pytorch_impl.train --model resnet20 --dataset cifar10 [--epochs E | --iters N] ...
    python -m pytorch_impl.train --nproc 2 ...                 # DDP (nccl on GPUs, gloo on CPU)
    torchrun --nproc_per_node 2 -m pytorch_impl.train ...      # the same, started by hand

Mirrors ``keras_impl/train.py`` where the frameworks share a shape. The framework-neutral parts are
in ``shared/``: the flags and the resolved :class:`~shared.training.Settings`, the recipe and its
per-iteration lr, the NaN guard, and the run folder (:class:`~shared.run_folder.RunFolder`), which
this plain loop drives: ``record_epoch`` after every epoch, then the checkpoint when it is due, and
``finish`` with the test split.

* SGD(momentum 0.9, weight_decay 1e-4) on every parameter: torch's coupled weight decay
  (``g += wd * w`` before momentum), ``buf = mu * buf + g``, ``w -= lr * buf``.
* The lr of every step is ``shared.recipes.lr_at(plan, iteration)``, written into the param groups
  before the step.
* Checkpoints (``checkpoint.pt``, ``pytorch_impl/checkpoint.py``) hold model, optimizer (momentum
  buffers), grad scaler, progress and RNG states; written atomically when the run folder says one is
  due (every epoch) and read back with ``torch.load(weights_only=True)``.
* No host synchronisation per step on CUDA: the loader uploads each epoch's plan once and slices it
  on the device, image counts are kept on the host, SGD is fused (GradScaler then skips its
  ``.item()``), and the loss/accuracy sums stay on the device until the host check every
  ``CHECK_EVERY`` steps (progress bar and NaN guard), the loop's one sync.
* ``--compile`` compiles with static shapes (``dynamic=False``), ``--compile-mode reduce-overhead``
  replays CUDA graphs. Evaluation pads its last, shorter batch to the batch size (eval-mode BN treats
  each image alone, and the padded rows are dropped), so one eval graph serves every batch of every
  split: no recompilation for a new shape, and CUDA graphs need static shapes anyway.
* DDP: ``--batch-size`` stays the global batch; every rank builds the same global batch (the plan is
  a function of seed and epoch) and trains on its contiguous slice, so a run on N processes takes
  the same steps with the same lr as a run on one (BN statistics are per process, as usual in DDP).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import datasets
from pytorch_impl.checkpoint import load_checkpoint, save_checkpoint
from pytorch_impl.data import make_loader
from pytorch_impl.distributed import init_distributed, launch
from pytorch_impl.optim import make_sgd
from pytorch_impl.resnet import build_model as build_resnet
from pytorch_impl.weights import get_weights, set_weights
from shared import runs, training
from shared.io import load_weights
from shared.recipes import Plan
from shared.run_folder import Progress, RunFolder
from shared.spec import ModelSpec
from shared.training import EpochLog, NonFiniteLoss, fail

FRAMEWORK = "torch"
CHECK_EVERY = 10  # steps between host syncs (progress bar, NaN guard); every step is checked at the end


def get_args_parser() -> argparse.ArgumentParser:
    """The training flags (shared with ``keras_impl.train``)."""
    return training.train_arg_parser("python -m pytorch_impl.train", FRAMEWORK)


class Context:
    """Device, precision and process-group facts of this process."""

    def __init__(self, device: torch.device, amp: bool, channels_last: bool, rank: int = 0, world: int = 1,
                 amp_dtype: str = "auto", cuda_graphs: bool = False):
        self.device, self.amp, self.channels_last = device, amp, channels_last
        self.rank, self.world, self.cuda_graphs = rank, world, cuda_graphs
        self.amp_dtype = autocast_dtype(device, amp_dtype)
        # Loss scaling only for float16; bfloat16 has float32's range.
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp and self.amp_dtype == torch.float16)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """The batch in the model's layout: a no-op for the loader's batches, which come in it."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def step_begins(self) -> None:
        """Tell torch.compile's CUDA graphs that a new step starts (the last step's outputs are consumed)."""
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()


def autocast_dtype(device: torch.device, requested: str = "auto") -> torch.dtype:
    """--amp-dtype: auto is bfloat16 on the CPU and float16 on CUDA; bfloat16 needs a GPU that has it."""
    if requested == "auto":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    if requested == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise fail(f"--amp-dtype bfloat16: {torch.cuda.get_device_name(device)} has no bfloat16; "
                   "valid choices here: auto, float16")
    return getattr(torch, requested)


def build_model(spec: ModelSpec, ctx: Context, seed: int, init: str | None = None) -> nn.Module:
    """The ResNet of ``spec`` on the device: seeded random init, or canonical weights from ``init``."""
    torch.manual_seed(seed)
    model = build_resnet(spec)
    if init:
        try:
            arrays, _ = load_weights(init)
            set_weights(model, spec, arrays)
        except ValueError as e:
            raise fail(f"--init {init}: {e}") from e
    model = model.to(ctx.device)
    if ctx.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def build_optimizer(model: nn.Module, plan: Plan, ctx: Context) -> torch.optim.Optimizer:
    """torch SGD with momentum and coupled weight decay on every parameter (the recipe's); fused on CUDA."""
    return make_sgd(model, plan.lr, plan.momentum, plan.weight_decay, plan.nesterov,
                    fused=True if ctx.device.type == "cuda" else None)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _shard(x: torch.Tensor, ctx: Context) -> torch.Tensor:
    """This rank's contiguous slice of a global batch."""
    if ctx.world == 1:
        return x
    per = len(x) // ctx.world
    return x[ctx.rank * per:(ctx.rank + 1) * per]


def _all_reduce(t: torch.Tensor, ctx: Context) -> torch.Tensor:
    if ctx.world > 1:
        t = t.clone()
        torch.distributed.all_reduce(t)
    return t


def host_totals(sums: torch.Tensor, ctx: Context) -> list[float]:
    """The loop's one host synchronisation: the device sums (over every rank) as Python floats."""
    return _all_reduce(sums, ctx).tolist()


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loader, plan: Plan, epoch: int,
                    progress: Progress, ctx: Context, trace_steps: int = 0,
                    trace: Callable[[float, float], None] | None = None, show_progress: bool = True
                    ) -> tuple[EpochLog, float]:
    """One epoch of SGD steps with the per-iteration lr; returns (its training loss/accuracy, last lr).

    A step queues its work and returns: the sums stay on the device and the image count on the
    host, until the host check every ``CHECK_EVERY`` steps and after the last one. The run's first
    ``trace_steps`` steps also hand their loss (over every rank) and lr to ``trace`` (a sync each).
    """
    t0 = time.perf_counter()
    model.train()
    loader.set_epoch(epoch)
    steps = plan.iters_in_epoch(epoch)
    sums = torch.zeros(2, dtype=torch.float64, device=ctx.device)  # loss * n, correct
    seen, total = 0, [0.0, 0.0]  # images over every rank (each trains an equal slice)
    bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{plan.epochs}", unit="it", leave=False, dynamic_ncols=True,
               disable=not (show_progress and ctx.main), file=sys.stderr)
    lr = plan.lr_at(progress.iteration)
    for i, (x, y) in zip(range(steps), loader):
        x, y = ctx.prepare_input(_shard(x, ctx)), _shard(y, ctx)
        n = len(y)  # the shape: known on the host
        lr = plan.lr_at(progress.iteration)
        set_lr(optimizer, lr)
        ctx.step_begins()
        with ctx.autocast():
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        ctx.scaler.scale(loss).backward()
        ctx.scaler.step(optimizer)
        ctx.scaler.update()
        if progress.iteration < trace_steps:  # opt-in: every rank joins the reduction
            traced = _all_reduce(loss.detach(), ctx).item() / ctx.world
            if trace is not None:
                trace(traced, lr)
        progress.iteration += 1
        seen += n * ctx.world
        with torch.no_grad():
            sums += torch.stack([loss.detach().double() * n, (logits.argmax(1) == y).sum().double()])
        if (i + 1) % CHECK_EVERY == 0 or i + 1 == steps:
            total = host_totals(sums, ctx)
            training.check_finite(total[0], epoch, progress.iteration, lr)
            bar.set_postfix(loss=f"{total[0] / seen:.4f}", acc=f"{total[1] / seen:.3f}", lr=f"{lr:.3g}")
            bar.update((i + 1) - bar.n)
    bar.close()
    return EpochLog(total[0] / max(seen, 1), total[1] / max(seen, 1), seen, time.perf_counter() - t0), lr


@torch.no_grad()
def evaluate(model: nn.Module, loader, ctx: Context, pad_to: int | None = None) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` in eval mode over every batch of ``loader``.

    ``pad_to`` (a compiled model's batch size) pads a shorter batch with zero images whose logits are
    dropped, so the compiled graph sees one shape (eval-mode BN treats each image on its own).
    """
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    correct = torch.zeros((), dtype=torch.int64, device=ctx.device)
    n = 0
    for x, y in loader:
        k = len(y)
        if pad_to is not None and k < pad_to:
            x = torch.cat([x, x.new_zeros((pad_to - k, *x.shape[1:]))])
        ctx.step_begins()
        with ctx.autocast():
            logits = model(ctx.prepare_input(x))[:k]
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        n += k
    return float(loss_sum) / max(n, 1), int(correct) / max(n, 1)


def _device_description(device: torch.device, ctx: Context) -> dict[str, Any]:
    desc: dict[str, Any] = {"type": device.type, "name": str(device), "world_size": ctx.world,
                            "threads": torch.get_num_threads()}
    if device.type == "cuda":
        desc["gpu"] = torch.cuda.get_device_name(device)
    return desc


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.nproc != 1 and "WORLD_SIZE" not in os.environ:
        return launch(args.nproc, args.device, sys.argv[1:] if argv is None else list(argv))
    settings, prepared = training.setup_run(args, FRAMEWORK, datasets.load_prepared)
    # under torchrun every rank resumes the same way; the first says so
    threads, thread_record = training.choose_threads(settings, torch.get_num_threads(),
                                                     say=os.environ.get("RANK", "0") == "0")
    if threads is not None:
        torch.set_num_threads(threads)
    if settings.jit:
        print("note: --jit is the Keras XLA switch; for torch use --compile", file=sys.stderr)
    device, rank, world = init_distributed(settings.device)
    cuda_graphs = settings.compile and device.type == "cuda" and settings.compile_mode in ("reduce-overhead",
                                                                                             "max-autotune")
    bf16_on_cpu = device.type == "cpu" and autocast_dtype(device, settings.amp_dtype) == torch.bfloat16
    amp = settings.amp and not training.emulated_bf16(settings.amp, bf16_on_cpu, say=rank == 0)
    ctx = Context(device, amp, settings.channels_last, rank, world, settings.amp_dtype, cuda_graphs)
    plan, spec = settings.plan, settings.spec
    if plan.batch_size % world:
        raise fail(f"--batch-size {plan.batch_size} must be divisible by the {world} processes")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    raw = build_model(spec, ctx, settings.seed, None if settings.resumed else settings.init)
    optimizer = build_optimizer(raw, plan, ctx)
    run: RunFolder | None = None  # the run folder is rank 0's
    if settings.resumed:
        progress = load_checkpoint(settings.run_dir / runs.CHECKPOINTS[FRAMEWORK], raw, optimizer, ctx.scaler,
                                   device)
        if ctx.main:
            run = RunFolder.reopen(settings, progress)
    elif ctx.main:
        run = RunFolder.create(settings, prepared.manifest, _device_description(device, ctx), thread_record)
        progress = run.progress
    else:
        progress = Progress()
    net: nn.Module = raw
    if world > 1:
        net = nn.parallel.DistributedDataParallel(raw, device_ids=[device.index] if device.type == "cuda" else None)
    if settings.compile:  # static shapes: training drops the last short batch, evaluation pads it
        mode = None if settings.compile_mode == "default" else settings.compile_mode
        net = torch.compile(net, mode=mode, dynamic=False)
    eval_net = raw if world > 1 else net  # DDP's forward syncs buffers across ranks: evaluate on rank 0 alone
    eval_pad = plan.batch_size if settings.compile and world == 1 else None

    loader_args = {"device": device, "channels_last": ctx.channels_last}
    train_loader = make_loader(prepared, "train", plan.batch_size, train=settings.augment, seed=settings.seed,
                               **loader_args)
    val_loader = make_loader(prepared, "val", plan.batch_size, train=False, **loader_args)
    if run is not None:
        run.announce(f"{FRAMEWORK}, {device}{f' x{world}' if world > 1 else ''}")
    try:
        while progress.epoch < plan.epochs:
            epoch, t0 = progress.epoch, time.perf_counter()
            try:
                log, lr = train_one_epoch(net, optimizer, train_loader, plan, epoch, progress, ctx,
                                          settings.trace_steps, run.trace_step if run else None, settings.show_progress)
            except NonFiniteLoss as e:
                raise SystemExit(training.nonfinite_message(e, settings.run_dir, progress.epoch)) from None
            if run is not None:
                val_loss, val_acc = evaluate(eval_net, val_loader, ctx, eval_pad)
                row = training.metrics_row(epoch + 1, log, val_loss, val_acc, lr, time.perf_counter() - t0)
                run.record_epoch(row, get_weights(raw, spec))
                if run.checkpoint_due(progress.epoch):
                    save_checkpoint(run.checkpoint_path, raw, optimizer, ctx.scaler, progress, device)
            else:
                progress.epoch += 1
            if world > 1:
                torch.distributed.barrier()
        if run is not None:
            set_weights(raw, spec, run.best_weights())
            test_loader = make_loader(prepared, "test", plan.batch_size, train=False, **loader_args)
            run.finish(*evaluate(raw, test_loader, ctx))
    finally:
        if run is not None:
            run.close()
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
