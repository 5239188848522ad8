"""``make export``: a run (or random weights) in a deployment format, from either framework (docs/export.md).

    python -m export.onnx_export --run runs/synthetic/resnet20/torch-... [--framework keras] [--format onnx]
                                 [--out DIR|FILE] [--opset 18]
    python -m export.onnx_export --model resnet50 --framework keras [--seed 0] [--out DIR|FILE]

The export runs in a subprocess of the chosen framework; this driver imports neither.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from shared import errors, process
from shared.backends import keras_backend
from shared.export_meta import (
    DEFAULT_OPSET,
    FORMATS,
    check_format,
    check_framework,
    check_opset,
    check_route,
    read_metadata,
)
from shared.export_source import default_export_path, resolve_source
from shared.io import check_writable
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


def export_format(framework: str, fmt: str, path: Path, run: str | None = None, model: str | None = None,
                  opset: int = DEFAULT_OPSET, **overrides) -> Path:
    """Export to ``path`` in ``fmt`` in ``framework``'s subprocess; the written path (a one-line error otherwise)."""
    target = f"{fmt}:{opset}={path}" if fmt == "onnx" else f"{fmt}={path}"
    stdout = framework_cli(framework, "export", *source_args(run, model, **overrides), "--to", target)
    result = json.loads(stdout.strip().splitlines()[-1])
    if "error" in result:
        raise process.ChildError(f"{framework} could not write {fmt}: {result['error']}")
    return Path(result["path"])


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
    p = errors.ArgumentParser(prog="python -m export.onnx_export", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="run folder or .safetensors checkpoint")
    p.add_argument("--model", help="registry model name (random weights) when no --run is given")
    p.add_argument("--framework", help=f"exporter: {' or '.join(FRAMEWORKS)} (default: the run's, else torch)")
    p.add_argument("--format", default="onnx", help=f"{', '.join(FORMATS)} (default onnx)")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--shortcut")
    p.add_argument("--input-size", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output file (with the format's suffix), or folder")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    args = p.parse_args(argv)
    if not args.run and not args.model:
        raise errors.UserError("give --run RUN_FOLDER_OR_CHECKPOINT or --model NAME")
    overrides = {"num_classes": args.num_classes, "shortcut": args.shortcut, "input_size": args.input_size,
                 "seed": args.seed}
    try:
        fmt = check_format(args.format).name
        source = resolve_source(args.run, model=args.model, **overrides)
        framework = check_framework(args.framework or source.framework or "torch")
        backend = keras_backend() if framework == "keras" else None
        check_route(fmt, framework, backend)
        check_opset(args.opset)
        path = check_writable(default_export_path(source, framework, fmt, args.out), folder=FORMATS[fmt].folder,
                              what=f"{fmt} export")
        if fmt == "onnx":
            path = export(framework, args.run, args.model, str(path), args.opset, **overrides)
            shapes = smoke_test(path)
        else:
            path = export_format(framework, fmt, path, args.run, args.model, args.opset, **overrides)
            read_metadata(path)  # the metadata travelled with the file
    except (FileNotFoundError, ValueError, process.ChildError) as e:
        raise errors.UserError(str(e)) from None
    size_mb = sum(f.stat().st_size for f in ([path, path.with_suffix(".bin")] if fmt == "openvino" else
                  path.rglob("*") if path.is_dir() else [path]) if f.is_file()) / 2**20
    who = f"{framework} exporter" + (f" on the Keras {backend} backend" if backend else "")
    if fmt == "onnx":
        runs = ", ".join(f"batch {b} -> {list(s)}" for b, s in shapes)
        print(f"wrote {path} ({source.spec.name}, {who}, opset {args.opset}, {size_mb:.1f} MiB); onnx.checker ok; "
              f"onnxruntime: {runs}")
        from export.runtimes import opset_advice

        for line in opset_advice(args.opset):
            print(f"note: {line}", file=sys.stderr)
    else:
        print(f"wrote {path} ({source.spec.name}, {fmt}, {who}, {size_mb:.1f} MiB; metadata {FORMATS[fmt].metadata})")
    return 0


if __name__ == "__main__":
    sys.exit(errors.run(main))
