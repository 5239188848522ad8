"""``python -m shared.bench.gpu``: every training path of a GPU machine, measured in order of value within a time
budget, into ``<out>/gpu-<device>.md`` and ``.json`` (``make gpu-report``; docs/gpu.md).

    python -m shared.bench.gpu [--budget 360] [--out results/bench] [--device cpu|cuda] [--data-dir data]
                               [--models resnet20,resnet56,...] [--variants eager,amp_channels_last,amp_compile]
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared import errors, process
from shared.backends import BACKENDS
from shared.bench import device as devices
from shared.bench.catalog import VARIANTS
from shared.bench.gpu_plan import Budget, GpuConfig, bench_config, build_plan, run_plan
from shared.bench.gpu_report import derive, targets, write_report
from shared.data import SYNTHETIC_DATASETS
from shared.io import check_writable
from shared.machine import git_commit, machine_info
from shared.spec import get_spec

DEFAULT_BUDGET_S = 360.0
# Asks PyTorch, in its own process, which device it sees and what it is (pytorch_impl.bench.framework_info).
PROBE = ("import json, torch; from pytorch_impl.bench import framework_info; "
         "print(json.dumps(framework_info('cuda' if torch.cuda.is_available() else 'cpu')))")


def _names(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def get_args_parser() -> errors.ArgumentParser:
    d = GpuConfig(device="cpu", budget_s=DEFAULT_BUDGET_S)
    p = errors.ArgumentParser(prog="python -m shared.bench.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                   help="seconds the whole command may take; what does not fit is reported as not run")
    p.add_argument("--out", default="results/bench", help="folder for gpu-<device>.md/.json")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when PyTorch sees one, else cpu)")
    p.add_argument("--data-dir", default=d.data_dir, help="where the loops' synthetic set is prepared")
    p.add_argument("--dataset", default=d.dataset, help=f"the loops' dataset: {', '.join(SYNTHETIC_DATASETS)}")
    p.add_argument("--models", default=",".join(d.models), help="CIFAR models, the first one measured first")
    p.add_argument("--variants", default=",".join(d.variants), help="torch variants (shared.bench.catalog)")
    p.add_argument("--keras-backends", default=",".join(d.keras_backends), help="Keras backends ('' for none)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="batch of the CIFAR models' rows")
    p.add_argument("--imagenet-batch-size", type=int, default=d.imagenet_batch_size, help="batch of resnet50's rows")
    p.add_argument("--loop-epochs", type=int, default=d.loop_epochs, help="epochs of each real loop (>= 2)")
    p.add_argument("--iters", type=int, default=d.iters, help="steps per timed block, at least")
    p.add_argument("--repeats", type=int, default=d.repeats, help="timed blocks per figure")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed calls before timing")
    p.add_argument("--min-time", type=float, default=d.min_time, help="seconds a timed block lasts at least")
    p.add_argument("--sync-steps", type=int, default=d.sync_steps, help="steps of each host-sync count")
    return p


def config_from_args(args: Any, device: str) -> GpuConfig:
    """The run's :class:`GpuConfig`; a bad value is a :class:`errors.UserError` naming it and the choices."""
    gc = GpuConfig(device=device, budget_s=args.budget, data_dir=args.data_dir, dataset=args.dataset,
                   batch_size=args.batch_size, imagenet_batch_size=args.imagenet_batch_size,
                   models=_names(args.models), variants=_names(args.variants),
                   keras_backends=_names(args.keras_backends), loop_epochs=args.loop_epochs, iters=args.iters,
                   repeats=args.repeats, warmup=args.warmup, min_time=args.min_time, sync_steps=args.sync_steps)
    if not gc.budget_s > 0:
        raise errors.UserError(f"--budget must be seconds > 0; got {args.budget}")
    if args.device not in (None, "cpu", "cuda"):
        raise errors.UserError(f"unknown device {args.device!r}; valid choices: cpu, cuda")
    if gc.dataset not in SYNTHETIC_DATASETS:
        raise errors.UserError(f"unknown --dataset {gc.dataset!r}; valid choices: {', '.join(SYNTHETIC_DATASETS)}")
    if not gc.models or not gc.variants:
        raise errors.UserError("--models and --variants need at least one name each")
    for v in gc.variants:
        if v not in VARIANTS["torch"]:
            raise errors.UserError(f"unknown torch variant {v!r}; valid choices: {', '.join(VARIANTS['torch'])}")
    for b in gc.keras_backends:
        if b not in BACKENDS:
            raise errors.UserError(f"unknown Keras backend {b!r}; valid choices: {', '.join(BACKENDS)}")
    if gc.loop_epochs < 2:
        raise errors.UserError(f"--loop-epochs must be >= 2 (the first epoch is not timed); got {gc.loop_epochs}")
    if gc.sync_steps <= GpuConfig.sync_warmup:
        raise errors.UserError(f"--sync-steps must be more than the {GpuConfig.sync_warmup} warm-up steps; "
                               f"got {gc.sync_steps}")
    try:
        for model in (*gc.models, "resnet50"):
            get_spec(model)
        bench_config(gc, gc.models[0], gc.batch_size, 1.0)  # the timing settings' own checks
        bench_config(gc, "resnet50", gc.imagenet_batch_size, 1.0)
    except ValueError as e:
        raise errors.UserError(str(e)) from None
    return gc


def probe_device(requested: str | None) -> tuple[str, dict[str, Any]]:
    """``cpu``/``cuda`` (default: cuda when PyTorch sees it) and PyTorch's view of it, asked in its own process."""
    if requested not in (None, "cpu", "cuda"):
        raise errors.UserError(f"unknown device {requested!r}; valid choices: cpu, cuda")
    if requested == "cpu":
        return "cpu", {}
    done = process.run([sys.executable, "-c", PROBE], timeout=300, echo=False, capture_stdout=True,
                       env=process.child_env(keras=False))
    if not done.ok:
        if requested == "cuda":
            raise errors.UserError(f"cannot ask PyTorch for the CUDA device: {done.reason()}")
        return "cpu", {"probe_error": done.reason()}
    info = json.loads(done.stdout.strip().splitlines()[-1])
    if requested == "cuda" and info["device"] != "cuda":
        raise errors.UserError("device 'cuda' requested but PyTorch sees no CUDA device here "
                               "(torch.cuda.is_available() is False); valid choice on this machine: cpu")
    return info["device"], info


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    budget = Budget(args.budget)  # from the command's start: the device probe and the data count too
    gc = config_from_args(args, "cpu")  # checked before anything runs; the device is asked next
    out = check_writable(args.out, folder=True, what="the GPU report")
    started, commit = datetime.now(UTC), git_commit()
    device, torch_info = probe_device(args.device)
    gc = dataclasses.replace(gc, device=device)
    print(f"gpu-report on {device}: budget {gc.budget_s:.0f} s -> {out}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu-report-") as tmp:
        rows = run_plan(build_plan(gc, Path(tmp)), budget, device,
                        say=lambda line: print(line, file=sys.stderr, flush=True))
    derive(rows)
    machine = {**machine_info(), "git_commit": commit}
    report = {"kind": "gpu-report", "cpu": device == "cpu", "device": devices.describe(device, torch_info),
              "machine": machine, "budget_s": gc.budget_s, "wall_s": round(budget.elapsed(), 1),
              "started_utc": started.isoformat(timespec="seconds"),
              "settings": {k: v for k, v in dataclasses.asdict(gc).items() if k != "echo"},
              "rows": rows, "targets": targets(rows, device)}
    md, js = write_report(report, out)
    measured = sum(r["status"] == "measured" for r in rows)
    print(f"\n{measured} of {len(rows)} rows measured in {report['wall_s']:.0f} s; wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(errors.run(main))
