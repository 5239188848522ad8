"""The command line both ``python -m pytorch_impl.export`` and ``python -m keras_impl.export`` run: load a model,
write it in one or several deployment formats, or predict with it (docs/export.md). Imports neither torch nor
tensorflow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shared.export_meta import DEFAULT_OPSET, build_metadata, check_format, check_opset, check_route
from shared.export_source import default_onnx_path, resolve_source


def parse_target(text: str) -> tuple[str, int, Path]:
    """``FORMAT[:OPSET]=PATH`` (the framework CLIs' ``--to``) -> (format, opset, path)."""
    spec, sep, path = text.partition("=")
    name, _, opset = spec.partition(":")
    if not sep or not path:
        raise ValueError(f"--to takes FORMAT[:OPSET]=PATH; got {text!r}")
    check_format(name)
    return name, check_opset(int(opset)) if opset else DEFAULT_OPSET, Path(path)


def export_cli(framework: str, impl: Any, argv: list[str] | None = None) -> int:
    """The command line both ``pytorch_impl.export`` and ``keras_impl.export`` run; ``impl`` is the framework's
    export module (``load_model``, ``export_onnx``, ``export_format``, ``predict``, ``exporter_version``).

    ``onnx`` writes one ONNX file (its path on stdout); ``export --to FORMAT[:OPSET]=PATH ...`` writes several
    formats from one loaded model, in the order given, and prints one JSON line per target (``path`` or the
    one-line ``error``: one target failing does not stop the others); ``predict`` writes the logits of a batch.
    User errors exit 2 with one ``error:`` line."""
    import numpy as np

    from shared.errors import ArgumentParser, UserError
    from shared.io import atomic_save_npy

    spec = getattr(impl, "__spec__", None)
    prog = f"python -m {spec.name if spec else impl.__name__}"
    p = ArgumentParser(prog=prog, description=impl.__doc__)
    p.add_argument("command", choices=("onnx", "export", "predict"))
    p.add_argument("--run", help="run folder or .safetensors checkpoint (default: random weights)")
    p.add_argument("--model", help="registry model name (random weights; needs no --run)")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--shortcut")
    p.add_argument("--input-size", type=int, help="override the input side (pixels)")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights")
    p.add_argument("--out", help="onnx: output .onnx file or folder")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"onnx: ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--to", action="append", default=[], help="export: FORMAT[:OPSET]=PATH (repeatable)")
    p.add_argument("--inputs", help="predict: .npy of normalized NHWC float32 images")
    p.add_argument("--logits", help="predict: output .npy of logits")
    args = p.parse_args(argv)
    backend = impl.BACKEND.name if framework == "keras" else None  # the Keras backend that writes the files
    try:
        targets = [parse_target(t) for t in args.to]
        if args.command == "export" and not targets:
            raise ValueError("export needs at least one --to FORMAT[:OPSET]=PATH")
        for name, _, _ in targets:
            check_route(name, framework, backend)
        source = resolve_source(args.run, model=args.model, num_classes=args.num_classes,
                                shortcut=args.shortcut, input_size=args.input_size, seed=args.seed)
        model = impl.load_model(source)
        if args.command == "onnx":
            check_opset(args.opset)
            path = default_onnx_path(source, framework, args.out)
            metadata = build_metadata(source, framework, impl.exporter_version(args.opset), args.opset,
                                      backend=backend)
            impl.export_onnx(model, source.spec, path, metadata, opset=args.opset)
            print(path)
        elif args.command == "export":
            for name, opset, path in targets:
                metadata = build_metadata(source, framework, impl.exporter_version(opset, name), opset, name, backend)
                try:
                    done = impl.export_format(model, source.spec, name, path, metadata, opset)
                    print(json.dumps({"format": name, "opset": opset if name == "onnx" else None,
                                      "path": str(done)}), flush=True)
                except Exception as e:  # noqa: BLE001 any exporter failure is this target's one-line reason
                    reason = " ".join(str(e).split())[:400] or type(e).__name__
                    print(json.dumps({"format": name, "opset": opset if name == "onnx" else None, "path": str(path),
                                      "error": f"{type(e).__name__}: {reason}"}), flush=True)
        else:
            if not args.inputs or not args.logits:
                raise ValueError("predict needs --inputs X.npy and --logits OUT.npy")
            atomic_save_npy(args.logits, impl.predict(model, np.load(args.inputs)))
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    return 0
