"""An exported model opened for inference: ONNX Runtime (on the execution providers this onnxruntime really
offers), OpenVINO or OpenCV DNN, with the file's metadata decoded and the input checked against it (docs/export.md).
Imports neither torch nor tensorflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared import errors
from shared.export_meta import parse_metadata

DEFAULT_BATCH = 64
# --provider -> ONNX Runtime execution provider. Non-CPU providers get the CPU one as fallback for the
# operators they do not implement, as ONNX Runtime recommends.
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider", "openvino": "OpenVINOExecutionProvider"}


class InferenceError(errors.UserError, ValueError):
    """A user-facing error: bad model file, unreadable image, wrong input shape."""


@dataclass
class OnnxModel:
    """An exported model opened in a runtime, and the file's decoded metadata: an ONNX Runtime ``session``, or
    (another runtime) a ``runner`` mapping a float32 batch to logits."""

    path: Path
    session: Any
    meta: dict[str, Any]
    runtime: str = "onnxruntime"
    runner: Any = None
    info: dict[str, Any] | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The per-image shape the file expects, in its layout (C, H, W) or (H, W, C)."""
        s, c = self.meta["input_size"], self.meta["spec"].get("in_channels", 3)
        return (c, s, s) if self.meta["layout"] == "NCHW" else (s, s, c)

    def logits(self, x: np.ndarray, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        """Logits of a batch already preprocessed into the file's layout; checks its shape first."""
        check_input(x, self)
        if self.runner is not None:
            run = self.runner
        else:
            name = self.session.get_inputs()[0].name
            run = lambda xb: self.session.run(None, {name: xb})[0]  # noqa: E731
        out = [run(np.ascontiguousarray(x[i:i + batch_size], np.float32)) for i in range(0, len(x), batch_size)]
        return np.concatenate(out).astype(np.float32, copy=False)


def available_providers() -> list[str]:
    """The ``--provider`` names whose execution provider this onnxruntime build really offers."""
    import onnxruntime as ort

    return [k for k, v in PROVIDERS.items() if v in ort.get_available_providers()]


def provider_names(provider: str) -> list[str]:
    """ONNX Runtime's provider list for ``--provider``; a one-line error naming the ones this onnxruntime offers."""
    import onnxruntime as ort

    offered = available_providers()
    if provider not in offered:
        what = f"provider {provider!r} ({PROVIDERS[provider]}) is not available in" if provider in PROVIDERS else \
            f"unknown provider {provider!r} for"
        raise InferenceError(f"{what} onnxruntime {ort.__version__}; valid choices here: {', '.join(offered)} "
                             f"(it offers {', '.join(ort.get_available_providers())})")
    name = PROVIDERS[provider]
    return [name] if name == PROVIDERS["cpu"] else [name, PROVIDERS["cpu"]]


def load_other(path: Path, runtime: str) -> OnnxModel:
    """Open ``path`` in a runtime other than ONNX Runtime (``export/runtimes.py``), its metadata read from the
    file itself (an ONNX file's metadata_props, an OpenVINO IR's rt_info)."""
    from export.runtimes import INFER_RUNTIMES, check_runtime
    from shared.export_meta import read_metadata

    try:
        adapter = check_runtime(runtime, INFER_RUNTIMES)
    except ValueError as e:
        raise InferenceError(str(e)) from None
    if not path.exists():
        raise InferenceError(f"model file not found: {path}")
    try:
        meta = read_metadata(path)
    except (ValueError, FileNotFoundError) as e:
        raise InferenceError(str(e)) from None
    if meta["format"] not in adapter.formats:
        raise InferenceError(f"{runtime} does not read {meta['format']} files; it reads: {', '.join(adapter.formats)}")
    try:
        runner = adapter.open(path)
    except Exception as e:  # noqa: BLE001 the runtime's own exception types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InferenceError(f"{runtime} cannot load {path}: {first}") from e
    return OnnxModel(path, None, meta, runtime, runner.run, runner.info)


def load(path: str | Path, threads: int | None = None, provider: str = "cpu", runtime: str = "onnxruntime"
         ) -> OnnxModel:
    """Open ``path`` in ``runtime`` (ONNX Runtime on ``provider`` by default); clear errors for a missing,
    truncated or foreign file."""
    import onnxruntime as ort

    path = Path(path)
    if runtime != "onnxruntime":
        if provider != "cpu":
            raise InferenceError(f"--provider is ONNX Runtime's; {runtime} runs on the CPU here")
        return load_other(path, runtime)
    if not path.is_file():
        raise InferenceError(f"ONNX file not found: {path}")
    providers = provider_names(provider)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # ORT raises its own exception types for protobuf/graph errors
        raise InferenceError(f"cannot read ONNX model {path}: truncated or corrupt (ONNX Runtime cannot parse it); "
                             "export it again (make export)") from e
    if session.get_providers()[0] != providers[0]:
        raise InferenceError(f"onnxruntime did not enable {providers[0]} for {path}; "
                             f"the session runs on {', '.join(session.get_providers())}")
    try:
        meta = parse_metadata(dict(session.get_modelmeta().custom_metadata_map), where=str(path))
    except ValueError as e:
        raise InferenceError(str(e)) from e
    return OnnxModel(path, session, meta)


def check_input(x: np.ndarray, model: OnnxModel) -> None:
    """A clear error unless ``x`` is a float batch of the file's per-image shape."""
    expected = model.input_shape
    if not isinstance(x, np.ndarray) or x.ndim != 4 or tuple(x.shape[1:]) != expected:
        got = tuple(x.shape) if isinstance(x, np.ndarray) else type(x).__name__
        raise InferenceError(
            f"input shape mismatch: {model.path.name} expects (batch, {', '.join(map(str, expected))}) "
            f"in {model.meta['layout']} layout; got {got}"
        )
    if not np.issubdtype(x.dtype, np.floating):
        raise InferenceError(f"input must be floating point (normalized pixels); got dtype {x.dtype}")
