"""``make quantize``: an int8 or float16 ONNX file of a run, with a report of what it costs (docs/export.md).

    python -m export.quantize --run RUN [--precision int8|fp16] [--framework torch|keras] [--data-dir data]
                              [--onnx model.onnx] [--calibration 256] [--seed 0]

Writes ``<name>.<precision>.onnx`` beside the float32 file, with a ``.md``/``.json`` report. Imports no framework.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from export.infer import load
from export.parity import REFERENCE_IMAGES, reference_check
from shared import errors
from shared.export_meta import check_framework
from shared.export_source import default_onnx_path, resolve_source
from shared.io import atomic_write, atomic_write_json, atomic_write_text, check_writable
from shared.markdown import table
from shared.onnx_file import graph_opset
from shared.process import FRAMEWORKS

PRECISIONS = ("int8", "fp16")
DEFAULT_CALIBRATION = 256


class QuantizeError(ValueError):
    """A user-facing error (bad precision, missing data, unreadable model)."""


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise QuantizeError(f"unknown precision {precision!r}; valid choices: {', '.join(PRECISIONS)}")
    return precision


def quantized_path(float_path: Path, precision: str) -> Path:
    """``model.onnx`` -> ``model.int8.onnx``."""
    return float_path.with_name(f"{float_path.stem}.{precision}.onnx")


def to_layout(x_nhwc: np.ndarray, layout: str) -> np.ndarray:
    return np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2) if layout == "NCHW" else x_nhwc)


def dataset_images(meta: dict[str, Any], data_dir: str | Path, split: str | None = None
                   ) -> tuple[np.ndarray, np.ndarray, str]:
    """(normalized images in the file's layout, labels, split) of the file's dataset, read from the prepared
    arrays (``make data``) and normalized with the file's own mean/std (``shared/data.py`` order of ops)."""
    from datasets import DataError, load_prepared
    from shared.data import normalize

    dataset = meta.get("dataset", "none")
    if dataset in ("", "none"):
        raise QuantizeError(f"{meta.get('source', 'the model')} has no dataset in its metadata (random weights?); "
                            "quantize the export of a trained run")
    try:
        prepared = load_prepared(dataset, data_dir, prepare_missing=False)
    except DataError as e:
        raise QuantizeError(f"the run's data is needed for calibration and the report: {e}") from None
    if split is None:
        split = "test" if prepared.manifest.get("splits", {}).get("test") else "val"
    x, y = prepared.arrays(split)
    if x.shape[1] != meta["input_size"]:
        raise QuantizeError(f"{dataset} images are {x.shape[1]}px but the model takes {meta['input_size']}px")
    norm = meta["normalization"]
    mean, std = np.asarray(norm["mean"], np.float32), np.asarray(norm["std"], np.float32)
    return to_layout(normalize(x, mean, std), meta["layout"]), y.astype(np.int64), split


def calibration_sample(x_train: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (all, if fewer) drawn without replacement with ``seed``; and their indices."""
    idx = np.sort(np.random.default_rng(seed).choice(len(x_train), size=min(n, len(x_train)), replace=False))
    return x_train[idx], idx


def _set_metadata(model: Any, meta: dict[str, str]) -> None:
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def _save(model: Any, path: Path) -> Path:
    import onnx

    onnx.checker.check_model(model)
    return atomic_write(path, lambda tmp: onnx.save(model, tmp))


def quantize_int8(float_path: Path, out: Path, calibration: np.ndarray, meta: dict[str, str],
                  reduce_range: bool = False, batch: int = 32) -> Path:
    """Static QDQ quantization (per-channel int8 weights, uint8 activations, MinMax) of ``float_path``."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration[i:i + batch] for i in range(0, len(calibration), batch))

        def get_next(self) -> dict[str, np.ndarray] | None:
            xb = next(self.batches, None)
            return None if xb is None else {"input": xb}

    float_path = Path(float_path).resolve()
    # In a scratch folder: when ORT's symbolic shape inference gives up it dumps its partial model (and
    # external-data files) into the current directory.
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        pre, raw = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        try:
            quant_pre_process(str(float_path), str(pre))
        except Exception:  # noqa: BLE001 ORT raises a bare Exception("Incomplete symbolic shape inference")
            # ORT's symbolic shape inference (meant for dynamic transformer shapes) gives up on tf2onnx's
            # graphs; ONNX shape inference and ORT's graph optimization, the rest of the pre-processing, still run.
            quant_pre_process(str(float_path), str(pre), skip_symbolic_shape=True)
            meta = {**meta, "quantization": json.dumps({**json.loads(meta["quantization"]),
                                                         "pre_process": "symbolic shape inference skipped"})}
        quantize_static(str(pre), str(raw), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=reduce_range)
        model = onnx.load(str(raw))
    _set_metadata(model, {**meta, "opset": str(graph_opset(model))})
    return _save(model, out)


def convert_fp16(float_path: Path, out: Path, meta: dict[str, str]) -> Path:
    """Weights and activations float16, model input/output float32 (the converter's default block list)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(float_path)), keep_io_types=True)
    _topological_sort(model.graph)  # the converter appends the input casts at the end of the node list
    _set_metadata(model, {**meta, "opset": str(graph_opset(model))})
    return _save(model, out)


def _topological_sort(graph: Any) -> None:
    """Reorder ``graph.node`` so that every node comes after the producers of its inputs (stable)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ValueError("the graph has a cycle or an input that no node produces")
        for n in ready:
            available.update(n.output)
        ordered += ready
        pending = [n for n in pending if not any(n is r for r in ready)]
    copies = [type(n)() for n in ordered]
    for c, n in zip(copies, ordered):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)


def quantize(run: str, precision: str = "int8", framework: str | None = None, onnx: str | None = None,
             data_dir: str = "data", calibration: int = DEFAULT_CALIBRATION, seed: int = 0,
             reduce_range: bool = False, out: str | None = None) -> dict[str, Any]:
    """Write the quantized file and its report; the report as a dict (docs/export.md, "`make quantize`")."""
    from export.onnx_export import export

    check_precision(precision)
    source = resolve_source(run)
    if source.run_dir is None or source.framework is None:
        raise QuantizeError(f"{run}: quantize needs a run folder (config.json with framework and dataset)")
    exported = False
    if onnx:
        float_path = Path(onnx)
    else:
        fw = check_framework(framework or source.framework)
        float_path = default_onnx_path(source, fw)
        if not float_path.is_file() or float_path.stat().st_mtime < source.weights.stat().st_mtime:
            float_path, exported = export(fw, run), True
    f32 = load(float_path)
    if f32.meta.get("precision", "float32") != "float32":
        raise QuantizeError(f"{float_path} is already {f32.meta['precision']}; give the float32 export")
    x_test, y_test, split = dataset_images(f32.meta, data_dir)
    x_train, _, _ = dataset_images(f32.meta, data_dir, "train")
    calib, idx = calibration_sample(x_train, calibration, seed)

    props = dict(f32.session.get_modelmeta().custom_metadata_map)
    props.update({"precision": precision, "float32_source": str(float_path)})
    path = Path(out) if out else quantized_path(float_path, precision)
    t = time.perf_counter()
    if precision == "int8":
        props["quantization"] = json.dumps({
            "tool": "onnxruntime.quantization.quantize_static", "format": "QDQ", "weights": "int8 per-channel",
            "activations": "uint8", "calibration": "MinMax", "reduce_range": reduce_range,
            "calibration_split": "train", "calibration_images": int(len(calib)), "calibration_seed": seed})
        quantize_int8(float_path, path, calib, props, reduce_range)
    else:
        props["quantization"] = json.dumps({"tool": "onnxruntime.transformers.float16.convert_float_to_float16",
                                            "keep_io_types": True})
        convert_fp16(float_path, path, props)
    seconds = time.perf_counter() - t
    qmodel = load(path)

    logits32, logitsq = f32.logits(x_test), qmodel.logits(x_test)
    top32, topq = logits32.argmax(1), logitsq.argmax(1)
    diff = np.abs(logits32.astype(np.float64) - logitsq)
    report: dict[str, Any] = {
        "run": str(source.run_dir), "model": f32.meta["model"], "framework": f32.meta["framework"],
        "precision": precision, "file": str(path), "float32_file": str(float_path), "exported_now": exported,
        "size_bytes": path.stat().st_size, "float32_size_bytes": float_path.stat().st_size,
        "quantize_seconds": seconds, "opset": qmodel.meta.get("opset"),
        "quantization": json.loads(qmodel.meta["quantization"]), "calibration_indices_head": idx[:8].tolist(),
        "dataset": f32.meta.get("dataset"), "synthetic": f32.meta.get("synthetic"), "split": split,
        "n": int(len(y_test)),
        "float32_acc": float(np.mean(top32 == y_test)), "acc": float(np.mean(topq == y_test)),
        "top1_agreement_pct": float(100.0 * np.mean(top32 == topq)),
        "max_abs_logit_diff": float(diff.max()), "mean_abs_logit_diff": float(diff.mean()),
        "max_abs_logit": float(np.abs(logits32).max()),
    }
    report["acc_delta"] = report["acc"] - report["float32_acc"]
    report["reference_evaluator"] = {
        "float32": reference_check(float_path, f32.session, x_test[:REFERENCE_IMAGES], "float32"),
        precision: reference_check(path, qmodel.session, x_test[:REFERENCE_IMAGES], precision),
    }
    return report


def markdown(r: dict[str, Any]) -> str:
    """The report as a Markdown page."""
    p = r["precision"]
    tag = " (SYNTHETIC data)" if r["synthetic"] else ""
    q = r["quantization"]
    how = (f"ORT static quantization, QDQ, int8 per-channel weights, uint8 activations, MinMax calibration on "
           f"{q['calibration_images']} training images (seed {q['calibration_seed']})"
           + (", reduce_range" if q["reduce_range"] else "")) if p == "int8" else \
        "float16 weights and activations, float32 input/output (onnxruntime.transformers.float16)"
    lines = [
        f"# {p} ONNX: {r['model']} ({r['framework']} export)",
        "",
        f"`{r['file']}` from `{r['float32_file']}`: {how}. Opset {r['opset']}; "
        f"{r['size_bytes'] / 2**20:.2f} MiB (float32 {r['float32_size_bytes'] / 2**20:.2f} MiB).",
        "",
        f"## Accuracy on the {r['split']} split of {r['dataset']}{tag}, {r['n']} images",
        "",
        *table(["", "float32", p], [
            ["accuracy", f"{r['float32_acc']:.4f}", f"{r['acc']:.4f} ({r['acc_delta']:+.4f})"],
            ["top-1 agreement with float32", "", f"{r['top1_agreement_pct']:.2f}%"],
            ["max / mean abs logit difference", "", f"{r['max_abs_logit_diff']:.3g} / {r['mean_abs_logit_diff']:.3g} "
             f"(max abs float32 logit {r['max_abs_logit']:.3g})"],
        ], "lrr"),
        "",
        "## A second runtime",
        "",
        "onnx.reference.ReferenceEvaluator against ONNX Runtime, same file, "
        f"{r['reference_evaluator']['float32']['n']} images:",
        "",
        *table(["file", "max abs logit difference", "bound", "ok"],
               [[name, f"{c['max_abs_diff']:.3g}", f"{c['bound']:.3g}", "yes" if c["ok"] else "**NO**"]
                for name, c in r["reference_evaluator"].items()], "lrrl"),
    ]
    if p == "int8":
        lines += ["", "ORT fuses Q/DQ pairs into integer kernels (QLinearConv) whose requantization rounds "
                  "differently from the reference's float Conv between DequantizeLinear and QuantizeLinear, "
                  "so the int8 bound is a few quantization steps of the logits, not float rounding."]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any]) -> tuple[Path, Path]:
    """``<file>.md`` and ``<file>.json`` beside the quantized file (``model.int8.onnx`` -> ``model.int8.md``)."""
    stem = Path(report["file"]).with_suffix("")
    return (atomic_write_text(stem.with_suffix(stem.suffix + ".md"), markdown(report)),
            atomic_write_json(stem.with_suffix(stem.suffix + ".json"), report))


def main(argv: list[str] | None = None) -> int:
    p = errors.ArgumentParser(prog="python -m export.quantize", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run folder")
    p.add_argument("--precision", default="int8", help=f"{' or '.join(PRECISIONS)} (default int8)")
    p.add_argument("--framework", help=f"whose export to quantize: {' or '.join(FRAMEWORKS)} (default: the run's)")
    p.add_argument("--onnx", help="the float32 .onnx file (default: the run's export, made first if missing)")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--calibration", type=int, default=DEFAULT_CALIBRATION,
                   help=f"int8: training images for calibration (default {DEFAULT_CALIBRATION})")
    p.add_argument("--seed", type=int, default=0, help="int8: seed of the calibration sample")
    p.add_argument("--reduce-range", action="store_true", help="int8: 7-bit weights (x86 CPUs without VNNI)")
    p.add_argument("--out", help="output .onnx file (default: <float32 name>.<precision>.onnx beside it)")
    args = p.parse_args(argv)
    try:
        check_precision(args.precision)
        if args.calibration < 1:
            raise QuantizeError(f"--calibration must be >= 1; got {args.calibration}")
        # The quantized file and its report go to --out, else beside the float32 file (the run folder).
        if args.out:
            check_writable(args.out, what="quantized file")
        else:
            check_writable(Path(args.onnx).parent if args.onnx else args.run, folder=True,
                           what="quantized file's folder")
        report = quantize(args.run, args.precision, args.framework, args.onnx, args.data_dir, args.calibration,
                          args.seed, args.reduce_range, out=args.out)
    except (FileNotFoundError, ValueError, RuntimeError) as e:  # RuntimeError: process.ChildError
        raise errors.UserError(str(e)) from None
    md, js = write_report(report)
    print(markdown(report))
    print(f"wrote {report['file']}, {md} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(errors.run(main))
