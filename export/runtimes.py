"""The runtimes an exported model is deployed with, as one table of adapters (docs/export.md, "The deployment matrix").

    python -m export.runtimes --plan plan.json --out results.json    # a worker: one process kind's cells

:data:`RUNTIMES` holds everything that differs between runtimes; ``make deploy-check``, ``make infer`` and
``make bench-deploy`` loop over it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared import errors

PROCESSES = ("neutral", "torch", "tensorflow")


@dataclass
class Runner:
    """An opened model: ``run(x)`` maps a float32 batch in the file's layout to float32 logits."""

    run: Callable[[np.ndarray], np.ndarray]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Runtime:
    """One runtime: what it loads, what it needs, where it runs, how it opens a file.

    ``max_images`` bounds the images a slow runtime is checked on (a prefix of the split); ``max_opset``
    is the newest ONNX opset it reads (measured by ``make deploy-check``: see docs/export.md).
    """

    name: str
    module: str
    requirement: str
    formats: tuple[str, ...]
    process: str
    open: Callable[[Path], Runner]
    description: str
    max_images: int | None = None
    max_opset: int | None = None
    slow: bool = False

    @property
    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def not_installed(self) -> str:
        return f"not installed: pip install {self.requirement} (in requirements.txt; `make setup`)"


def _float32(out: Any) -> np.ndarray:
    return np.asarray(out, dtype=np.float32)


def _onnxruntime(path: Path, threads: int | None = None) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return Runner(lambda x: _float32(session.run(None, {name: x})[0]),
                  {"version": ort.__version__, "provider": session.get_providers()[0]})


def _reference(path: Path) -> Runner:
    import onnx
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(path))
    evaluator = ReferenceEvaluator(model)
    name = model.graph.input[0].name
    return Runner(lambda x: _float32(evaluator.run(None, {name: x})[0]), {"version": onnx.__version__})


def _openvino(hint: str | None) -> Callable[[Path], Runner]:
    """OpenVINO on the CPU at ``INFERENCE_PRECISION_HINT=hint``, or at the CPU plugin's default (None): bf16 on a
    CPU with native bf16, f32 elsewhere. The hint in force is reported, whichever it is."""

    def open_(path: Path) -> Runner:
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(core.read_model(str(path)), "CPU",
                                      {"INFERENCE_PRECISION_HINT": hint} if hint else {})
        request = compiled.create_infer_request()
        output = compiled.output(0)

        def run(x: np.ndarray) -> np.ndarray:
            return _float32(request.infer({0: x})[output]).copy()

        return Runner(run, {"version": ov.get_version().split("-")[0],
                            "precision_hint": compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
                            "cpu_capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))})

    return open_


def _opencv(path: Path) -> Runner:
    import cv2

    net = cv2.dnn.readNet(str(path))

    def run(x: np.ndarray) -> np.ndarray:
        net.setInput(np.ascontiguousarray(x))
        return _float32(net.forward()).reshape(len(x), -1)

    return Runner(run, {"version": cv2.__version__})


def _litert(path: Path) -> Runner:
    from ai_edge_litert.interpreter import Interpreter

    from shared.machine import cpu_cores

    threads = cpu_cores()
    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    inp, out = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]
    shape: list[tuple[int, ...]] = [()]

    def run(x: np.ndarray) -> np.ndarray:
        if x.shape != shape[0]:  # the batch is symbolic: resize, then allocate for the new shape
            interpreter.resize_tensor_input(inp, x.shape)
            interpreter.allocate_tensors()
            shape[0] = x.shape
        interpreter.set_tensor(inp, np.ascontiguousarray(x))
        interpreter.invoke()
        return _float32(interpreter.get_tensor(out)).copy()

    return Runner(run, {"version": importlib.metadata.version("ai-edge-litert"), "threads": threads})


def _tensorflow(path: Path) -> Runner:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))  # kept alive: ``serve`` refers to its variables

    def run(x: np.ndarray) -> np.ndarray:
        return _float32(loaded.serve(tf.constant(x)).numpy())

    return Runner(run, {"version": tf.__version__})


def _torch_module(module: Any, version: str) -> Runner:
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return _float32(module(torch.from_numpy(np.ascontiguousarray(x))).numpy())

    return Runner(run, {"version": version, "threads": torch.get_num_threads()})


def _torch_export(path: Path) -> Runner:
    import torch

    return _torch_module(torch.export.load(str(path)).module(), torch.__version__)


def _onnx2torch(path: Path) -> Runner:
    import onnx
    from onnx2torch import convert

    return _torch_module(convert(onnx.load(str(path))).eval(), importlib.metadata.version("onnx2torch"))


# The deployment matrix's columns. The pins match requirements.txt.
RUNTIMES: dict[str, Runtime] = {r.name: r for r in (
    Runtime("onnxruntime", "onnxruntime", "onnxruntime==1.31.1", ("onnx",), "neutral", _onnxruntime,
            "ONNX Runtime, CPU execution provider"),
    Runtime("onnx.reference", "onnx", "onnx==1.23.2", ("onnx",), "neutral", _reference,
            "onnx.reference.ReferenceEvaluator: ONNX's own pure-NumPy semantics (slow: a prefix of the split)",
            max_images=64, slow=True),
    Runtime("openvino-f32", "openvino", "openvino==2026.4.1", ("onnx", "openvino", "litert", "saved_model"),
            "neutral", _openvino("f32"), "OpenVINO CPU plugin at INFERENCE_PRECISION_HINT=f32"),
    Runtime("openvino", "openvino", "openvino==2026.4.1", ("onnx", "openvino", "litert", "saved_model"),
            "neutral", _openvino(None), "OpenVINO CPU plugin at its default precision hint (named in the cell)"),
    Runtime("opencv", "cv2", "opencv-python-headless==5.1.0.95", ("onnx", "litert"), "neutral", _opencv,
            "OpenCV DNN (cv2.dnn.readNet), default backend and target"),
    Runtime("litert", "ai_edge_litert", "ai-edge-litert==2.3.0", ("litert",), "neutral", _litert,
            "LiteRT interpreter (ai_edge_litert), XNNPACK, one thread per core"),
    Runtime("tensorflow", "tensorflow", "tensorflow==2.21.0", ("saved_model",), "tensorflow", _tensorflow,
            "tf.saved_model.load(...).serve"),
    Runtime("torch.export", "torch", "torch==2.14.1", ("pt2",), "torch", _torch_export,
            "torch.export.load(...).module(), eager, inference mode"),
    Runtime("onnx2torch", "onnx2torch", "onnx2torch==1.5.15", ("onnx",), "torch", _onnx2torch,
            "onnx2torch.convert -> torch.nn.Module, eager, inference mode", max_opset=17),
)}
# What `make infer RUNTIME=` offers: the serving runtimes that read ONNX (OpenVINO reads its IR too).
INFER_RUNTIMES = ("onnxruntime", "openvino", "openvino-f32", "opencv")


def check_runtime(name: str, choices: tuple[str, ...] = tuple(RUNTIMES)) -> Runtime:
    """The runtime named ``name`` if it is one of ``choices`` and installed; else a one-line error."""
    if name not in choices:
        raise ValueError(f"unknown runtime {name!r}; valid choices: {', '.join(choices)}")
    runtime = RUNTIMES[name]
    if not runtime.installed:
        raise ValueError(f"runtime {name} is {runtime.not_installed()}")
    return runtime


def can_load(runtime: Runtime, fmt: str) -> bool:
    return fmt in runtime.formats


def opset_advice(opset: int) -> list[str]:
    """One line per runtime that cannot read ``opset`` (from :data:`RUNTIMES`' measured ``max_opset``)."""
    return [f"{r.name} reads ONNX up to opset {r.max_opset}: export with OPSET={r.max_opset} for it"
            for r in RUNTIMES.values() if r.max_opset is not None and opset > r.max_opset]


# The worker ------------------------------------------------------------------------------------------------
def run_cell(cell: dict[str, Any], inputs: dict[str, np.ndarray], logits_dir: Path, speed: bool) -> dict[str, Any]:
    """Open one cell's file in its runtime, save its logits, time it; every failure is the cell's one-line reason."""
    from export.bench_deploy import runner_speed
    from shared.bench.timing import first_line

    runtime = RUNTIMES[cell["runtime"]]
    result: dict[str, Any] = {"id": cell["id"]}
    x = inputs[cell["layout"]][: cell["n"]]
    try:
        runner = runtime.open(Path(cell["file"]))
    except Exception as e:  # noqa: BLE001 the runtime's own reason is the result
        return {**result, "load": "error", "reason": first_line(e)}
    result.update(load="ok", info=runner.info)
    try:
        logits = np.concatenate([runner.run(x[i:i + 64]) for i in range(0, len(x), 64)])
    except Exception as e:  # noqa: BLE001
        return {**result, "run": "error", "reason": first_line(e)}
    np.save(logits_dir / f"{cell['id']}.npy", logits)
    result["run"] = "ok"
    if speed:
        try:
            result["speed"] = runner_speed(runner.run, x, slow=runtime.slow)
        except Exception as e:  # noqa: BLE001
            result["speed"] = {"error": first_line(e)}
    return result


def worker(plan_path: Path, out: Path) -> None:
    """Run every cell of ``plan_path`` in this process; ``out`` is rewritten after each cell."""
    from shared.io import atomic_write_json

    plan = json.loads(plan_path.read_text())
    x = np.load(plan["inputs"])
    inputs = {"NHWC": x, "NCHW": np.ascontiguousarray(x.transpose(0, 3, 1, 2))}
    results = []
    for cell in plan["cells"]:
        print(f"  {cell['runtime']:<15} {cell['label']}", file=sys.stderr, flush=True)
        results.append(run_cell(cell, inputs, Path(plan["logits_dir"]), plan["speed"]))
        atomic_write_json(out, results)


def main(argv: list[str] | None = None) -> int:
    p = errors.ArgumentParser(prog="python -m export.runtimes", description=__doc__)
    p.add_argument("--plan", required=True, help="plan.json written by export.deploy_check")
    p.add_argument("--out", required=True, help="results .json")
    args = p.parse_args(argv)
    worker(Path(args.plan), Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(errors.run(main))
