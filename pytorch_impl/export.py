"""ONNX export of a PyTorch ResNet (torch.onnx dynamo exporter), native predictions and timings.

``python -m pytorch_impl.export onnx|predict|bench ...`` is what the framework-neutral drivers in
``export/`` run in a subprocess (this process must never import tensorflow: torch.export crashes).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pytorch_impl.resnet import build_model
from pytorch_impl.weights import set_weights
from shared.io import load_weights
from shared.onnx_meta import (
    INPUT_NAME,
    OUTPUT_NAME,
    Source,
    check_metadata,
    export_cli,
    finalize_onnx,
)
from shared.spec import ModelSpec

FRAMEWORK = "torch"
LAYOUT = "NCHW"


def exporter_version() -> str:
    """The exporter that writes this framework's files, with its version."""
    return f"torch {torch.__version__} torch.onnx dynamo"


def export_onnx(model: torch.nn.Module, spec: ModelSpec, path: str | Path, metadata: dict[str, str]) -> Path:
    """Export ``model`` (eval mode) to ``path``: input ``input`` NCHW, output ``logits``, symbolic batch.

    ``onnx.checker`` runs before the file is written (atomically); ``metadata`` goes to metadata_props.
    """
    check_metadata(metadata)
    model = model.eval()
    device = next(model.parameters()).device
    example = torch.zeros(2, spec.in_channels, spec.input_size, spec.input_size, device=device)
    batch = torch.export.Dim("batch", min=1)
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        raw = Path(tmp) / "raw.onnx"
        program = torch.onnx.export(
            model, (example,), None, dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},), external_data=False, verbose=False,
        )
        program.save(str(raw), external_data=False)
        return finalize_onnx(raw, path, metadata)


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


def benchmark(model: torch.nn.Module, spec: ModelSpec, repeats: int = 20, batch: int = 64) -> dict[str, float]:
    """CPU latency (batch 1, median ms) and throughput (batch ``batch``, images/s) in eval mode."""
    x1 = torch.randn(1, spec.in_channels, spec.input_size, spec.input_size)
    xb = torch.randn(batch, spec.in_channels, spec.input_size, spec.input_size)
    with torch.no_grad():
        model(x1), model(xb)  # warm-up
        lat = []
        for _ in range(repeats):
            t = time.perf_counter()
            model(x1)
            lat.append(time.perf_counter() - t)
        runs = max(2, repeats // 5)
        t = time.perf_counter()
        for _ in range(runs):
            model(xb)
        dt = time.perf_counter() - t
    return {"latency_ms_b1": float(np.median(lat) * 1e3), "throughput_ips_b64": batch * runs / dt,
            "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    return export_cli(FRAMEWORK, sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
