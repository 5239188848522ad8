"""``make bench-deploy``: how fast a run's exports run in each runtime and precision, and ``make infer`` on a folder.

    python -m export.bench_deploy --run RUN [--run RUN2 ...] [--data-dir data] [--images 10000] [--out results/deploy]

Every deployment speed figure is timed here, ``make deploy-check``'s cells too (docs/export.md, "Measured results").
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from export import infer
from export.quantize import PRECISIONS, quantize, write_report
from shared import errors
from shared.bench import timing
from shared.export_source import default_onnx_path, resolve_source
from shared.io import atomic_write_json, atomic_write_text, check_writable
from shared.machine import machine_info
from shared.markdown import table
from shared.process import FRAMEWORKS

# How long things are timed: a cell of `make deploy-check` in short blocks (a matrix has dozens of cells), a
# slow runtime's cell in one block (onnx.reference takes seconds per batch of 64), the runtimes side by side in
# longer alternating rounds (their ratios are this report's result).
TIMING = {"cell": timing.TimingPlan(batch_size=64, iters=2, repeats=3, warmup=1, latency_iters=10, min_time=0.3),
          "slow cell": timing.TimingPlan(batch_size=64, iters=1, repeats=1, warmup=1, latency_iters=2),
          "side by side": timing.TimingPlan(batch_size=64, iters=3, repeats=7, warmup=2, latency_iters=10,
                                            min_time=0.5)}
BATCHES = (1, 64)


def _batch(x: np.ndarray, batch: int) -> np.ndarray:
    """``x``'s images repeated to fill a batch."""
    return np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])))


def runner_speed(run: Callable[[np.ndarray], Any], x: np.ndarray, slow: bool = False) -> dict[str, Any]:
    """Images/s of ``run`` at batch 1 and 64 (``b1``, ``b64``: :func:`shared.bench.timing.rate` summaries)."""
    settings = TIMING["slow cell" if slow else "cell"]
    batches = {b: _batch(x, b) for b in BATCHES}
    return {f"b{b}": timing.rate(lambda xb=xb: run(xb), b, settings) for b, xb in batches.items()}


def interleaved_rates(runs: dict[str, Callable[[np.ndarray], Any]], x: np.ndarray, batch: int) -> dict[str, Any]:
    """Images/s of each ``run`` on a batch of ``batch`` of ``x``'s images, timed in alternating rounds
    (:func:`shared.bench.timing.interleaved_rates`)."""
    xb = _batch(x, batch)
    return timing.interleaved_rates({name: (lambda run=run: run(xb)) for name, run in runs.items()}, batch,
                                    TIMING["side by side"])


def quantized_speed(report: dict[str, Any]) -> dict[str, Any]:
    """Images/s of a ``make quantize`` file and its float32 source in ONNX Runtime at batch 1 and 64, in
    alternating rounds; the speedups at both batch sizes."""
    q = report["precision"]
    models = {"float32": infer.load(report["float32_file"]), q: infer.load(report["file"])}
    x = np.random.default_rng(0).standard_normal((64, *models["float32"].input_shape), dtype=np.float32)
    runs = {name: (lambda xb, m=m: m.session.run(None, {"input": xb})) for name, m in models.items()}
    speed = {f"b{b}": interleaved_rates(runs, x, b) for b in BATCHES}
    return {"speed": speed, **{f"speedup_b{b}": speed[f"b{b}"][q]["median"] / speed[f"b{b}"]["float32"]["median"]
                               for b in BATCHES}}


# The rows of the side-by-side table: (row name, runtime, which file: the float32 export or its int8 twin).
SIDE_BY_SIDE = (("onnxruntime float32", "onnxruntime", "float32"), ("openvino f32 hint", "openvino-f32", "float32"),
                ("openvino default hint", "openvino", "float32"), ("opencv float32", "opencv", "float32"),
                ("onnxruntime int8", "onnxruntime", "int8"), ("openvino int8", "openvino", "int8"))
BASELINE_ROW = "onnxruntime float32"


def runtimes_side_by_side(float_path: Path, int8_path: Path | None, data_dir: str) -> dict[str, Any]:
    """The ``make infer`` runtimes on one run's float32 (and int8) file: accuracy, top-1 agreement and max |logit
    difference| against ONNX Runtime float32 on the test split, and interleaved images/s at batch 1 and 64."""
    from export.quantize import dataset_images
    from export.runtimes import RUNTIMES
    from shared.bench.timing import first_line
    from shared.machine import cpu_flags, cpu_has_bf16, cpu_has_vnni

    meta = infer.load(float_path).meta
    x, y, split = dataset_images(meta, data_dir)
    files = {"float32": float_path, "int8": int8_path}
    runs, rows = {}, {}
    for name, runtime, which in SIDE_BY_SIDE:
        row: dict[str, Any] = {"runtime": runtime, "file": str(files[which]), "precision": which}
        rows[name] = row
        if files[which] is None or not RUNTIMES[runtime].installed:
            row["error"] = "no int8 file" if files[which] is None else RUNTIMES[runtime].not_installed()
            continue
        try:
            runner = RUNTIMES[runtime].open(files[which])
            logits = np.concatenate([runner.run(x[i:i + 64]) for i in range(0, len(x), 64)])
        except Exception as e:  # noqa: BLE001 the runtime's own reason is the row
            row["error"] = first_line(e)
            continue
        row.update(info=runner.info, logits=logits, acc=float(np.mean(logits.argmax(1) == y)))
        runs[name] = runner.run
    base = rows[BASELINE_ROW]["logits"]
    for row in rows.values():
        if "logits" in row:
            logits = row.pop("logits")
            row["top1_agreement_pct"] = float(100 * np.mean(logits.argmax(1) == base.argmax(1)))
            row["max_abs_logit_diff"] = float(np.abs(logits.astype(np.float64) - base).max())
    speed = {f"b{b}": interleaved_rates(runs, x, b) for b in BATCHES}
    for name, row in rows.items():
        if name in runs:
            row["images_per_s"] = {b: speed[b][name]["median"] for b in speed}
            row["ratio_b64"] = speed["b64"][name]["median"] / speed["b64"][BASELINE_ROW]["median"]
    return {"file": str(float_path), "int8_file": str(int8_path) if int8_path else None, "split": split,
            "n": int(len(y)), "model": meta["model"], "rows": rows, "speed": speed, "cpu_flags": cpu_flags(),
            "cpu_has_bf16": cpu_has_bf16(), "cpu_has_vnni": cpu_has_vnni(), "best_float32": best_float32(rows)}


def best_float32(rows: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The fastest row at batch 64 that computes in float32 (f32 hint) and agrees with ORT float32 on every top-1
    class, with its ratio to ORT float32."""
    fp32 = {name: r for name, r in rows.items() if r["precision"] == "float32" and "ratio_b64" in r
            and r.get("info", {}).get("precision_hint", "f32") == "f32" and r["top1_agreement_pct"] == 100.0}
    if not fp32:
        return None
    name = max(fp32, key=lambda n: fp32[n]["ratio_b64"])
    return {"row": name, "runtime": fp32[name]["runtime"], "ratio_b64": fp32[name]["ratio_b64"]}


def side_by_side_markdown(s: dict[str, Any]) -> list[str]:
    """The side-by-side section: one table, the best float32 runtime, and what the CPU's flags mean here."""
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in s["cpu_flags"].items())
    lines = [f"## Runtimes side by side: {s['model']}, `{s['file']}`", "",
             f"Accuracy, top-1 agreement and max |logit difference| against ONNX Runtime float32 on the {s['split']} "
             f"split ({s['n']} images); images/s timed in alternating rounds in one process. CPU flags: {flags}.", ""]
    body = []
    for name, r in s["rows"].items():
        hint = r.get("info", {}).get("precision_hint")
        label = name + (f" (hint {hint})" if hint and "default" in name else "")
        if "error" in r:
            body.append([label, "", "", "", "", "", f"{r['error']}"])
            continue
        ips = r["images_per_s"]
        body.append([label, f"{r['acc']:.4f}", f"{r['top1_agreement_pct']:.2f}%", f"{r['max_abs_logit_diff']:.2g}",
                     f"{ips['b1']:,.0f}", f"{ips['b64']:,.0f}", f"**{r['ratio_b64']:.2f}x**"])
    lines += table(("runtime and file", "accuracy", "top-1 agreement", "max abs d logit", "images/s b1",
                    "images/s b64", "b64 vs ORT float32"), body, "lrrrrrr")
    best = s["best_float32"]
    lines += [""]
    if best:
        lines += [f"Best float32 runtime here: **{best['row']}** at **{best['ratio_b64']:.2f}x** ONNX Runtime's "
                  "float32 throughput at batch 64 (`make infer RUNTIME=" + best["runtime"] + "`)."]
    default = s["rows"].get("openvino default hint", {})
    hint = default.get("info", {}).get("precision_hint")
    if not s["cpu_has_bf16"]:
        lines += ["", "This CPU has no native bf16 (neither avx512_bf16 nor amx_bf16): OpenVINO's default hint is "
                  f"{hint or 'f32'} here, so there is no bf16 row; the figures are float32 and int8."]
    elif "ratio_b64" in default:
        lines += ["", f"bf16 (OpenVINO's default hint on this CPU, {hint}): {default['ratio_b64']:.2f}x ORT float32 "
                  f"at {default['top1_agreement_pct']:.2f}% top-1 agreement, max |d logit| "
                  f"{default['max_abs_logit_diff']:.2g} (`make infer RUNTIME=openvino`)."]
    lines += ["", "int8 uses " + ("the CPU's VNNI instructions." if s["cpu_has_vnni"] else
                                  "AVX2 (this CPU has no VNNI: no avx512_vnni, avx_vnni or amx_int8).")]
    return lines


def infer_folder_bench(onnx_path: Path, data_dir: str, n_images: int, workers: list[int]) -> dict[str, Any]:
    """Time per image of the folder pipeline vs ORT alone at batch 64 on the same images already decoded and
    normalized in memory; ORT alone is timed right before and right after each folder run (mean of the two),
    so that both see the same load."""
    from PIL import Image

    from datasets import load_prepared

    model = infer.load(onnx_path)
    prepared = load_prepared(model.meta["dataset"], data_dir, prepare_missing=False)
    x, _ = prepared.arrays("test")
    pixels = x[np.arange(n_images) % len(x)]
    arrays = infer.preprocess_batch(pixels, model)
    out: dict[str, Any] = {"file": str(onnx_path), "images": n_images, "image_px": int(x.shape[1])}

    def ort_alone() -> float:
        t = time.perf_counter()
        model.logits(arrays, 64)
        return time.perf_counter() - t

    with tempfile.TemporaryDirectory() as tmp:
        for i, img in enumerate(pixels):  # 100 per folder, PNG, as a user's folder of small images
            folder = Path(tmp) / f"{i // 100:03d}"
            folder.mkdir(exist_ok=True)
            Image.fromarray(img).save(folder / f"img{i:05d}.png")
        out["bytes_on_disk"] = sum(f.stat().st_size for f in Path(tmp).rglob("*.png"))
        ort_alone()  # warm-up
        runs = {}
        for w in workers:
            before = ort_alone()
            t = time.perf_counter()
            paths = infer.collect_images([tmp])
            results = list(infer.classify_stream(model, paths, k=5, batch_size=64, workers=w))
            dt = time.perf_counter() - t
            after = ort_alone()
            if len(results) != n_images or any(r["error"] for r in results):
                raise RuntimeError(f"the folder run classified {len(results)} of {n_images} images with errors")
            ort_ms = 1e3 * (before + after) / 2 / n_images
            runs[f"workers={w}"] = {"seconds": dt, "images_per_s": n_images / dt, "ms_per_image": 1e3 * dt / n_images,
                                    "ort_alone_ms_per_image": ort_ms, "ort_alone_before_after_s": [before, after],
                                    "ratio_to_ort_alone": 1e3 * dt / n_images / ort_ms}
        # Decoding alone (1 thread), to say what share of the time it takes.
        t = time.perf_counter()
        for p in paths[: min(2000, n_images)]:
            infer.decode_image(p, model.meta["input_size"], model.meta.get("resize", "crop"))
        out["decode_ms_per_image_1_thread"] = 1e3 * (time.perf_counter() - t) / min(2000, n_images)
    out["infer"] = runs
    return out


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Deployment figures: runtimes side by side, int8 / fp16 ONNX files, folder-scale inference",
        "",
        f"Measured by `make bench-deploy` (`export/bench_deploy.py`) on {m['cpu']}, {m['cores']} cores; "
        f"load average (1/5/15 min) at the start {m['load_average']}, at the end {report['load_average_end']}. "
        "Absolute speeds depend on what else ran (the load average); the ratios come from alternating rounds in "
        "one process, so both sides of a ratio saw the same load.",
        "",
    ]
    for side in report.get("side_by_side", []):
        lines += side_by_side_markdown(side) + [""]
    lines += ["## Quantized files against their float32 source", ""]
    body = []
    for r in report["quantized"]:
        s = r["speed"]
        q = r["precision"]
        body.append([r["model"], r["framework"], q, f"{r['float32_acc']:.4f}", f"{r['acc']:.4f}",
                     f"{r['top1_agreement_pct']:.2f}%", f"{r['max_abs_logit_diff']:.3g}",
                     f"{s['b64']['float32']['median']:.0f} -> {s['b64'][q]['median']:.0f}",
                     f"**{r['speedup_b64']:.2f}x**",
                     f"{s['b1']['float32']['median']:.0f} -> {s['b1'][q]['median']:.0f}",
                     f"{r['speedup_b1']:.2f}x"])
    lines += table(("run model", "export", "precision", "float32 acc", "acc", "top-1 agreement", "max abs d logit",
                    "batch-64 img/s float32 -> q", "speedup b64", "batch-1 img/s float32 -> q", "speedup b1"), body)
    splits = sorted({f"{r['split']} split of {r['dataset']}{' (SYNTHETIC data)' if r['synthetic'] else ''}, "
                     f"{r['n']} images" for r in report["quantized"]})
    lines += ["", f"Accuracy is on the runs' {'; '.join(splits)} (the runs are short CPU trainings, not paper "
              "results). int8: ORT static QDQ, per-channel int8 weights, uint8 activations, "
              "MinMax on 256 training images. fp16: float16 weights and activations, float32 input/output; this "
              "CPU has no float16 arithmetic for ORT's CPU kernels, so fp16 is expected to be slower here."]
    fb = report["infer_folder"]
    lines += ["", f"## `make infer` over a folder of {fb['images']:,} PNG files ({fb['image_px']} px)", "",
              f"`{fb['file']}`: find the files, decode them (thread pool), batch 64, classify, against ORT alone at "
              "batch 64 on the same images already decoded and normalized in memory (timed right before and after "
              f"each folder run). Decoding alone, 1 thread: {fb['decode_ms_per_image_1_thread']:.3f} ms/image.", ""]
    lines += table(("decoding threads", "wall s", "images/s", "ms/image", "ORT alone ms/image", "ratio"),
                   [[k.split("=")[1], f"{r['seconds']:.1f}", f"{r['images_per_s']:.0f}", f"{r['ms_per_image']:.3f}",
                     f"{r['ort_alone_ms_per_image']:.3f}", f"**{r['ratio_to_ort_alone']:.2f}x**"]
                    for k, r in fb["infer"].items()])
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = errors.ArgumentParser(prog="python -m export.bench_deploy", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, help="trained run folder (repeatable)")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--images", type=int, default=10_000, help="images in the make-infer folder test")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="whose exports to quantize")
    p.add_argument("--out", default="results/deploy")
    args = p.parse_args(argv)
    out = check_writable(args.out, folder=True, what="bench-deploy report folder")
    try:
        report: dict[str, Any] = {"machine": machine_info(), "runs": args.run, "quantized": [], "side_by_side": []}
        for run in args.run:
            for fw in args.frameworks.split(","):
                for precision in PRECISIONS:
                    r = quantize(run, precision, fw, data_dir=args.data_dir)
                    write_report(r)
                    r |= quantized_speed(r)
                    print(f"{r['model']} {fw} {precision}: agreement {r['top1_agreement_pct']:.2f}%, "
                          f"speedup b64 {r['speedup_b64']:.2f}x", flush=True)
                    report["quantized"].append(r)
            source = resolve_source(run)
            float_path = default_onnx_path(source, source.framework)
            int8 = next((Path(r["file"]) for r in report["quantized"] if r["float32_file"] == str(float_path)
                         and r["precision"] == "int8"), None)
            side = runtimes_side_by_side(float_path, int8, args.data_dir)
            print("\n".join(side_by_side_markdown(side)), flush=True)
            report["side_by_side"].append(side)
        first = default_onnx_path(resolve_source(args.run[0]), resolve_source(args.run[0]).framework)
        report["infer_folder"] = infer_folder_bench(first, args.data_dir, args.images, [1, 2])
        report["load_average_end"] = machine_info()["load_average"]
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        raise errors.UserError(str(e)) from None
    atomic_write_json(out / "deploy.json", report)
    atomic_write_text(out / "deploy.md", markdown(report))
    print(markdown(report))
    print(f"wrote {out / 'deploy.md'} and {out / 'deploy.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(errors.run(main))
