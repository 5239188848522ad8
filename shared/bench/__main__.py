"""``python -m shared.bench``: the benchmark's command line (``make bench``; docs/bench.md).

    python -m shared.bench --model resnet20 [--batch-size 128] [--device cpu|cuda] [--iters 3] [--repeats 5]
                           [--frameworks torch,keras-tensorflow,keras-jax,keras-torch,onnxruntime]
                           [--variants torch:compile,keras-jax] [--loop-epochs 3] [--out results/bench]

Writes ``<out>/bench-<model>-<device>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shared import errors
from shared.bench.catalog import VARIANTS, default_selection, merge, parse_frameworks, parse_variants
from shared.bench.report import markdown_table, write_report
from shared.bench.run import BenchConfig, resolve_device, run_bench
from shared.bench.timing import DEFAULTS, MIN_TIME, TimingPlan, is_measured
from shared.bench.workers import METRICS
from shared.io import check_writable
from shared.spec import get_spec

_ALL = "; ".join(f"{k}: {', '.join(v)}" for k, v in VARIANTS.items())
LOOP_EPOCHS = 3


def get_args_parser() -> argparse.ArgumentParser:
    p = errors.ArgumentParser(prog="python -m shared.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet20", help="registry name, e.g. resnet20, resnet50")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available, else cpu)")
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    p.add_argument("--iters", type=int, default=DEFAULTS["iters"], help="batches per timed block")
    p.add_argument("--repeats", type=int, default=DEFAULTS["repeats"], help="timed blocks per figure")
    p.add_argument("--warmup", type=int, default=DEFAULTS["warmup"], help="untimed calls before timing")
    p.add_argument("--latency-iters", type=int, default=DEFAULTS["latency_iters"],
                   help="batch-1 calls per timed block")
    p.add_argument("--min-time", type=float, default=MIN_TIME,
                   help="seconds a timed throughput block lasts at least (more steps than --iters if needed; 0: off)")
    p.add_argument("--frameworks", default=None,
                   help="comma-separated labels, each with the step its training loop runs (onnxruntime: both "
                        "exports), e.g. torch,keras-tensorflow,keras-jax,keras-torch; keras = keras-$KERAS_BACKEND")
    p.add_argument("--variants", default=None,
                   help=f"comma-separated label or label:variant, e.g. torch,keras-jax:eager (default, with no "
                        f"--frameworks either: all of {_ALL}; Keras backends that are not installed left out)")
    p.add_argument("--loop-epochs", type=int, default=LOOP_EPOCHS,
                   help="epochs of each real training loop on the synthetic set (0: no loops)")
    p.add_argument("--no-profile", action="store_true", help="do not profile the loops that miss a target")
    p.add_argument("--data-dir", default="data", help="where the training loops find/cache the synthetic set")
    p.add_argument("--out", default="results/bench", help="folder for bench-<model>-<device>.md/.json")
    p.add_argument("--timeout", type=float, default=None, help="seconds allowed per framework process")
    return p


def main(argv: list[str] | None = None) -> int:
    p = get_args_parser()
    args = p.parse_args(argv)
    check_writable(args.out, folder=True, what="the bench report folder")
    try:
        get_spec(args.model)
        settings = TimingPlan(args.batch_size, args.iters, args.repeats, args.warmup, args.latency_iters, args.min_time)
        if args.frameworks is None and args.variants is None:
            variants = default_selection()
        else:
            variants = merge(parse_frameworks(args.frameworks) if args.frameworks else {},
                             parse_variants(args.variants) if args.variants else {})
        if args.loop_epochs != 0 and args.loop_epochs < 2:
            raise ValueError(f"--loop-epochs must be 0 (no loops) or >= 2 (the first epoch is not timed); "
                             f"got {args.loop_epochs}")
        device, _ = resolve_device(args.device)
    except ValueError as e:
        raise errors.UserError(str(e)) from None
    cfg = BenchConfig(args.model, device, settings, variants, Path(args.out), args.timeout,
                      loop_epochs=args.loop_epochs, data_dir=args.data_dir, profile=not args.no_profile)
    print(f"bench {args.model} on {device}: batch {settings.batch_size}, {settings.iters} iters (or >= "
          f"{settings.min_time:g} s) x {settings.repeats} repeats; {', '.join(variants)}", file=sys.stderr, flush=True)
    report = run_bench(cfg)
    md, js = write_report(report, cfg.out)
    print(markdown_table(report))
    print(f"\nwrote {md} and {js}")
    measured = any(is_measured(r.get(m)) for r in report["rows"] for m in METRICS)
    return 0 if measured else 1


if __name__ == "__main__":
    sys.exit(errors.run(main))
