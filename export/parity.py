"""``make onnx-parity``: does the exported model compute what the trained model computes? (docs/export.md, "Parity")

    python -m export.parity --run RUN [--onnx FILE] [--data-dir data] [--split test] [--limit N] [--out DIR]

The native model's logits (in its own process) against both frameworks' ONNX files in ONNX Runtime, and a second
runtime against ORT; writes ``parity.md``/``.json`` and exits 1 when a check fails. Imports neither framework.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from export.infer import OnnxModel, load
from export.onnx_export import export, framework_cli
from shared import errors
from shared.export_meta import DEFAULT_OPSET, check_opset
from shared.export_source import Source, default_onnx_path, resolve_source
from shared.io import atomic_write_json, atomic_write_text, check_writable
from shared.markdown import table
from shared.onnx_file import graph_opset
from shared.process import FRAMEWORKS
from shared.runs import read_run

REL_TOL = 1e-4
# The second runtime: onnx.reference.ReferenceEvaluator (pure NumPy, slow) on a few images against ORT.
# Bounds relative to max(1, max|logit|): float32 files differ by summation order only; float16 ones by
# half-precision rounding of two different kernels; int8 ones because ORT runs fused integer kernels
# (QLinearConv) that requantize with their own rounding while the reference dequantizes and convolves in
# float, so they differ by a few quantization steps of the logits (a step of an 8-bit range is ~0.8% of it).
REFERENCE_IMAGES = 4
REFERENCE_REL_BOUNDS = {"float32": 1e-4, "fp16": 1e-2, "int8": 5e-2}


def to_layout(x_nhwc: np.ndarray, layout: str) -> np.ndarray:
    """NHWC images in ``layout`` (NCHW or NHWC)."""
    return np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2) if layout == "NCHW" else x_nhwc)


def compare(reference: np.ndarray, other: np.ndarray, labels: np.ndarray | None = None) -> dict[str, Any]:
    """Max abs difference, the tolerance 1e-4*max(1, max|reference|), top-1 agreement and accuracies."""
    if reference.shape != other.shape:
        raise ValueError(f"logit shapes differ: {reference.shape} vs {other.shape}")
    diff = float(np.abs(reference.astype(np.float64) - other).max()) if reference.size else 0.0
    tol = REL_TOL * max(1.0, float(np.abs(reference).max()) if reference.size else 1.0)
    ref_top, other_top = reference.argmax(1), other.argmax(1)
    out: dict[str, Any] = {
        "n": int(len(reference)),
        "max_abs_diff": diff,
        "tolerance": tol,
        "within_tolerance": diff <= tol,
        "top1_agreement_pct": float(100.0 * np.mean(ref_top == other_top)) if len(reference) else 100.0,
    }
    if labels is not None:
        out["reference_acc"] = float(np.mean(ref_top == labels))
        out["other_acc"] = float(np.mean(other_top == labels))
    out["ok"] = bool(out["within_tolerance"] and out["top1_agreement_pct"] == 100.0
                     and out.get("reference_acc") == out.get("other_acc"))
    return out


def reference_check(path: Path, session: Any, x: np.ndarray, precision: str = "float32") -> dict[str, Any]:
    """``onnx.reference.ReferenceEvaluator`` vs ONNX Runtime on ``x``: max |logit difference| and its bound,
    ``REFERENCE_REL_BOUNDS[precision] * max(1, max|logit|)``."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    t = time.perf_counter()
    model = onnx.load(str(path))
    opset = graph_opset(model)
    # onnx's reference implements DequantizeLinear from opset 19 only (13 and 19 agree on int8/uint8):
    # a QDQ file of an older opset is converted to 19 for this check alone.
    if opset < 19 and any(n.op_type == "DequantizeLinear" for n in model.graph.node):
        model = onnx.version_converter.convert_version(model, 19)
    ref = ReferenceEvaluator(model).run(None, {"input": x})[0]
    ort_out = session.run(None, {"input": x})[0]
    diff = float(np.abs(ref.astype(np.float64) - ort_out).max())
    bound = REFERENCE_REL_BOUNDS[precision] * max(1.0, float(np.abs(ort_out).max()))
    return {"n": int(len(x)), "precision": precision, "max_abs_diff": diff, "bound": bound, "ok": diff <= bound,
            "max_abs_logit": float(np.abs(ort_out).max()), "opset": opset, "reference_opset": graph_opset(model),
            "seconds": time.perf_counter() - t}


def evaluation_set(source: Source, data_dir: str, split: str | None, limit: int | None
                   ) -> tuple[np.ndarray, np.ndarray, str, dict[str, Any]]:
    """(normalized NHWC float32 images, labels, split, manifest) of the run's dataset."""
    from datasets import load_prepared
    from shared.data import norm_constants, normalize

    dataset = source.config.get("dataset")
    if not dataset:
        raise ValueError(f"{source.run_dir}: the run config names no dataset")
    prepared = load_prepared(dataset, data_dir)
    sizes = prepared.manifest.get("splits", {})
    split = split or ("test" if sizes.get("test") else "val")
    x, y = prepared.arrays(split)
    if limit:
        x, y = x[:limit], y[:limit]
    if x.shape[1] != source.spec.input_size:
        raise ValueError(f"{dataset} images are {x.shape[1]}px but the model takes {source.spec.input_size}px")
    mean, std = norm_constants(prepared.manifest)
    return normalize(x, mean, std), y.astype(np.int64), split, prepared.manifest


def _needs_export(path: Path, source: Source, opset: int) -> bool:
    """Missing, older than the weights (e.g. the run resumed since), or of another opset."""
    if not path.is_file() or path.stat().st_mtime < source.weights.stat().st_mtime:
        return True
    try:
        return load(path).meta.get("opset") != opset
    except ValueError:  # unreadable: export it again
        return True


def reference_checks(files: dict[str, Path], models: dict[str, OnnxModel], x_nhwc: np.ndarray
                     ) -> dict[str, dict[str, Any]]:
    """ReferenceEvaluator vs ORT for each float32 file and for the ``make quantize`` files beside them
    (``model.int8.onnx``, ``model.fp16.onnx``), each with its precision's bound."""
    out = {}
    for fw, path in files.items():
        out[str(path)] = reference_check(path, models[fw].session, to_layout(x_nhwc, models[fw].meta["layout"]))
        for precision in ("int8", "fp16"):
            qpath = path.with_name(f"{path.stem}.{precision}.onnx")
            if qpath.is_file():
                qmodel = load(qpath)
                out[str(qpath)] = reference_check(qpath, qmodel.session, to_layout(x_nhwc, qmodel.meta["layout"]),
                                                  qmodel.meta.get("precision", precision))
    return out


def parity(run: str, onnx: str | None = None, data_dir: str = "data", split: str | None = None,
           limit: int | None = None, opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """Every number of the report (docs/export.md, "Parity")."""
    check_opset(opset)
    source = resolve_source(run)
    if source.framework is None or source.run_dir is None:
        raise ValueError(f"{run}: parity needs a run folder (config.json with framework and dataset)")
    native = source.framework
    x, y, split, manifest = evaluation_set(source, data_dir, split, limit)

    files: dict[str, Path] = {}
    tested_fw = native
    if onnx:
        tested_fw = load(onnx).meta["framework"]
        files[tested_fw] = Path(onnx)
    exported = []
    for fw in FRAMEWORKS:
        if fw not in files:
            path = default_onnx_path(source, fw)
            if _needs_export(path, source, opset):
                path = export(fw, run, opset=opset)
                exported.append(str(path))
            files[fw] = path
    models = {fw: load(path) for fw, path in files.items()}
    tested = models[tested_fw]

    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "x.npy", x)
        framework_cli(native, "predict", "--run", run, "--inputs", Path(tmp) / "x.npy",
                      "--logits", Path(tmp) / "native.npy")
        native_logits = np.load(Path(tmp) / "native.npy")

    ort_logits = {fw: m.logits(to_layout(x, m.meta["layout"])) for fw, m in models.items()}
    report: dict[str, Any] = {
        "run": str(source.run_dir),
        "model": source.spec.name,
        "native_framework": native,
        "dataset": source.config.get("dataset"),
        "synthetic": bool(manifest.get("synthetic")),
        "split": split,
        "n": int(len(y)),
        "onnx_under_test": str(tested.path),
        "onnx_files": {fw: str(p) for fw, p in files.items()},
        "opsets": {fw: m.meta.get("opset") for fw, m in models.items()},
        "exported_now": exported,
        "native_vs_ort": {fw: compare(native_logits, logits, y) for fw, logits in ort_logits.items()},
        "torch_onnx_vs_keras_onnx": compare(ort_logits["torch"], ort_logits["keras"], y),
    }
    report["native_acc"] = report["native_vs_ort"][native]["reference_acc"]
    report["ort_acc"] = report["native_vs_ort"][tested_fw]["other_acc"]
    # The trainer's own test accuracy (results.json), an independent number for the same split.
    results = read_run(source.run_dir).get("results") or {}
    report["run_test_acc"] = results.get("test_acc") if split == "test" and not limit else None
    report["reference_evaluator"] = reference_checks(files, models, x[:REFERENCE_IMAGES])
    report["ok"] = bool(all(c["ok"] for c in report["native_vs_ort"].values())
                        and report["torch_onnx_vs_keras_onnx"]["ok"]
                        and all(c["ok"] for c in report["reference_evaluator"].values()))
    return report


def _cmp_row(name: str, c: dict[str, Any]) -> list[str]:
    return [name, f"{c['max_abs_diff']:.3g}", f"{c['tolerance']:.3g}", f"{c['top1_agreement_pct']:.2f}",
            f"{c['reference_acc']:.4f}", f"{c['other_acc']:.4f}", "yes" if c["ok"] else "**NO**"]


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown page."""
    tag = " (SYNTHETIC data)" if report["synthetic"] else ""
    nat = report["native_framework"]
    comparisons = [_cmp_row(f"{nat} native vs ORT ({fw} export)", c) for fw, c in report["native_vs_ort"].items()]
    comparisons.append(_cmp_row("ORT: torch export vs keras export", report["torch_onnx_vs_keras_onnx"]))
    lines = [
        f"# ONNX parity: {report['model']} ({nat}-trained)",
        "",
        f"Run `{report['run']}`; evaluation split **{report['split']}** of {report['dataset']}{tag}, "
        f"{report['n']} images. File under test: `{report['onnx_under_test']}`. ONNX opsets: "
        + ", ".join(f"{fw} export {o}" for fw, o in report.get("opsets", {}).items()) + ".",
        "",
        f"**Verdict: {'PASS' if report['ok'] else 'FAIL'}** (logits within 1e-4·max(1, max|logit|), 100% top-1 "
        "agreement, equal accuracy).",
        "",
        f"Accuracy: native {report['native_acc']:.4f}, ONNX Runtime {report['ort_acc']:.4f}"
        + (f", the run's own results.json {report['run_test_acc']:.4f}" if report["run_test_acc"] is not None else "")
        + ".",
        "",
        *table(["comparison", "max abs logit diff", "tolerance", "top-1 agreement %", "accuracy (ref)",
                "accuracy (other)", "ok"], comparisons, "lrrrrrl"),
        "", "## A second runtime: onnx.reference.ReferenceEvaluator vs ONNX Runtime", "",
        f"Same file, first {REFERENCE_IMAGES} images; bounds relative to max(1, max|logit|): "
        + ", ".join(f"{k} {v:g}" for k, v in REFERENCE_REL_BOUNDS.items()) + ".", "",
        *table(["file", "precision", "max abs logit diff", "bound", "ok"],
               [[f"`{path}`", c["precision"], f"{c['max_abs_diff']:.3g}", f"{c['bound']:.3g}",
                 "yes" if c["ok"] else "**NO**"] for path, c in report["reference_evaluator"].items()], "llrrl"),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = errors.ArgumentParser(prog="python -m export.parity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run folder")
    p.add_argument("--onnx", help="the .onnx file under test (default: <run>/model.onnx, exported if missing)")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--split", choices=("train", "val", "test"), help="default: test, else val")
    p.add_argument("--limit", type=int, help="only the first N images of the split")
    p.add_argument("--out", help="report folder (default: the run folder)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"opset of the files exported here (default {DEFAULT_OPSET}); other opsets are redone")
    args = p.parse_args(argv)
    check_writable(args.out or args.run, folder=True, what="the parity report folder")
    try:
        report = parity(args.run, args.onnx, args.data_dir, args.split, args.limit, opset=args.opset)
    except (FileNotFoundError, ValueError, RuntimeError) as e:  # RuntimeError: process.ChildError, DataError
        raise errors.UserError(str(e)) from None
    out = Path(args.out or report["run"])
    atomic_write_json(out / "parity.json", report)
    atomic_write_text(out / "parity.md", markdown(report))
    print(markdown(report))
    print(f"wrote {out / 'parity.md'} and {out / 'parity.json'}")
    if not report["ok"]:
        print("error: parity check failed (see the report)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(errors.run(main))
