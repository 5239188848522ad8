"""Train a ResNet with PyTorch: a plain loop over the shared recipe, data plan and run folder (docs/training.md).

    python -m pytorch_impl.train --model resnet20 --dataset cifar10 [--epochs E | --iters N] ...
    python -m pytorch_impl.train --nproc 2 ...                 # DDP: nccl on GPUs, gloo on the CPU

SIGTERM stops it after the current step with a checkpoint of the position inside the epoch (exit 143).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import datasets
from pytorch_impl.checkpoint import load_checkpoint, save_checkpoint
from pytorch_impl.data import Loader
from pytorch_impl.distributed import init_distributed, launch
from pytorch_impl.optim import make_sgd
from pytorch_impl.resnet import build_model
from pytorch_impl.weights import get_weights, set_weights
from shared import errors, runs
from shared.devices import bf16_falls_back
from shared.errors import UserError
from shared.run_folder import CHECK_EVERY, EpochLog, Progress, RunFolder
from shared.run_settings import RunSettings, check_run_folder, initial_weights, resolve_run
from shared.signals import StopNow, StopRequest
from shared.threads import choose_threads
from shared.train_flags import train_arg_parser

FRAMEWORK = "torch"


def get_args_parser() -> errors.ArgumentParser:
    """The training flags (shared with ``keras_impl.train``)."""
    return train_arg_parser("python -m pytorch_impl.train", FRAMEWORK)


class Context:
    """Where and how this process trains: its device, its rank among the DDP processes, its precision."""

    def __init__(self, device: torch.device, *, amp: bool = False, channels_last: bool = False, rank: int = 0,
                 world: int = 1, amp_dtype: str = "auto", cuda_graphs: bool = False) -> None:
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

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch."""
        per = len(x) // self.world
        return x[self.rank * per:(self.rank + 1) * per]

    def reduced(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over every rank (``t`` itself alone)."""
        if self.world > 1:
            t = t.clone()
            torch.distributed.all_reduce(t)
        return t

    def host_totals(self, sums: torch.Tensor, stop: bool = False) -> tuple[list[float], bool]:
        """The loop's one host synchronisation: (the device sums over every rank as Python floats, whether any
        rank was asked to stop: the ranks agree here on the step they stop at)."""
        *totals, stops = self.reduced(torch.cat([sums, sums.new_tensor([float(stop)])])).tolist()
        return totals, stops > 0

    def gathered(self, t: torch.Tensor) -> list[list[float]]:
        """``t`` of every rank, in rank order, as Python floats."""
        if self.world == 1:
            return [t.tolist()]
        parts = [torch.empty_like(t) for _ in range(self.world)]
        torch.distributed.all_gather(parts, t)
        return [part.tolist() for part in parts]

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def describe(self) -> dict[str, Any]:
        """The ``device`` record of ``config.json``."""
        desc = {"type": self.device.type, "name": str(self.device), "world_size": self.world,
                "threads": torch.get_num_threads()}
        return desc | ({"gpu": torch.cuda.get_device_name(self.device)} if self.device.type == "cuda" else {})

    def close(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def autocast_dtype(device: torch.device, requested: str = "auto") -> torch.dtype:
    """--amp-dtype: auto is bfloat16 on the CPU and float16 on CUDA; bfloat16 needs a GPU that has it."""
    if requested == "auto":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    if requested == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"--amp-dtype bfloat16: {torch.cuda.get_device_name(device)} has no bfloat16; "
                        "valid choices here: auto, float16")
    return getattr(torch, requested)


def set_up(settings: RunSettings) -> tuple[Context, dict[str, Any]]:
    """This process's threads, device, DDP rank and precision, in that order; (its context, the threads record)."""
    threads, thread_record = choose_threads(settings, torch.get_num_threads(), say=os.environ.get("RANK", "0") == "0")
    if threads is not None:
        torch.set_num_threads(threads)
    if settings.jit:
        print("note: --jit is the Keras XLA switch; for torch use --compile", file=sys.stderr)
    device, rank, world = init_distributed(settings.device)
    if settings.plan.batch_size % world:
        raise UserError(f"--batch-size {settings.plan.batch_size} must be divisible by the {world} processes")
    bf16_on_cpu = device.type == "cpu" and autocast_dtype(device, settings.amp_dtype) == torch.bfloat16
    amp = settings.amp and not bf16_falls_back(settings.amp, bf16_on_cpu, say=rank == 0)
    graphs = settings.compile and device.type == "cuda" and settings.compile_mode in ("reduce-overhead",
                                                                                       "max-autotune")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    ctx = Context(device, amp=amp, channels_last=settings.channels_last, rank=rank, world=world,
                  amp_dtype=settings.amp_dtype, cuda_graphs=graphs)
    return ctx, thread_record


def place(model: nn.Module, settings: RunSettings, ctx: Context) -> tuple[nn.Module, nn.Module, int | None]:
    """(the module the training steps call, the one evaluation calls, the batch evaluation pads to): DDP over
    the ranks, then ``torch.compile`` with static shapes (training drops its last short batch, evaluation pads
    it). Evaluation skips DDP, whose forward syncs buffers across ranks."""
    net: nn.Module = model
    if ctx.world > 1:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if settings.compile:
        mode = None if settings.compile_mode == "default" else settings.compile_mode
        net = torch.compile(net, mode=mode, dynamic=False)
    if ctx.world > 1:
        return net, model, None
    return net, net, settings.plan.batch_size if settings.compile else None


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, lr: float,
               ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on a batch at ``lr``: (its mean loss, its correct count), both left on the device."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    ctx.step_begins()
    with ctx.autocast():
        logits = model(ctx.prepare_input(x))
    loss = F.cross_entropy(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    ctx.scaler.scale(loss).backward()
    ctx.scaler.step(optimizer)
    ctx.scaler.update()
    return loss.detach(), (logits.argmax(1) == y).sum()


def rank_sums(partial: dict[str, Any], ctx: Context) -> list[float]:
    """This rank's sums (loss x images, correct) of the epoch so far: zeros, or its own where a stop saved them (with
    another number of ranks than the run's, the first carries them all)."""
    ranks = partial.get("sums", [])
    if len(ranks) == ctx.world:
        return list(ranks[ctx.rank])
    return [sum(column) for column in zip(*ranks)] if ranks and ctx.rank == 0 else [0.0, 0.0]


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loader: Loader, run: RunFolder,
                    ctx: Context, stop: StopRequest) -> EpochLog | None:
    """The epoch ``run.progress.epoch``, from its step ``run.progress.step`` on (0, or where a stop left it): SGD
    steps at the recipe's per-step lr. The sums stay on the device and the image count on the host until the host
    check every ``CHECK_EVERY`` steps, the loop's one sync. None when a SIGTERM stopped it: the progress then marks
    the step reached and the epoch's sums so far (every rank's), for the checkpoint. One process stops after any
    step (a host flag, no sync); several agree at a host check."""
    t0, progress, plan = time.perf_counter(), run.progress, run.plan
    model.train()
    loader.set_epoch(progress.epoch)
    steps, start, before = plan.iters_in_epoch(progress.epoch), progress.step, progress.partial
    sums = torch.zeros(2, dtype=torch.float64, device=ctx.device)  # loss * images, correct
    if before:  # resumed inside the epoch: the sums its stop saved (one copy to the device)
        sums = torch.tensor(rank_sums(before, ctx), dtype=torch.float64, device=ctx.device)
    seen, seconds = int(before.get("images", 0)), float(before.get("seconds", 0.0))
    totals, lr = [0.0, 0.0], plan.lr_at(progress.iteration)
    bar = tqdm(total=steps, initial=start, desc=f"epoch {progress.epoch + 1}/{plan.epochs}", unit="it", leave=False,
               dynamic_ncols=True, disable=not (run.settings.show_progress and ctx.main), file=sys.stderr)
    stopping = False
    for i, (x, y) in zip(range(start, steps), loader.batches(start)):
        x, y, lr = ctx.shard(x), ctx.shard(y), plan.lr_at(progress.iteration)
        loss, correct = train_step(model, optimizer, x, y, lr, ctx)
        if progress.iteration < run.settings.trace_steps:  # opt-in: a sync, every rank joins the reduction
            run.trace_step(ctx.reduced(loss).item() / ctx.world, lr)
        progress.iteration += 1
        seen += len(y) * ctx.world
        sums += torch.stack([loss.double() * len(y), correct.double()])
        stopping = ctx.world == 1 and stop.requested
        if (i + 1) % CHECK_EVERY == 0 or i + 1 == steps:
            totals, stopping = ctx.host_totals(sums, stop.requested)
            run.check_loss(totals[0] / seen, lr)
            bar.set_postfix(loss=f"{totals[0] / seen:.4f}", acc=f"{totals[1] / seen:.3f}", lr=f"{lr:.3g}")
            bar.update((i + 1) - bar.n)
        if stopping:
            bar.close()
            progress.stop_at(i + 1, {"sums": ctx.gathered(sums), "images": seen,
                                     "seconds": seconds + time.perf_counter() - t0})
            return None
    bar.close()
    if start == steps:  # resumed after the epoch's last step: its totals are the saved ones
        totals, _ = ctx.host_totals(sums)
    return EpochLog(totals[0] / max(seen, 1), totals[1] / max(seen, 1), seen, seconds + time.perf_counter() - t0, lr)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Loader, ctx: Context, pad_to: int | None = None) -> tuple[float, float]:
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


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if os.environ.get("RANK", "0") == "0":  # the process that writes (or launches the ones that do)
        check_run_folder(args)
    if args.nproc != 1 and "WORLD_SIZE" not in os.environ:
        return launch(args.nproc, args.device, sys.argv[1:] if argv is None else list(argv))
    settings, data = resolve_run(args, FRAMEWORK, datasets.load_prepared)
    with StopRequest() as stop:  # SIGTERM: finish the step, checkpoint, exit 143; again, or SIGINT: at once
        try:
            return train(settings, data, stop)
        except StopNow as e:  # before the run folder was open
            return e.said("before training started; nothing was written", say=os.environ.get("RANK", "0") == "0")


def train(settings: RunSettings, data: Any, stop: StopRequest) -> int:
    """One training process: the whole run, or its rank's part of a DDP run; 143 when a SIGTERM stopped it."""
    ctx, threads = set_up(settings)
    plan, spec = settings.plan, settings.spec
    torch.manual_seed(settings.seed)
    model = build_model(spec)
    if (init := initial_weights(settings)) is not None:
        set_weights(model, spec, init)
    model = model.to(ctx.device)
    if ctx.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_sgd(model, plan.lr, plan.momentum, weight_decay=plan.weight_decay, nesterov=plan.nesterov,
                         fused=True if ctx.device.type == "cuda" else None)  # one kernel; GradScaler skips its sync
    checkpoint = settings.run_dir / runs.CHECKPOINTS[FRAMEWORK]
    progress = (load_checkpoint(checkpoint, model, optimizer, ctx.scaler, ctx.device) if settings.resumed
                else Progress())
    run = RunFolder.start(settings, progress, owner=ctx.main, manifest=data.manifest, device=ctx.describe(),
                          threads=threads)
    net, eval_net, pad = place(model, settings, ctx)
    batches = {"device": ctx.device, "channels_last": ctx.channels_last}
    train_loader = Loader(data, "train", plan.batch_size, train=settings.augment, seed=settings.seed, **batches)
    val_loader = Loader(data, "val", plan.batch_size, train=False, **batches)
    run.announce(f"{FRAMEWORK}, {ctx.device}{f' x{ctx.world}' if ctx.world > 1 else ''}")

    def save() -> None:  # the resume checkpoint: written by the first rank, the last file of its block
        if run.owner:
            save_checkpoint(run.checkpoint_path, model, optimizer, ctx.scaler, run.progress, ctx.device)

    with run, contextlib.closing(ctx):
        try:
            while run.progress.epoch < plan.epochs:
                log = train_one_epoch(net, optimizer, train_loader, run, ctx, stop)
                if log is None:  # SIGTERM: the position inside the epoch becomes the checkpoint
                    with run.saving():
                        save()
                    ctx.barrier()
                    return run.stopped(stop.signal)
                t0 = time.perf_counter()
                val_loss, val_acc = evaluate(eval_net, val_loader, ctx, pad)
                with run.saving():  # the epoch's row, weights and checkpoint land together, or none of them
                    run.record_epoch(log, val_loss, val_acc, seconds=log.seconds + time.perf_counter() - t0,
                                     weights=get_weights(model, spec))
                    if run.checkpoint_due():
                        save()
                ctx.barrier()
            if run.owner:  # the test split, once, with the best weights
                set_weights(model, spec, run.best_weights())
                run.finish(*evaluate(model, Loader(data, "test", plan.batch_size, train=False, **batches), ctx))
        except StopNow as e:
            return run.stopped_at_once(e)
    return 0


if __name__ == "__main__":
    sys.exit(errors.run(main))
