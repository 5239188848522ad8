"""PyTorch side of ``make bench`` and ``make gpu-report``: the training step in each variant (eager, channels_last,
torch.compile, autocast and the trainer's combinations), FLOP counts, matmul peaks and GPU busy time (docs/bench.md).

    python -m pytorch_impl.bench --model resnet20 --device cpu --variants eager,compile --json-out t.json
                                 [--onnx model.onnx] [--flops] [--peak] [--peaks] [--metrics train]
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pytorch_impl.optim import make_sgd
from pytorch_impl.resnet import build_model
from shared import errors
from shared.bench import TimingPlan, Workload, first_line, rate, worker_main
from shared.bench.catalog import CUDA_GRAPHS
from shared.bench.flops import CUDA_PEAK_N, MATMUL_N, PEAK_PRECISIONS, matmul_flops
from shared.machine import cpu_has_bf16
from shared.spec import ModelSpec

FRAMEWORK = "torch"
LAYOUT = "NCHW"
CHANNELS_LAST = ("channels_last", "amp_channels_last", "amp_compile")
AUTOCAST = ("autocast", "amp_channels_last", "amp_compile")
COMPILED = ("compile", "amp_compile")
BUSY_STEPS = 20  # training steps under torch.profiler for the GPU-busy figure


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
    fmt = torch.channels_last if variant in CHANNELS_LAST else torch.contiguous_format
    model = build_model(spec).to(dev, memory_format=fmt)
    shape = (batch_size, spec.in_channels, spec.input_size, spec.input_size)
    x = torch.randn(shape, device=dev).contiguous(memory_format=fmt)
    x1 = x[:1].clone().contiguous(memory_format=fmt)
    y = torch.randint(0, spec.num_classes, (batch_size,), device=dev)
    # The paper's optimizer as the trainer builds it (fused on CUDA), so the step costs what a real one costs.
    opt = make_sgd(model, lr=0.1, momentum=0.9, weight_decay=1e-4, fused=True if dev.type == "cuda" else None)
    net = model
    info: dict[str, Any] = {"threads": torch.get_num_threads(), "memory_format": str(fmt).split(".")[-1]}
    graphs = variant in CUDA_GRAPHS and dev.type == "cuda"
    if variant in COMPILED:
        # the trainer's --compile: static shapes; reduce-overhead replays CUDA graphs
        net = torch.compile(model, mode="reduce-overhead" if graphs else None, dynamic=False)
        info["compile"] = "inductor, CUDA graphs" if graphs else "inductor"
    use_amp = variant in AUTOCAST
    amp = (lambda: torch.autocast(dev.type, dtype=low_precision(device))) if use_amp else contextlib.nullcontext
    scaler = torch.amp.GradScaler("cuda") if use_amp and dev.type == "cuda" else None
    if use_amp:
        info["autocast_dtype"] = str(low_precision(device)).split(".")[-1]

    def step_begins() -> None:
        if graphs:  # the last step's outputs are consumed: CUDA graphs may reuse their memory
            torch.compiler.cudagraph_mark_step_begin()

    def train_step() -> None:
        if not model.training:
            model.train()
        step_begins()
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
        step_begins()
        with torch.no_grad(), amp():
            return net(inputs)

    def cleanup() -> None:
        if variant in COMPILED:
            torch._dynamo.reset()  # drop the compiled graphs before the next variant
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    busy = (lambda: gpu_busy(train_step, sync)) if dev.type == "cuda" else None
    return Workload(train_step, lambda: predict(x), lambda: predict(x1), sync=sync, cleanup=cleanup, info=info,
                    model=model, busy=busy)


def device_intervals(prof: Any, device_type: Any) -> list[tuple[float, float]]:
    """(start, end) in microseconds of every event that ``torch.profiler`` recorded on ``device_type``."""
    return [(e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type == device_type]


def busy_summary(intervals: list[tuple[float, float]], steps: int) -> dict[str, float]:
    """Per step: the seconds during which at least one kernel ran (overlaps counted once), the kernels, and
    the span from the first kernel's start to the last one's end."""
    if not intervals:
        raise ValueError("the profiler recorded no kernel on the device")
    busy, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        busy += max(0.0, stop - max(start, end))
        end = max(end, stop)
    span = max(e for _, e in intervals) - min(s for s, _ in intervals)
    return {"busy_s_per_step": busy / 1e6 / steps, "kernels_per_step": len(intervals) / steps,
            "span_s_per_step": span / 1e6 / steps, "steps": steps}


def gpu_busy(step: Callable[[], Any], sync: Callable[[], None], steps: int = BUSY_STEPS) -> dict[str, float]:
    """How long the GPU computes during ``steps`` training steps (kernels and copies, from torch.profiler's
    CUDA activity), after one untimed step; the report divides it by the step's unprofiled time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    step()
    sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        sync()
    return busy_summary(device_intervals(prof, DeviceType.CUDA), steps)


def export_for_ort(spec: ModelSpec, path: str | Path) -> dict[str, Any]:
    """Export a float32 eval-mode model with ``pytorch_impl.export.export_onnx`` for ONNX Runtime.

    Returns ``{"path", "layout", "seconds"}`` or ``{"error": reason}`` when the export fails.
    """
    from pytorch_impl.export import export_onnx, exporter_version
    from shared.export_meta import build_metadata
    from shared.export_source import Source

    try:
        torch.manual_seed(0)
        model = build_model(spec).eval()
        t0 = time.perf_counter()
        out = export_onnx(model, spec, path, build_metadata(Source(spec=spec), FRAMEWORK, exporter_version()))
        return {"path": str(out or path), "layout": LAYOUT, "seconds": time.perf_counter() - t0}
    except Exception as e:  # any exporter failure becomes the ONNX Runtime rows' reason
        return {"error": f"export failed: {first_line(e)}"}


def framework_info(device: str) -> dict[str, Any]:
    """Versions and the device as PyTorch sees it (on CUDA: its name, compute capability, memory and SMs)."""
    cuda = torch.cuda.is_available() and device == "cuda"
    info = {
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()},
        "device": device,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        info["cuda_device"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                               "memory_gib": round(props.total_memory / 2**30, 1),
                               "multiprocessors": props.multi_processor_count,
                               "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                               "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    return info


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


def matmul_peak(device: str, settings: TimingPlan, n: int = MATMUL_N, precision: str = "float32") -> dict[str, float]:
    """FLOP/s of an n x n x n matmul on ``device`` in ``precision`` (:data:`PEAK_PRECISIONS`; ``float32`` with
    TF32 off: the float32 peak; ``tf32``: float32 tensors with TF32 on), timed with the benchmark's one
    timing loop."""
    if precision not in PEAK_PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid choices: {', '.join(PEAK_PRECISIONS)}")
    dev = check_device(device)
    dtype = torch.float32 if precision in ("float32", "tf32") else getattr(torch, precision)
    a, b = (torch.randn(n, n, device=dev, dtype=dtype) for _ in range(2))
    out = torch.empty(n, n, device=dev, dtype=dtype)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        return {**rate(lambda: torch.mm(a, b, out=out), matmul_flops(n), settings, sync), "n": n}
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def peak_not_run(device: str, precision: str) -> str | None:
    """Why ``precision``'s peak is not timed on ``device``, or None when it is (every precision on CUDA)."""
    if device == "cuda" or precision == "float32":
        return None
    if precision == "bfloat16" and cpu_has_bf16():
        return None
    return {"tf32": "not applicable on the CPU (TF32 is a GPU tensor-core format)",
            "bfloat16": "not run: this CPU has no native bf16 (emulated in software it is not a peak)",
            "float16": "not run: no float16 matmul units to measure on the CPU"}[precision]


def matmul_peaks(device: str, settings: TimingPlan) -> dict[str, Any]:
    """Every precision's matmul peak on ``device`` (n = 8192 on CUDA, 2048 on the CPU); a precision that does
    not apply there gets ``{"not_run": reason}``, one that fails ``{"error": reason}``."""
    n = CUDA_PEAK_N if device == "cuda" else MATMUL_N
    out: dict[str, Any] = {}
    for precision in PEAK_PRECISIONS:
        reason = peak_not_run(device, precision)
        if reason:
            out[precision] = {"not_run": reason}
            continue
        try:
            out[precision] = matmul_peak(device, settings, n, precision)
        except Exception as e:  # e.g. out of memory: the other precisions still count
            out[precision] = {"error": first_line(e)}
    return out


EXTRAS = {
    "flops": ("count the FLOPs per image (torch.utils.flop_counter)", lambda spec, args, s: count_flops(spec)),
    "peak": (f"time a {MATMUL_N}^3 float32 matmul on the device", lambda spec, args, s: matmul_peak(args.device, s)),
    "peaks": ("time the float32, tf32, bfloat16 and float16 matmul peaks that apply on the device",
              lambda spec, args, s: matmul_peaks(args.device, s)),
}


def main(argv: list[str] | None = None) -> int:
    return worker_main(FRAMEWORK, "python -m pytorch_impl.bench", argv, check_device=check_device,
                       build_workload=build_workload, export_for_ort=export_for_ort, framework_info=framework_info,
                       extras=EXTRAS)


if __name__ == "__main__":
    sys.exit(errors.run(main))
