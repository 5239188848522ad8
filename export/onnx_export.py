"""``make export``: write an ``.onnx`` file from a run (or random weights) in either framework.

    python -m export.onnx_export --run runs/synthetic/resnet20/torch-... [--framework keras] [--out DIR|FILE]
    python -m export.onnx_export --model resnet50 --framework keras [--seed 0] [--out DIR|FILE]

The export itself runs in a subprocess of the chosen framework (``python -m pytorch_impl.export onnx``
or ``python -m keras_impl.export onnx``): torch's exporter crashes in a process that has imported
tensorflow, so this driver imports neither. Weights are canonical, so a torch-trained run exports
through Keras too. Where the file goes: ``<run>/model.onnx`` in the run's own framework,
``<run>/model-<framework>.onnx`` in the other one, ``artifacts/export/<model>-<framework>.onnx`` for
random weights; ``--out`` names the file (``*.onnx``) or the folder. ``--opset`` picks the ONNX
opset (default 18 in both frameworks; ``shared/onnx_meta.py`` says why), recorded in the file's
metadata. Afterwards the file is opened with ONNX Runtime and run at batch sizes 1 and 5 (the batch
dimension is symbolic).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from shared import process
from shared.onnx_meta import DEFAULT_OPSET, check_framework, check_opset, resolve_source
from shared.process import FRAMEWORKS


def framework_cli(framework: str, *args: object, timeout: float | None = None) -> str:
    """Run ``python -m <framework package>.export args...`` in its own process; its stdout.

    A failure raises :class:`shared.process.ChildError` with the child's one-line error.
    """
    return process.call(check_framework(framework), "export", *args, timeout=timeout)


def source_args(run: str | None, model: str | None, num_classes: int | None = None,
                shortcut: str | None = None, input_size: int | None = None, seed: int = 0) -> list[str]:
    """The flags that select the same model in either framework's CLI."""
    args = ["--run", str(run)] if run else ["--model", str(model)]
    for flag, value in (("--num-classes", num_classes), ("--shortcut", shortcut), ("--input-size", input_size)):
        if value is not None:
            args += [flag, str(value)]
    return args + ["--seed", str(seed)]


def export(framework: str, run: str | None = None, model: str | None = None, out: str | None = None,
           opset: int = DEFAULT_OPSET, **overrides) -> Path:
    """Export in ``framework``'s subprocess at ``opset``; the written file's path."""
    stdout = framework_cli(framework, "onnx", *source_args(run, model, **overrides), *(["--out", out] if out else []),
                           "--opset", str(check_opset(opset)))
    return Path(stdout.strip().splitlines()[-1])


def smoke_test(path: Path) -> list[tuple[int, tuple[int, ...]]]:
    """Run the file in ONNX Runtime at batch sizes 1 and 5; the output shapes."""
    from export.infer import load

    model = load(path)
    shapes = []
    for batch in (1, 5):
        x = np.random.default_rng(batch).standard_normal((batch, *model.input_shape)).astype(np.float32)
        shapes.append((batch, model.logits(x).shape))
    return shapes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.onnx_export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="run folder or .safetensors checkpoint")
    p.add_argument("--model", help="registry model name (random weights) when no --run is given")
    p.add_argument("--framework", help=f"exporter: {' or '.join(FRAMEWORKS)} (default: the run's, else torch)")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--shortcut")
    p.add_argument("--input-size", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output .onnx file, or folder")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    args = p.parse_args(argv)
    if not args.run and not args.model:
        p.error("give --run RUN_FOLDER_OR_CHECKPOINT or --model NAME")
    try:
        source = resolve_source(args.run, model=args.model, num_classes=args.num_classes,
                                shortcut=args.shortcut, input_size=args.input_size, seed=args.seed)
        framework = check_framework(args.framework or source.framework or "torch")
        check_opset(args.opset)
        path = export(framework, args.run, args.model, args.out, args.opset, num_classes=args.num_classes,
                      shortcut=args.shortcut, input_size=args.input_size, seed=args.seed)
        shapes = smoke_test(path)
    except (FileNotFoundError, ValueError, process.ChildError) as e:
        raise SystemExit(f"error: {e}") from None
    size_mb = path.stat().st_size / 2**20
    runs = ", ".join(f"batch {b} -> {list(s)}" for b, s in shapes)
    print(f"wrote {path} ({source.spec.name}, {framework} exporter, opset {args.opset}, {size_mb:.1f} MiB); "
          "onnx.checker ok; "
          f"onnxruntime: {runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
