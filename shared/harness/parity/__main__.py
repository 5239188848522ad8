"""``python -m shared.harness.parity --model resnet50 [--direction both] [--size 64] [--batch 2]``:
a parity report for one model (``artifacts/parity/<model>.md`` and ``.json``); exit 1 on a failure (docs/harness.md).
"""

from __future__ import annotations

import argparse
import sys

from shared import errors
from shared.harness.parity.report import eval_line, render_markdown, train_line
from shared.harness.parity.run import DIRECTIONS, IMAGENET_PARITY_SIZE, Case, run_parity_cases
from shared.harness.parity.step import StepConfig
from shared.io import atomic_write_json, atomic_write_text, check_writable
from shared.spec import SHORTCUTS, get_spec


def _parser() -> argparse.ArgumentParser:
    p = errors.ArgumentParser(prog="python -m shared.harness.parity",
                                description="Numerical parity between the PyTorch and the Keras ResNet.")
    p.add_argument("--model", default="resnet20", help="registry name (resnet20, resnet50, plain34, ...)")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--shortcut", choices=SHORTCUTS, default=None)
    p.add_argument("--direction", choices=(*DIRECTIONS, "both"), default="both")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=None,
                   help=f"input size (default: the spec's for CIFAR models, {IMAGENET_PARITY_SIZE} for ImageNet)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-train-step", action="store_true", help="only the eval-mode comparison")
    p.add_argument("--out-dir", default="artifacts/parity", help="where <model>.md and <model>.json go")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        spec = get_spec(args.model, num_classes=args.num_classes, shortcut=args.shortcut)
    except ValueError as e:
        raise errors.UserError(str(e)) from None
    if args.batch < 2:
        raise errors.UserError(f"--batch must be >= 2 (BN needs a batch variance); got {args.batch}")
    out = check_writable(args.out_dir, folder=True, what="the parity report folder")
    directions = list(DIRECTIONS) if args.direction == "both" else [args.direction]
    step = None if args.no_train_step else StepConfig()
    results = run_parity_cases([Case(spec, d) for d in directions], batch=args.batch, size=args.size,
                               seed=args.seed, train_step=step)
    for r in results:
        print(eval_line(r))
        if "train" in r:
            print(train_line(r))
    atomic_write_text(out / f"{spec.name}.md", f"# Parity: {spec.name}\n\n{render_markdown(results)}")
    atomic_write_json(out / f"{spec.name}.json", results)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(errors.run(main))
