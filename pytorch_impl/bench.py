"""PyTorch side of the benchmark: eager, channels_last, torch.compile and autocast variants.

    python -m pytorch_impl.bench --model resnet20 --device cpu --variants eager,compile --json-out t.json
                                 [--onnx model.onnx]

Started by ``python -m shared.bench`` (which owns the timing loops, statistics and report); run
alone it writes the same JSON. ``--onnx`` also exports the model with ``pytorch_impl.export`` for
the ONNX Runtime rows.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pytorch_impl.optim import make_sgd
from pytorch_impl.resnet import build_model
from shared.bench import Settings, Workload, first_line, rate, worker_main
from shared.bench.flops import MATMUL_N, matmul_flops
from shared.spec import ModelSpec

FRAMEWORK = "torch"
LAYOUT = "NCHW"


def check_device(device: str) -> torch.device:
    """The torch device for ``cpu``/``cuda``; CUDA requested but absent is a clear error."""
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch.cuda.is_available() is False")
    return torch.device(device)


def low_precision(device: str) -> torch.dtype:
    """bfloat16 on CPU (no loss scaling needed), float16 on CUDA (with a GradScaler)."""
    return torch.bfloat16 if device == "cpu" else torch.float16


def build_workload(spec: ModelSpec, variant: str, batch_size: int, device: str) -> Workload:
    """The three timed steps of one variant, on one random batch that stays on the device."""
    dev = check_device(device)
    torch.manual_seed(0)
    fmt = torch.channels_last if variant == "channels_last" else torch.contiguous_format
    model = build_model(spec).to(dev, memory_format=fmt)
    shape = (batch_size, spec.in_channels, spec.input_size, spec.input_size)
    x = torch.randn(shape, device=dev).contiguous(memory_format=fmt)
    x1 = x[:1].clone().contiguous(memory_format=fmt)
    y = torch.randint(0, spec.num_classes, (batch_size,), device=dev)
    # The paper's optimizer as the trainer builds it (fused on CUDA), so the step costs what a real one costs.
    opt = make_sgd(model, lr=0.1, momentum=0.9, weight_decay=1e-4, fused=True if dev.type == "cuda" else None)
    net = model
    info: dict[str, Any] = {"threads": torch.get_num_threads(), "memory_format": str(fmt).split(".")[-1]}
    if variant == "compile":
        net = torch.compile(model)
        info["compile"] = "inductor"
    use_amp = variant == "autocast"
    amp = (lambda: torch.autocast(dev.type, dtype=low_precision(device))) if use_amp else contextlib.nullcontext
    scaler = torch.amp.GradScaler("cuda") if use_amp and dev.type == "cuda" else None
    if use_amp:
        info["autocast_dtype"] = str(low_precision(device)).split(".")[-1]

    def train_step() -> None:
        if not model.training:
            model.train()
        with amp():
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    def predict(inputs: torch.Tensor) -> torch.Tensor:
        if model.training:
            model.eval()
        with torch.no_grad(), amp():
            return net(inputs)

    def cleanup() -> None:
        if variant == "compile":
            torch._dynamo.reset()  # drop the compiled graphs before the next variant
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    return Workload(train_step, lambda: predict(x), lambda: predict(x1), sync=sync, cleanup=cleanup, info=info,
                    model=model)


def export_for_ort(spec: ModelSpec, path: str | Path) -> dict[str, Any]:
    """Export a float32 eval-mode model with ``pytorch_impl.export.export_onnx`` for ONNX Runtime.

    Returns ``{"path", "layout", "seconds"}`` or ``{"error": reason}`` when the export fails.
    """
    from pytorch_impl.export import export_onnx, exporter_version
    from shared.onnx_meta import Source, build_metadata

    try:
        torch.manual_seed(0)
        model = build_model(spec).eval()
        t0 = time.perf_counter()
        out = export_onnx(model, spec, path, build_metadata(Source(spec=spec), FRAMEWORK, exporter_version()))
        return {"path": str(out or path), "layout": LAYOUT, "seconds": time.perf_counter() - t0}
    except Exception as e:  # any exporter failure becomes the ONNX Runtime rows' reason
        return {"error": f"export failed: {first_line(e)}"}


def framework_info(device: str) -> dict[str, Any]:
    """Versions and the device as PyTorch sees it."""
    cuda = torch.cuda.is_available()
    return {
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()},
        "device": device,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if cuda and device == "cuda" else None,
    }


def count_flops(spec: ModelSpec) -> dict[str, float]:
    """FLOPs of one image through ``spec`` (``torch.utils.flop_counter``): forward, and forward + backward
    as a training step runs them (the SGD update itself is a few FLOPs per parameter and not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(spec)
    x = torch.randn(1, spec.in_channels, spec.input_size, spec.input_size)
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fwd:
        model(x)
    model.train()
    x2 = x.repeat(2, 1, 1, 1)  # two images: train-mode BN needs more than one value per channel
    with FlopCounterMode(display=False) as train:
        F.cross_entropy(model(x2), torch.zeros(2, dtype=torch.long)).backward()
    return {"forward": float(fwd.get_total_flops()), "train": train.get_total_flops() / 2.0}


def matmul_peak(device: str, settings: Settings, n: int = MATMUL_N) -> dict[str, float]:
    """FLOP/s of an n x n x n float32 matmul on ``device`` (TF32 off on CUDA: this is the float32 peak),
    timed with the benchmark's one timing loop."""
    dev = check_device(device)
    a, b = (torch.randn(n, n, device=dev) for _ in range(2))
    out = torch.empty(n, n, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return rate(lambda: torch.mm(a, b, out=out), matmul_flops(n), settings, sync)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


EXTRAS = {
    "flops": ("count the FLOPs per image (torch.utils.flop_counter)", lambda spec, args, s: count_flops(spec)),
    "peak": (f"time a {MATMUL_N}^3 float32 matmul on the device", lambda spec, args, s: matmul_peak(args.device, s)),
}


def main(argv: list[str] | None = None) -> int:
    return worker_main(FRAMEWORK, "python -m pytorch_impl.bench", argv, check_device=check_device,
                       build_workload=build_workload, export_for_ort=export_for_ort, framework_info=framework_info,
                       extras=EXTRAS)


if __name__ == "__main__":
    sys.exit(main())
