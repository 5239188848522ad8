"""ONNX Runtime side of ``make bench``: inference images/s and batch-1 latency of an exported model (docs/bench.md).

    python -m export.bench_ort --model resnet20 --onnx resnet20-torch.onnx --layout NCHW --provider cpu
                               --variants torch_export --json-out ort.json

Started by ``python -m shared.bench``; imports only onnxruntime and NumPy.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import onnxruntime as ort

from shared import errors
from shared.bench import Workload, parse_worker_args, run_variants, worker_parser
from shared.spec import get_spec

FRAMEWORK = "onnxruntime"
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
LAYOUTS = ("NCHW", "NHWC")


def make_session(path: str, provider: str) -> ort.InferenceSession:
    """A session on exactly ``provider`` (onnxruntime would otherwise fall back to CPU silently)."""
    name = PROVIDERS[provider]
    available = ort.get_available_providers()
    if name not in available:
        raise RuntimeError(f"{name} is not available in this onnxruntime; it offers {', '.join(available)}")
    session = ort.InferenceSession(path, providers=[name])
    if session.get_providers()[0] != name:
        raise RuntimeError(f"onnxruntime did not enable {name}; the session runs on {session.get_providers()}")
    return session


def build_workload(path: str, layout: str, provider: str, input_size: int, channels: int,
                   batch_size: int) -> Workload:
    """Inference and batch-1 steps on one random batch; ``run`` returns NumPy, so each step is complete."""
    session = make_session(path, provider)
    name = session.get_inputs()[0].name
    shape = (batch_size, channels, input_size, input_size) if layout == "NCHW" else \
        (batch_size, input_size, input_size, channels)
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    x1 = np.ascontiguousarray(x[:1])
    info = {"provider": PROVIDERS[provider], "layout": layout,
            "intra_op_threads": session.get_session_options().intra_op_num_threads}
    return Workload(None, lambda: session.run(None, {name: x}), lambda: session.run(None, {name: x1}), info=info)


def framework_info(provider: str) -> dict[str, Any]:
    """onnxruntime's version and execution providers."""
    return {"versions": {"onnxruntime": ort.__version__}, "available_providers": ort.get_available_providers(),
            "device": ort.get_device(), "provider": PROVIDERS[provider]}


def main(argv: list[str] | None = None) -> int:
    parser = worker_parser("python -m export.bench_ort", FRAMEWORK)
    parser.add_argument("--onnx", required=True, help="the exported model")
    parser.add_argument("--layout", choices=LAYOUTS, required=True, help="the model input's layout")
    parser.add_argument("--provider", choices=tuple(PROVIDERS), default="cpu")
    args, settings, variants = parse_worker_args(parser, FRAMEWORK, argv)
    spec = get_spec(args.model)

    def build(_variant: str) -> Workload:
        return build_workload(args.onnx, args.layout, args.provider, spec.input_size, spec.in_channels,
                              settings.batch_size)

    run_variants(FRAMEWORK, variants, build, settings, args.json_out, framework_info(args.provider))
    return 0


if __name__ == "__main__":
    sys.exit(errors.run(main))
