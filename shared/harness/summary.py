"""The summary contract both frameworks print with ``--json`` and the harness compares: one JSON object with a row per
canonical layer in forward order (its keys: docs/models.md, "Summaries").
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from shared import errors
from shared.process import FRAMEWORKS
from shared.spec import SHORTCUTS, ModelSpec, get_spec

LAYOUTS = {"torch": "NCHW", "keras": "NHWC"}
REQUIRED = ("model", "framework", "layout", "input_shape", "spec", "trainable", "non_trainable", "layers")


def make_summary(
    framework: str, spec: ModelSpec, rows: list[dict[str, Any]], trainable: int, non_trainable: int,
    input_shape: list[int],
) -> dict[str, Any]:
    if framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r}; valid choices: {', '.join(FRAMEWORKS)}")
    return {
        "model": spec.name,
        "framework": framework,
        "layout": LAYOUTS[framework],
        "input_shape": list(input_shape),
        "spec": spec.to_dict(),
        "trainable": int(trainable),
        "non_trainable": int(non_trainable),
        "layers": rows,
    }


def canonical_shape(shape: list[int], layout: str) -> list[int]:
    """A per-sample shape in (C, H, W) order with trailing 1x1 spatial dims dropped.

    torch's AdaptiveAvgPool2d keeps (C, 1, 1) where Keras' GlobalAveragePooling2D gives (C,):
    the same tensor, so both compare as (C,).
    """
    shape = list(shape)
    if layout == "NHWC" and len(shape) == 3:
        h, w, c = shape
        shape = [c, h, w]
    if len(shape) == 3 and shape[1:] == [1, 1]:
        shape = shape[:1]
    return shape


def validate_summary(summary: dict[str, Any]) -> None:
    missing = [k for k in REQUIRED if k not in summary]
    if missing:
        raise ValueError(f"summary lacks {missing}; a summary needs {list(REQUIRED)}")
    for row in summary["layers"]:
        if not {"name", "type", "output_shape", "params", "non_trainable"} <= set(row):
            raise ValueError(f"summary row {row} lacks one of name, type, output_shape, params, non_trainable")


def summary_arg_parser(prog: str) -> argparse.ArgumentParser:
    """The CLI both ``pytorch_impl.summary`` and ``keras_impl.summary`` accept."""
    p = errors.ArgumentParser(prog=prog, description="Summarize a registry model.")
    p.add_argument("--model", default="resnet20", help="registry name (resnet20, plain34, resnet50, ...)")
    p.add_argument("--num-classes", type=int, default=None, help="override the class count")
    p.add_argument("--shortcut", choices=SHORTCUTS, default=None, help="override the shortcut option")
    p.add_argument("--json", action="store_true", help="print the machine-readable summary")
    p.add_argument("--out", default=None, help="also write the JSON summary to this file")
    return p


def spec_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> ModelSpec:
    """The spec the arguments name; a bad name or value exits with status 2 and a clear message."""
    try:
        return get_spec(args.model, num_classes=args.num_classes, shortcut=args.shortcut)
    except ValueError as e:
        raise errors.UserError(str(e)) from None


def dump(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=1)
