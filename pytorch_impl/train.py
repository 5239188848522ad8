"""Train a ResNet with PyTorch: the paper's recipe, a self-explaining run folder, exact resume.

    python -m pytorch_impl.train --model resnet20 --dataset cifar10 [--epochs E | --iters N] ...
    python -m pytorch_impl.train --nproc 2 ...                 # DDP (nccl on GPUs, gloo on CPU)
    torchrun --nproc_per_node 2 -m pytorch_impl.train ...      # the same, started by hand

Mirrors ``keras_impl/train.py`` function for function. The framework-neutral parts (flags, recipe
and per-iteration lr schedule, run folder, metrics, best tracking, NaN guard) are in ``shared/``.

* SGD(momentum 0.9, weight_decay 1e-4) on every parameter: torch's coupled weight decay
  (``g += wd * w`` before momentum), ``buf = mu * buf + g``, ``w -= lr * buf``.
* The lr of every step is ``shared.recipes.lr_at(plan, iteration)``, written into the param groups
  before the step.
* Checkpoints (``checkpoint.pt``) hold model, optimizer (momentum buffers), grad scaler, progress
  (epoch, global iteration, best so far, metrics rows, wall time) and RNG states; written atomically
  at the end of every epoch and read back with ``torch.load(weights_only=True)``.
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
import random
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pytorch_impl.data import make_loader
from pytorch_impl.optim import make_sgd
from pytorch_impl.resnet import build_model as build_resnet
from pytorch_impl.weights import get_weights, set_weights
from shared import runs
from shared.io import atomic_write, load_weights
from shared.recipes import Plan
from shared.spec import ModelSpec
from shared.training import (
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

FRAMEWORK = "torch"
CHECK_EVERY = 10  # steps between host syncs (progress bar, NaN guard); every step is checked at the end


def get_args_parser() -> argparse.ArgumentParser:
    """The training flags (shared with ``keras_impl.train``)."""
    return train_arg_parser("python -m pytorch_impl.train", FRAMEWORK)


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


def check_nproc(nproc: int, device_name: str, gpus: int) -> None:
    """One CUDA process per visible GPU at most (more would die with "invalid device ordinal")."""
    if nproc < 1:
        raise fail(f"--nproc must be >= 1; got {nproc}")
    if device_name.startswith("cuda") and nproc > gpus:
        raise fail(f"{nproc} processes (NPROC={nproc}) but {gpus} CUDA GPU(s) visible "
                   f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); use NPROC <= {gpus}, "
                   "or --device cpu (DEVICE=cpu) for gloo processes on the CPU")


def launch(nproc: int, requested: str, argv: list[str]) -> int:
    """``--nproc N``: check, then start this command N times through ``python -m torch.distributed.run``."""
    gpus = torch.cuda.device_count()
    check_nproc(nproc, resolve_device_name(requested, gpus), gpus)
    rest, skip = [], False  # the processes run without --nproc (torchrun would take it for its own option)
    for arg in argv:
        if not skip and not arg.startswith("--nproc"):
            rest.append(arg)
        skip = arg == "--nproc"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "pytorch_impl.train", *rest]
    return subprocess.call(cmd)


def init_distributed(requested: str) -> tuple[torch.device, int, int]:
    """(device, rank, world size); joins the torchrun process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    gpus = torch.cuda.device_count()
    name = resolve_device_name(requested, gpus)
    if world == 1:
        return torch.device(name), 0, 1
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    try:  # started by hand with torchrun: every process would die with "invalid device ordinal"
        check_nproc(int(os.environ.get("LOCAL_WORLD_SIZE", world)), name, gpus)
    except SystemExit:
        if local_rank:  # the first process says why
            raise SystemExit(1) from None
        raise
    if name.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device, rank, world


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
                    progress: Progress, ctx: Context, trace: dict[str, list] | None = None,
                    show_progress: bool = True) -> tuple[EpochLog, float]:
    """One epoch of SGD steps with the per-iteration lr; returns (train loss/acc sums, last lr).

    A step queues its work and returns: the sums stay on the device and the image count on the
    host, until the host check every ``CHECK_EVERY`` steps and after the last one.
    """
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
        progress.iteration += 1
        seen += n * ctx.world
        with torch.no_grad():
            sums += torch.stack([loss.detach().double() * n, (logits.argmax(1) == y).sum().double()])
        if trace is not None and len(trace["loss"]) < trace["limit"]:  # opt-in: syncs on the traced steps
            trace["loss"].append(_all_reduce(loss.detach(), ctx).item() / ctx.world)
            trace["lr"].append(lr)
        if (i + 1) % CHECK_EVERY == 0 or i + 1 == steps:
            total = host_totals(sums, ctx)
            check_finite(total[0], epoch, progress.iteration, lr)
            bar.set_postfix(loss=f"{total[0] / seen:.4f}", acc=f"{total[1] / seen:.3f}", lr=f"{lr:.3g}")
            bar.update((i + 1) - bar.n)
    bar.close()
    return EpochLog(total[0], int(total[1]), seen), lr


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


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    version, internal, gauss = random.getstate()
    state["python"] = [version, list(internal), gauss]
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, progress: Progress,
                    ctx: Context) -> Path:
    """The resume checkpoint, atomically: model, optimizer, scaler, progress, RNG (tensors and plain data)."""
    state = {
        "format": 1,
        "framework": FRAMEWORK,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": ctx.scaler.state_dict() if ctx.scaler.is_enabled() else {},
        "progress": progress.to_dict(),
        "rng": _rng_state(ctx.device),
    }
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, ctx: Context) -> Progress:
    """Restore a :func:`save_checkpoint` file (``weights_only=True``: no code runs on load)."""
    try:
        state = torch.load(path, map_location=ctx.device, weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise fail(f"cannot read checkpoint {path} ({type(e).__name__}: {e})") from e
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if state["scaler"] and ctx.scaler.is_enabled():
        ctx.scaler.load_state_dict(state["scaler"])
    rng = state["rng"]
    rng["torch"] = rng["torch"].cpu()
    if "cuda" in rng:
        rng["cuda"] = [t.cpu() for t in rng["cuda"]]
    _set_rng_state(rng, ctx.device)
    return Progress.from_dict(state["progress"])


def tensorboard_writer(run_dir: Path):
    """torch's SummaryWriter writing into the run folder, without importing tensorflow.

    tensorboard resolves its ``tf`` lazily and uses its own TF-free stub when the module
    ``tensorboard.compat.notf`` exists (its documented no-TensorFlow switch); tensorflow must not be
    imported next to torch here (torch.export crashes in such a process).
    """
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run_dir))


def _device_description(device: torch.device, ctx: Context) -> dict[str, Any]:
    desc: dict[str, Any] = {"type": device.type, "name": str(device), "world_size": ctx.world,
                            "threads": torch.get_num_threads()}
    if device.type == "cuda":
        desc["gpu"] = torch.cuda.get_device_name(device)
    return desc


def _end_of_epoch(setup: RunSetup, raw: nn.Module, optimizer, progress: Progress, row: dict, ctx: Context,
                  writer) -> None:
    """Metrics, weights, checkpoint, TensorBoard and the summary line (``shared.training.end_of_epoch``)."""
    end_of_epoch(setup, FRAMEWORK, progress, row, get_weights(raw, setup.spec),
                 lambda path: save_checkpoint(path, raw, optimizer, progress, ctx), writer)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.nproc != 1 and "WORLD_SIZE" not in os.environ:
        return launch(args.nproc, args.device, sys.argv[1:] if argv is None else list(argv))
    if args.workers is not None:
        if args.workers < 1:
            raise fail(f"--workers must be >= 1; got {args.workers}")
        torch.set_num_threads(args.workers)
    setup = setup_run(args, FRAMEWORK)
    if args.jit:
        print("note: --jit is the Keras XLA switch; for torch use --compile", file=sys.stderr)
    device, rank, world = init_distributed(args.device)
    cuda_graphs = bool(args.compile) and device.type == "cuda" and args.compile_mode in ("reduce-overhead",
                                                                                          "max-autotune")
    ctx = Context(device, args.amp, args.channels_last, rank, world, args.amp_dtype, cuda_graphs)
    plan, spec = setup.plan, setup.spec
    if plan.batch_size % world:
        raise fail(f"--batch-size {plan.batch_size} must be divisible by the {world} processes")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    seed_python(args.seed)

    raw = build_model(spec, ctx, args.seed, None if setup.resumed else args.init)
    optimizer = build_optimizer(raw, plan, ctx)
    progress = Progress()
    if setup.resumed:
        progress = load_checkpoint(setup.run_dir / runs.CHECKPOINTS[FRAMEWORK], raw, optimizer, ctx)
    net: nn.Module = raw
    if world > 1:
        net = nn.parallel.DistributedDataParallel(raw, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:  # static shapes: training drops the last short batch, evaluation pads it
        net = torch.compile(net, mode=None if args.compile_mode == "default" else args.compile_mode, dynamic=False)
    eval_net = raw if world > 1 else net  # DDP's forward syncs buffers across ranks: evaluate on rank 0 alone
    eval_pad = plan.batch_size if args.compile and world == 1 else None

    loader_args = {"device": device, "channels_last": ctx.channels_last}
    train_loader = make_loader(setup.prepared, "train", plan.batch_size, train=not args.no_augment, seed=args.seed,
                               **loader_args)
    val_loader = make_loader(setup.prepared, "val", plan.batch_size, train=False, **loader_args)
    writer = None
    if ctx.main:
        setup.run_dir.mkdir(parents=True, exist_ok=True)
        if not setup.resumed:
            setup.config["device"] = _device_description(device, ctx)
            runs.write_config(setup.run_dir, setup.config)
        else:
            runs.write_metrics(setup.run_dir, progress.rows)  # drop rows written after the checkpoint
        writer = tensorboard_writer(setup.run_dir)
        verb = f"resuming at epoch {progress.epoch + 1}" if setup.resumed else "training"
        print(f"{verb} {spec.name} ({FRAMEWORK}, {device}{f' x{world}' if world > 1 else ''}) on {args.dataset}: "
              f"{plan.epochs} epochs x {plan.iters_per_epoch} it = {plan.total_iters} iterations, batch "
              f"{plan.batch_size}, lr {plan.lr:g} (milestones {list(plan.milestones)}) -> {setup.run_dir}", flush=True)
    trace = {"loss": [], "lr": [], "limit": args.trace_steps} if args.trace_steps else None

    try:
        while progress.epoch < plan.epochs:
            epoch, t0 = progress.epoch, time.perf_counter()
            try:
                log, lr = train_one_epoch(net, optimizer, train_loader, plan, epoch, progress, ctx, trace,
                                          not args.no_progress)
            except NonFiniteLoss as e:
                raise SystemExit(nonfinite_message(e, setup.run_dir, progress.epoch)) from None
            train_s = time.perf_counter() - t0
            if ctx.main:
                val_loss, val_acc = evaluate(eval_net, val_loader, ctx, eval_pad)
                seconds = time.perf_counter() - t0
                row = metrics_row(epoch + 1, log, val_loss, val_acc, lr, seconds)
                row["images_per_s"] = log.seen / train_s
                progress.wall_time_s += seconds
                _end_of_epoch(setup, raw, optimizer, progress, row, ctx, writer)
                if trace is not None:
                    write_steps(setup.run_dir, trace["loss"], trace["lr"])
            else:
                progress.epoch += 1
            if world > 1:
                torch.distributed.barrier()
        if ctx.main:
            arrays, _ = load_weights(setup.run_dir / runs.BEST)
            set_weights(raw, spec, arrays)
            test_loader = make_loader(setup.prepared, "test", plan.batch_size, train=False, **loader_args)
            test_loss, test_acc = evaluate(raw, test_loader, ctx)
            results = results_dict(test_loss, test_acc, progress, plan)
            runs.write_results(setup.run_dir, results)
            print(f"test acc {test_acc:.4f} loss {test_loss:.4f} with the best weights (epoch {progress.best_epoch}, "
                  f"val acc {progress.best_val_acc:.4f}); {progress.wall_time_s:.1f}s -> {setup.run_dir}", flush=True)
    finally:
        if writer is not None:
            writer.close()
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
