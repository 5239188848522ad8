"""The command lines that ``pytorch_impl`` and ``keras_impl`` share, written once: ``python -m <package>.convert``
and ``python -m <package>.summary`` (docs/models.md, "Summaries"; docs/harness.md, "Weight transfer").

Each framework's module passes in its own model functions, so the two command lines cannot drift. Imports no framework.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from shared import errors
from shared.harness.summary import dump, spec_from_args, summary_arg_parser
from shared.io import atomic_write_text, check_writable, load_weights
from shared.spec import ModelSpec

Arrays = dict[str, np.ndarray]


def convert_parser(prog: str, pretrained: bool) -> argparse.ArgumentParser:
    """The flags of ``python -m <package>.convert`` (the per-process half of ``python -m export.transfer``)."""
    p = errors.ArgumentParser(prog=prog)
    p.add_argument("action", choices=("export", "import"))
    p.add_argument("--spec", required=True, help="ModelSpec as JSON")
    p.add_argument("--src", default=None)
    p.add_argument("--random", type=int, default=None, help="seed: random weights and BN statistics")
    p.add_argument("--init", action="store_true", help="the model's own fresh initialization")
    p.add_argument("--pretrained", default=None,
                   help="torchvision weights tag, e.g. IMAGENET1K_V1" if pretrained else argparse.SUPPRESS)
    p.add_argument("--weights-file", default=None, help=None if pretrained else argparse.SUPPRESS)
    p.add_argument("--out", required=True)
    return p


def convert_main(
    prog: str,
    argv: list[str] | None,
    *,
    read_native: Callable[[str, ModelSpec], Arrays],
    write_native: Callable[..., Path],
    init_arrays: Callable[[ModelSpec], Arrays],
    random_arrays: Callable[[ModelSpec, int], Arrays],
    pretrained_arrays: Callable[[ModelSpec, str, str | None], Arrays] | None = None,
) -> int:
    """``import``: canonical safetensors -> a native file. ``export``: a source -> canonical safetensors.

    The source of an export is ``--pretrained TAG`` (only where ``pretrained_arrays`` is given),
    ``--random SEED``, ``--init`` or ``--src FILE`` (native or .safetensors), in that order.
    ``write_native(path, spec, arrays, source=...)`` picks the output format from the suffix.
    """
    args = convert_parser(prog, pretrained_arrays is not None).parse_args(argv)
    check_writable(args.out, what="the weight file")
    spec = ModelSpec.from_dict(json.loads(args.spec))
    try:
        if args.action == "import":
            write_native(args.out, spec, load_weights(args.src)[0], source=str(args.src))
            return 0
        if args.pretrained:
            if pretrained_arrays is None:
                raise ValueError("pretrained ImageNet weights come from torchvision: use --from torch --pretrained")
            arrays = pretrained_arrays(spec, args.pretrained, args.weights_file)
            source = f"torchvision:{args.pretrained}"
        elif args.random is not None:
            arrays, source = random_arrays(spec, args.random), f"random:{args.random}"
        elif args.init:
            arrays, source = init_arrays(spec), "init"
        else:
            arrays, source = read_native(args.src, spec), str(args.src)
        write_native(args.out, spec, arrays, source=source)
    except (ValueError, FileNotFoundError) as e:
        raise errors.UserError(str(e)) from None
    return 0


def summary_main(
    prog: str,
    argv: list[str] | None,
    *,
    build_model: Callable[[ModelSpec], Any],
    summarize: Callable[[Any, ModelSpec], dict[str, Any]],
    print_table: Callable[[Any, dict[str, Any]], None],
) -> int:
    """``python -m <package>.summary``: the framework's own table, or the project's JSON summary (--json)."""
    parser = summary_arg_parser(prog)
    args = parser.parse_args(argv)
    if args.out:
        check_writable(args.out, what="the summary file")
    spec = spec_from_args(args, parser)
    model = build_model(spec)
    summary = summarize(model, spec)
    if args.out:
        atomic_write_text(args.out, dump(summary))
    if args.json:
        print(dump(summary))
    else:
        print_table(model, summary)
    return 0
