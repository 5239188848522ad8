"""ONNX export of a PyTorch ResNet (torch.onnx dynamo exporter), native predictions and timings.

``python -m pytorch_impl.export onnx|predict|bench ...`` is what the framework-neutral drivers in
``export/`` run in a subprocess (this process must never import tensorflow: torch.export crashes).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pytorch_impl.resnet import build_model
from pytorch_impl.weights import set_weights
from shared.io import atomic_save_npy, atomic_write_json, load_weights
from shared.onnx_meta import (
    INPUT_NAME,
    OUTPUT_NAME,
    Source,
    build_metadata,
    check_metadata,
    default_onnx_path,
    finalize_onnx,
    resolve_source,
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m {__spec__.name if __spec__ else 'pytorch_impl.export'}",
                                description=__doc__)
    p.add_argument("command", choices=("onnx", "predict", "bench"))
    p.add_argument("--run", help="run folder or .safetensors checkpoint (default: random weights)")
    p.add_argument("--model", help="registry model name (random weights; needs no --run)")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--shortcut")
    p.add_argument("--input-size", type=int, help="override the input side (pixels)")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights")
    p.add_argument("--out", help="onnx: output .onnx file or folder")
    p.add_argument("--inputs", help="predict: .npy of normalized NHWC float32 images")
    p.add_argument("--logits", help="predict: output .npy of logits")
    p.add_argument("--json", help="bench: output .json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        source = resolve_source(args.run, model=args.model, num_classes=args.num_classes,
                                shortcut=args.shortcut, input_size=args.input_size, seed=args.seed)
        model = load_model(source)
        if args.command == "onnx":
            path = default_onnx_path(source, FRAMEWORK, args.out)
            export_onnx(model, source.spec, path, build_metadata(source, FRAMEWORK, exporter_version()))
            print(path)
        elif args.command == "predict":
            if not args.inputs or not args.logits:
                raise ValueError("predict needs --inputs X.npy and --logits OUT.npy")
            atomic_save_npy(args.logits, predict(model, np.load(args.inputs)))
        else:
            result = {"framework": FRAMEWORK, **benchmark(model, source.spec)}
            if args.json:
                atomic_write_json(args.json, result)
            print(json.dumps(result))
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
