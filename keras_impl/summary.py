"""Summaries of a Keras ResNet: ``model.summary()``, or the project's JSON contract (--json; docs/models.md).

    python -m keras_impl.summary --model resnet34 [--num-classes 2] [--shortcut B] [--json]
"""

from __future__ import annotations

import sys
from typing import Any

import keras
import numpy as np

from keras_impl.blocks import BLOCK_NAMES
from keras_impl.resnet import build_model
from shared import errors
from shared.cli import summary_main
from shared.harness.summary import make_summary
from shared.names import canonical_layers
from shared.spec import ModelSpec


def _count(variables) -> int:
    return int(sum(np.prod(v.shape) for v in variables))


def summarize(model: keras.Model, spec: ModelSpec) -> dict[str, Any]:
    """Read every canonical layer's output shape from the functional graph at the spec's input size."""
    size = spec.input_size
    input_shape = [1, size, size, spec.in_channels]
    # Rebuild at a fixed input size so the graph carries concrete spatial shapes.
    fixed = build_model(spec, input_shape=tuple(input_shape[1:]))
    rows = []
    for layer in canonical_layers(spec):
        try:
            k = fixed.get_layer(layer.keras_name)
        except ValueError as e:
            raise KeyError(f"{spec.name}: the Keras model has no layer named {layer.keras_name!r}") from e
        kind = type(k).__name__
        trainable, stats = k.trainable_weights, k.non_trainable_weights
        if layer.kind == "block":
            # The block is a function, not a layer: its row is its output ReLU, and its parameters
            # are those of every layer named under the block's name.
            kind = BLOCK_NAMES[spec.block]
            prefix = layer.keras_name + "_"
            inside = [layer_ for layer_ in fixed.layers if layer_.name.startswith(prefix)]
            trainable = [w for layer_ in inside for w in layer_.trainable_weights]
            stats = [w for layer_ in inside for w in layer_.non_trainable_weights]
        rows.append({
            "name": layer.name,
            "type": kind,
            "output_shape": list(k.output.shape[1:]),
            "params": _count(trainable),
            "non_trainable": _count(stats),
        })
    return make_summary("keras", spec, rows, _count(model.trainable_weights),
                        _count(model.non_trainable_weights), input_shape)


def print_table(model: keras.Model, summary: dict[str, Any]) -> None:
    """Keras' own ``model.summary()``."""
    model.summary(line_length=110)


def main(argv: list[str] | None = None) -> int:
    return summary_main(
        "python -m keras_impl.summary", argv, summarize=summarize, print_table=print_table,
        build_model=lambda spec: build_model(spec, input_shape=(spec.input_size, spec.input_size, spec.in_channels)),
    )


if __name__ == "__main__":
    sys.exit(errors.run(main))
