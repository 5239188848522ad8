"""Exports of a PyTorch ResNet (ONNX through torch.onnx, ``.pt2`` through ``torch.export``) and native predictions.

``python -m pytorch_impl.export onnx|export|predict ...`` is what the drivers in ``export/`` run in a subprocess;
it never imports tensorflow (torch.export crashes where it is loaded). Without ``onnxscript`` the export falls
back to torch's TorchScript-based exporter, with a one-line note (docs/export.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from pytorch_impl.resnet import build_model
from pytorch_impl.weights import set_weights
from shared import errors
from shared.export_cli import export_cli
from shared.export_meta import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAME, PT2_METADATA, check_metadata
from shared.export_source import Source
from shared.io import atomic_write, load_weights
from shared.onnx_file import finalize_onnx
from shared.spec import ModelSpec

FRAMEWORK = "torch"
LAYOUT = "NCHW"


def dynamo_available() -> bool:
    """True when torch.onnx's dynamo exporter can run (it needs the ``onnxscript`` package)."""
    return importlib.util.find_spec("onnxscript") is not None


# The dynamo exporter implements opset 18 and newer; older opsets use the TorchScript exporter
# (docs/export.md says why).
DYNAMO_MIN_OPSET = 18


def exporter_version(opset: int = DEFAULT_OPSET, fmt: str = "onnx") -> str:
    """The exporter that writes this framework's ``fmt`` files (ONNX at ``opset``), with its version."""
    if fmt == "pt2":
        return f"torch {torch.__version__} torch.export"
    kind = "dynamo" if dynamo_available() and opset >= DYNAMO_MIN_OPSET else "torchscript"
    return f"torch {torch.__version__} torch.onnx {kind}"


def export_onnx(model: torch.nn.Module, spec: ModelSpec, path: str | Path, metadata: dict[str, str],
                opset: int = DEFAULT_OPSET, dynamo: bool | None = None) -> Path:
    """Export ``model`` (eval mode) to ``path`` at ONNX ``opset``: input ``input`` NCHW, output ``logits``,
    symbolic batch.

    ``dynamo`` picks the exporter (default: dynamo when onnxscript is installed and ``opset`` >= 18, else
    the TorchScript one; a note on stderr when onnxscript is missing). ``onnx.checker`` runs before the
    file is written (atomically); ``metadata`` goes to metadata_props.
    """
    check_metadata(metadata)
    if dynamo is None:
        dynamo = dynamo_available() and opset >= DYNAMO_MIN_OPSET
        if not dynamo_available():
            print("note: onnxscript is not installed; exporting with torch's TorchScript-based ONNX exporter "
                  "(torch.onnx.export(dynamo=False))", file=sys.stderr, flush=True)
    model = model.eval()
    device = next(model.parameters()).device
    example = torch.zeros(2, spec.in_channels, spec.input_size, spec.input_size, device=device)
    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME]}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        raw = Path(tmp) / "raw.onnx"
        if dynamo:
            program = torch.onnx.export(model, (example,), None, dynamo=True, opset_version=opset, **names,
                                        external_data=False,
                                        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), verbose=False)
            program.save(str(raw), external_data=False)
        else:
            with warnings.catch_warnings():  # its deprecation and constant-folding chatter: the note says it all
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (example,), str(raw), dynamo=False, opset_version=opset, **names,
                                  dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        return finalize_onnx(raw, path, metadata)


def export_pt2(model: torch.nn.Module, spec: ModelSpec, path: str | Path, metadata: dict[str, str]) -> Path:
    """``torch.export`` of ``model`` (eval mode) to a ``.pt2`` archive with a symbolic batch, ``metadata`` as its
    extra file ``metadata.json``; written atomically. ``torch.export.load(path).module()`` runs it."""
    check_metadata(metadata)
    if "tensorflow" in sys.modules:  # torch.export crashes the interpreter when TensorFlow shares it
        raise ValueError("torch.export must run in a process that has not imported tensorflow")
    model = model.eval()
    example = torch.zeros(2, spec.in_channels, spec.input_size, spec.input_size)
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    extra = {PT2_METADATA: json.dumps(metadata)}

    def save(tmp: str) -> None:  # torch.export.save wants a name ending in .pt2
        torch.export.save(program, tmp + ".pt2", extra_files=extra)
        os.replace(tmp + ".pt2", tmp)

    return atomic_write(path, save)


def export_format(model: torch.nn.Module, spec: ModelSpec, fmt: str, path: str | Path, metadata: dict[str, str],
                  opset: int = DEFAULT_OPSET) -> Path:
    """Write ``model`` in deployment format ``fmt`` (``onnx`` or ``pt2``, the formats PyTorch has a route to)."""
    exporters = {"onnx": lambda: export_onnx(model, spec, path, metadata, opset=opset),
                 "pt2": lambda: export_pt2(model, spec, path, metadata)}
    if fmt not in exporters:
        raise ValueError(f"PyTorch has no route to {fmt!r}; it writes: {', '.join(exporters)}")
    return exporters[fmt]()


def load_model(source: Source) -> torch.nn.Module:
    """The source's model in eval mode: its canonical weights, or seeded random weights."""
    torch.manual_seed(source.seed)
    model = build_model(source.spec)
    if source.weights is not None:
        arrays, _ = load_weights(source.weights)
        set_weights(model, source.spec, arrays)
    return model.eval()


def predict(model: torch.nn.Module, x_nhwc: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Logits for normalized NHWC float32 images (transposed to NCHW here)."""
    out = []
    with torch.no_grad():
        for i in range(0, len(x_nhwc), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x_nhwc[i:i + batch_size].transpose(0, 3, 1, 2)))
            out.append(model(xb).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def main(argv: list[str] | None = None) -> int:
    return export_cli(FRAMEWORK, sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(errors.run(main))
