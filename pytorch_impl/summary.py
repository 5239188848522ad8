"""Summaries of a PyTorch ResNet: torchinfo's table, or the project's JSON contract (--json; docs/models.md).

    python -m pytorch_impl.summary --model resnet34 [--num-classes 2] [--shortcut B] [--json]
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from pytorch_impl.resnet import build_model
from shared import errors
from shared.cli import summary_main
from shared.harness.summary import make_summary
from shared.names import canonical_layers
from shared.spec import ModelSpec

_BN_STATS = ("running_mean", "running_var")  # num_batches_tracked is bookkeeping, not a statistic


def summarize(model: torch.nn.Module, spec: ModelSpec) -> dict[str, Any]:
    """Run one forward pass with hooks on every canonical layer and collect the rows."""
    modules = dict(model.named_modules())
    rows, shapes, handles = [], {}, []
    for layer in canonical_layers(spec):
        if layer.name not in modules:
            raise KeyError(f"{spec.name}: the PyTorch model has no module named {layer.name!r}")

        def hook(_m, _inp, out, name=layer.name):
            shapes[name] = list(out.shape[1:])

        handles.append(modules[layer.name].register_forward_hook(hook))
    input_shape = [1, spec.in_channels, spec.input_size, spec.input_size]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for layer in canonical_layers(spec):
        m = modules[layer.name]
        recurse = layer.kind == "block"  # a block row totals everything inside the block
        stats = [b for n, b in m.named_buffers(recurse=recurse) if n.endswith(_BN_STATS)]
        rows.append({
            "name": layer.name,
            "type": type(m).__name__,
            "output_shape": shapes[layer.name],
            "params": sum(p.numel() for p in m.parameters(recurse=recurse)),
            "non_trainable": sum(b.numel() for b in stats),
        })
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    stats = sum(b.numel() for n, b in model.named_buffers() if n.endswith(_BN_STATS))
    return make_summary("torch", spec, rows, trainable, stats, input_shape)


def print_table(model: torch.nn.Module, summary: dict[str, Any]) -> None:
    """torchinfo's table (module paths, output sizes, parameters) and the BN statistics it does not count."""
    try:
        import torchinfo
    except ImportError:
        raise errors.UserError("the summary table needs the torchinfo package, which is not installed "
                         "(pip install torchinfo); --json prints the project's summary without it") from None
    print(torchinfo.summary(
        model, input_size=tuple(summary["input_shape"]), depth=3, verbose=0,
        col_names=("output_size", "num_params"), row_settings=("var_names",),
    ))
    print(f"BN running statistics (non-trainable): {summary['non_trainable']:,}")


def main(argv: list[str] | None = None) -> int:
    return summary_main("python -m pytorch_impl.summary", argv, build_model=build_model, summarize=summarize,
                        print_table=print_table)


if __name__ == "__main__":
    sys.exit(errors.run(main))
