"""``make bench-deploy``: the deployment figures of ``make quantize`` and ``make infer``, measured on this CPU.

    python -m export.bench_deploy --run RUN [--run RUN2 ...] [--data-dir data] [--images 10000] [--out results/deploy]

For every run, both frameworks' float32 exports are quantized to int8 and fp16 (``export/quantize.py``:
accuracy on the test split, top-1 agreement, max|d logit|, ORT batch-1 latency and batch-64 throughput
against float32, timed in alternating rounds in one process). Then ``make infer``'s folder path
(``export/infer.py``: find, decode in a thread pool, batch 64, classify) runs over ``--images`` PNG
files written from the first run's test split (repeated), and its time per image is compared with the
batch-64 throughput of the same file on preprocessed arrays, with 1 decoding thread and the default.

Writes ``<out>/deploy.md`` and ``deploy.json`` (atomically) with the machine and its load average:
other processes may share the CPU, and the report says how busy it was.
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
from shared.bench import timing
from shared.io import atomic_write_json, atomic_write_text
from shared.machine import machine_info
from shared.markdown import table
from shared.onnx_meta import FRAMEWORKS, default_onnx_path, resolve_source

# How long one cell of `make deploy-check` is timed: short blocks (a matrix has dozens of cells), and one block
# for a slow runtime (onnx.reference takes seconds per batch of 64).
CELL_TIMING = {False: timing.Settings(batch_size=64, iters=2, repeats=3, warmup=1, latency_iters=10, min_time=0.3),
               True: timing.Settings(batch_size=64, iters=1, repeats=1, warmup=1, latency_iters=2)}
BATCHES = (1, 64)


def runner_speed(run: Callable[[np.ndarray], Any], x: np.ndarray, slow: bool = False) -> dict[str, Any]:
    """Images/s of ``run`` at batch 1 and 64 (``b1``, ``b64``: :func:`shared.bench.timing.rate` summaries), on
    ``x``'s images repeated to fill the batch."""
    out = {}
    for batch in BATCHES:
        xb = np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])))
        out[f"b{batch}"] = timing.rate(lambda xb=xb: run(xb), batch, CELL_TIMING[slow])
    return out


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
        "# Deployment figures: int8 / fp16 ONNX files and folder-scale inference",
        "",
        f"Measured by `make bench-deploy` (`export/bench_deploy.py`) on {m['cpu']}, {m['cores']} cores; "
        f"load average (1/5/15 min) at the start {m['load_average']}, at the end {report['load_average_end']}. "
        "Other processes shared this CPU: absolute speeds are lower than on an idle machine; the ratios "
        "come from alternating rounds in one process, so both sides of a ratio saw the same load.",
        "",
        "## Quantized files against their float32 source",
        "",
    ]
    body = []
    for r in report["quantized"]:
        s = r["speed"]
        q = r["precision"]
        body.append([r["model"], r["framework"], q, f"{r['float32_acc']:.4f}", f"{r['acc']:.4f}",
                     f"{r['top1_agreement_pct']:.2f}%", f"{r['max_abs_logit_diff']:.3g}",
                     f"{s['float32']['throughput_ips_b64']:.0f} -> {s[q]['throughput_ips_b64']:.0f}",
                     f"**{r['speedup_b64']:.2f}x**",
                     f"{s['float32']['latency_ms_b1']:.2f} -> {s[q]['latency_ms_b1']:.2f}"])
    lines += table(("run model", "export", "precision", "float32 acc", "acc", "top-1 agreement", "max abs d logit",
                    "batch-64 img/s float32 -> q", "speedup b64", "batch-1 ms float32 -> q"), body)
    lines += ["", "Accuracy is on the runs' test split (synthetic data, 500 images; the runs are short CPU "
              "trainings, not paper results). int8: ORT static QDQ, per-channel int8 weights, uint8 activations, "
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
    p = argparse.ArgumentParser(prog="python -m export.bench_deploy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, help="trained run folder (repeatable)")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--images", type=int, default=10_000, help="images in the make-infer folder test")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="whose exports to quantize")
    p.add_argument("--out", default="results/deploy")
    args = p.parse_args(argv)
    try:
        report: dict[str, Any] = {"machine": machine_info(), "runs": args.run, "quantized": []}
        for run in args.run:
            for fw in args.frameworks.split(","):
                for precision in PRECISIONS:
                    r = quantize(run, precision, fw, data_dir=args.data_dir)
                    write_report(r)
                    print(f"{r['model']} {fw} {precision}: agreement {r['top1_agreement_pct']:.2f}%, "
                          f"speedup b64 {r['speedup_b64']:.2f}x", flush=True)
                    report["quantized"].append(r)
        first = default_onnx_path(resolve_source(args.run[0]), resolve_source(args.run[0]).framework)
        report["infer_folder"] = infer_folder_bench(first, args.data_dir, args.images, [1, 2])
        report["load_average_end"] = machine_info()["load_average"]
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        raise SystemExit(f"error: {e}") from None
    out = Path(args.out)
    atomic_write_json(out / "deploy.json", report)
    atomic_write_text(out / "deploy.md", markdown(report))
    print(markdown(report))
    print(f"wrote {out / 'deploy.md'} and {out / 'deploy.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
