"""``make infer``: classify images with an exported model in ONNX Runtime, OpenVINO or OpenCV DNN (docs/export.md).

    python -m export.infer model.onnx a.jpg photos/ 'shots/**/*.png' [--topk 5] [--out preds.csv|preds.json]
                           [--runtime onnxruntime|openvino|openvino-f32|opencv] [--batch-size 64] [--json]
    python -m export.infer model.onnx --npy batch.npy      # already-preprocessed float32 input

The preprocessing comes from the file's own metadata. Imports neither torch nor tensorflow.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from export.model_file import DEFAULT_BATCH, InferenceError, OnnxModel, available_providers, load
from shared import errors
from shared.export_meta import RESIZE_MODES

# What a folder or a glob contributes: files with these suffixes (case-insensitive), anything Pillow decodes.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
OUT_FORMATS = (".csv", ".json")


# Finding images -----------------------------------------------------------------------------------------
def is_image_name(path: str | Path) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def _folder_images(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, sorted; symlinks to files (broken ones too) included,
    symlinked folders not followed (no cycles)."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [Path(root) / f for f in sorted(files) if is_image_name(f)]
    return found


def collect_images(items: Iterable[str | Path]) -> list[Path]:
    """Files, folders (recursive) and glob patterns -> image paths, in order, each once.

    A named file is kept whatever it is (if it cannot be read, that is reported per file); a folder or
    a pattern that yields no image is a one-line error.
    """
    paths: list[Path] = []
    for item in map(str, items):
        if glob.has_magic(item):
            matches = [Path(m) for m in sorted(glob.glob(item, recursive=True))]
            found = [q for m in matches for q in (_folder_images(m) if m.is_dir() else [m] if is_image_name(m) else [])]
            if not found:
                raise InferenceError(f"no images match {item!r} (image extensions: {', '.join(IMAGE_EXTENSIONS)})")
        elif Path(item).is_dir():
            found = _folder_images(Path(item))
            if not found:
                raise InferenceError(f"no images in folder {item} (searched recursively for "
                                     f"{', '.join(IMAGE_EXTENSIONS)})")
        else:
            found = [Path(item)]
        paths += found
    return list(dict.fromkeys(paths))


# Decoding and preprocessing ---------------------------------------------------------------------------
def decode_image(path: str | Path, size: int, resize: str = "crop") -> tuple[np.ndarray, str | None]:
    """One image file as uint8 RGB pixels (size, size, 3), and a note if it was converted.

    An unreadable or undecodable file raises :class:`InferenceError` with the reason.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if resize not in RESIZE_MODES:
        raise InferenceError(f"unknown resize mode {resize!r}; valid choices: {', '.join(RESIZE_MODES)}")
    if path.is_symlink() and not path.exists():
        raise InferenceError(f"broken symlink: {path} -> {os.readlink(path)}")
    if not path.exists():
        raise InferenceError(f"image not found: {path}")
    if not path.is_file():
        raise InferenceError(f"not a file: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            rgb = img.convert("RGB")
    except PermissionError as e:
        raise InferenceError(f"cannot read image {path}: {e.strerror}") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise InferenceError(f"cannot decode image {path}: {e}") from e
    note = None if mode == "RGB" else f"{mode} image converted to RGB"
    if rgb.size != (size, size):
        if resize == "stretch":
            rgb = rgb.resize((size, size), Image.BILINEAR)
        else:
            w, h = rgb.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            rgb = rgb.resize((nw, nh), Image.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            rgb = rgb.crop((left, top, left + size, top + size))
    return np.asarray(rgb, dtype=np.uint8), note


def preprocess_array(pixels: np.ndarray, model: OnnxModel) -> np.ndarray:
    """uint8 RGB pixels (H, W, 3), already of the model's size, normalized into the file's layout."""
    size = model.meta["input_size"]
    if pixels.shape != (size, size, 3):
        raise InferenceError(f"pixels must be ({size}, {size}, 3) RGB uint8; got {pixels.shape}")
    return preprocess_batch(pixels[None], model)[0]


def preprocess_batch(pixels: np.ndarray, model: OnnxModel) -> np.ndarray:
    """uint8 RGB pixels (N, H, W, 3) normalized into the file's layout (the same float32 operations as
    ``shared/data.py``: divide by 255, subtract the mean, divide by the std)."""
    norm = model.meta["normalization"]
    mean = np.asarray(norm["mean"], np.float32)
    std = np.asarray(norm["std"], np.float32)
    x = (pixels.astype(np.float32) / 255.0 - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if model.meta["layout"] == "NCHW" else x


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, computed stably in float64."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def top_k(probs: np.ndarray, class_names: list[str], k: int) -> list[list[tuple[str, float]]]:
    """The ``k`` most probable classes of each row, as (name, probability)."""
    k = min(k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(class_names[j], float(p[j])) for j in row] for p, row in zip(probs, order)]


# Classification at folder scale -----------------------------------------------------------------------
def _decode_or_error(path: Path, size: int, resize: str) -> tuple[np.ndarray | None, str | None, str | None]:
    try:
        return (*decode_image(path, size, resize), None)
    except InferenceError as e:
        return None, None, str(e)


def default_workers() -> int:
    """Decoding threads: half the cores, 1 to 4. ORT's intra-op threads use every core during a batch; on a
    2-core machine a second decoding thread competed with them and made the folder run slower
    (results/deploy/deploy.md), so decoding gets a share of the cores, not all of them."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def decoded_batches(paths: list[Path], size: int, resize: str, batch_size: int, workers: int
                    ) -> Iterator[tuple[list[Path], list[tuple[np.ndarray | None, str | None, str | None]]]]:
    """(paths, [(pixels | None, note, error)]) per batch, in order; a thread pool decodes the next
    batch while the caller classifies the current one (Pillow releases the GIL while decoding)."""
    chunks = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        pending: deque[tuple[list[Path], list[Future]]] = deque()

        def submit(i: int) -> None:
            if i < len(chunks):
                pending.append((chunks[i], [pool.submit(_decode_or_error, p, size, resize) for p in chunks[i]]))

        submit(0)
        submit(1)
        for i in range(len(chunks)):
            chunk, futures = pending.popleft()
            submit(i + 2)
            yield chunk, [f.result() for f in futures]


def classify_stream(model: OnnxModel, paths: list[Path], k: int = 5, resize: str | None = None,
                    batch_size: int = DEFAULT_BATCH, workers: int | None = None) -> Iterator[dict[str, Any]]:
    """``{"image", "top", "note", "error"}`` per path, in order; a failed file has ``top == []`` and the reason."""
    resize = resize or model.meta.get("resize", "crop")
    if resize not in RESIZE_MODES:
        raise InferenceError(f"unknown resize mode {resize!r}; valid choices: {', '.join(RESIZE_MODES)}")
    workers = workers or default_workers()
    names = model.meta["class_names"]
    for chunk, decoded in decoded_batches(paths, model.meta["input_size"], resize, batch_size, workers):
        ok = [i for i, (pixels, _, _) in enumerate(decoded) if pixels is not None]
        tops: dict[int, list[tuple[str, float]]] = {}
        if ok:
            x = preprocess_batch(np.stack([decoded[i][0] for i in ok]), model)
            tops = dict(zip(ok, top_k(softmax(model.logits(x, batch_size)), names, k)))
        for i, (path, (_, note, error)) in enumerate(zip(chunk, decoded)):
            yield {"image": str(path), "top": tops.get(i, []), "note": note, "error": error}


def classify(model: OnnxModel, images: list[str | Path], k: int = 5, resize: str | None = None,
             batch_size: int = DEFAULT_BATCH) -> list[dict[str, Any]]:
    """Top-k predictions of each image file: ``{"image", "top", "note", "error"}`` (see :func:`classify_stream`)."""
    return list(classify_stream(model, [Path(p) for p in images], k, resize, batch_size))


# Output -------------------------------------------------------------------------------------------------
def check_out(out: str | None) -> None:
    if out and Path(out).suffix.lower() not in OUT_FORMATS:
        raise InferenceError(f"--out must end in {' or '.join(OUT_FORMATS)}; got {out}")


def results_csv(results: list[dict[str, Any]], k: int) -> str:
    """One row per image: path, status, class_1, prob_1 ... class_k, prob_k, note, error."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "status", *[f"{c}_{i}" for i in range(1, k + 1) for c in ("class", "prob")],
                     "note", "error"])
    for r in results:
        cells = [v for name, prob in r["top"] for v in (name, f"{prob:.6f}")]
        cells += [""] * (2 * k - len(cells))
        writer.writerow([r["image"], "error" if r["error"] else "ok", *cells, r["note"] or "", r["error"] or ""])
    return buf.getvalue()


def results_json(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"image": r["image"], "status": "error" if r["error"] else "ok",
             "top": [{"class": c, "prob": p} for c, p in r["top"]], "note": r["note"], "error": r["error"]}
            for r in results]


def write_results(out: str | Path, results: list[dict[str, Any]], k: int) -> Path:
    """``results`` as CSV or JSON (by suffix), written atomically."""
    from shared.io import atomic_write_text

    out = Path(out)
    text = results_csv(results, k) if out.suffix.lower() == ".csv" else json.dumps(results_json(results), indent=1)
    return atomic_write_text(out, text)


def _print_result(r: dict[str, Any]) -> None:
    note = f"  [{r['note']}]" if r["note"] else ""
    print(f"{r['image']}{note}")
    for rank, (name, prob) in enumerate(r["top"], start=1):
        print(f"  {rank}. {name:<24} {prob:.4f}")


def _parser() -> argparse.ArgumentParser:
    from export.runtimes import INFER_RUNTIMES

    p = errors.ArgumentParser(prog="python -m export.infer", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("onnx", help="an .onnx file written by `make export` or `make quantize` (OpenVINO: or a .xml IR)")
    p.add_argument("images", nargs="*", help="image files, folders (recursive) or glob patterns")
    p.add_argument("--npy", help="a .npy batch already preprocessed into the file's layout (float32)")
    p.add_argument("--topk", type=int, default=5, help="classes to report per image (default 5)")
    p.add_argument("--resize", choices=RESIZE_MODES, help="override the file's resize mode")
    p.add_argument("--out", help="write every prediction to this .csv or .json file")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH,
                   help=f"images per ORT run (default {DEFAULT_BATCH})")
    p.add_argument("--workers", type=int, help="decoding threads (default: half the cores, 1 to 4)")
    p.add_argument("--runtime", default="onnxruntime", help=f"{', '.join(INFER_RUNTIMES)} (default onnxruntime)")
    p.add_argument("--provider", default="cpu",
                   help="ONNX Runtime execution provider, of those this build offers: "
                   f"{', '.join(available_providers())} (default cpu)")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: ORT's choice)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    from shared.io import check_writable

    parser = _parser()
    args = parser.parse_args(argv)
    if not args.images and not args.npy:
        raise errors.UserError("give image files, folders or glob patterns, or --npy FILE")
    for flag, value in (("--topk", args.topk), ("--batch-size", args.batch_size)):
        if value < 1:
            raise errors.UserError(f"{flag} must be >= 1; got {value}")
    check_out(args.out)
    if args.out:  # before any image is read: an unwritable --out must not cost the whole run
        check_writable(args.out, what="predictions file")
    model = load(args.onnx, threads=args.threads, provider=args.provider, runtime=args.runtime)
    if args.npy:
        if not Path(args.npy).is_file():
            raise InferenceError(f"input file not found: {args.npy}")
        probs = softmax(model.logits(np.load(args.npy), args.batch_size))
        results = [{"image": f"{args.npy}[{i}]", "top": top, "note": None, "error": None}
                   for i, top in enumerate(top_k(probs, model.meta["class_names"], args.topk))]
    else:
        paths = collect_images(args.images)
        results = _classify_with_progress(model, paths, args)
    failed = sum(1 for r in results if r["error"])
    if args.out:
        write_results(args.out, results, args.topk)
    if args.json:
        print(json.dumps(results_json(results), indent=2))
    elif not args.out:
        hint = (model.info or {}).get("precision_hint")
        print(f"# {model.path} ({model.meta['model']}, {model.meta['framework']} export, {model.meta['layout']}, "
              f"{model.meta['input_size']}px, dataset {model.meta.get('dataset', '?')}; {model.runtime}"
              + (f" at {hint}" if hint else "") + ")")
        for r in results:
            if not r["error"]:
                _print_result(r)
    if args.out:
        print(f"wrote {args.out} ({len(results)} rows)")
    # The count is the last line: on stderr, so that --json keeps stdout pure JSON.
    sys.stdout.flush()
    print(f"classified {len(results) - failed} of {len(results)} images; {failed} failed", file=sys.stderr)
    return 1 if failed else 0


def _classify_with_progress(model: OnnxModel, paths: list[Path], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every result, with a tqdm bar on stderr for more than two batches; failures are reported as they come."""
    show = not args.quiet and len(paths) > 2 * args.batch_size
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), unit="img", file=sys.stderr, dynamic_ncols=True)
    results = []
    try:
        for r in classify_stream(model, paths, args.topk, args.resize, args.batch_size, args.workers):
            results.append(r)
            if r["error"] and bar:
                bar.write(f"failed: {r['error']}", file=sys.stderr)
            elif r["error"]:
                print(f"failed: {r['error']}", file=sys.stderr)
            if bar:
                bar.update()
    finally:
        if bar:
            bar.close()
    return results


if __name__ == "__main__":
    sys.exit(errors.run(main))
