"""Classify images with an exported ``.onnx`` file and ONNX Runtime alone.

    python -m export.infer model.onnx a.jpg b.png [--topk 5] [--json]
    python -m export.infer model.onnx --npy batch.npy      # already-preprocessed float32 input

Everything the preprocessing needs is read from the file's metadata (``shared/onnx_meta.py``):
the image is decoded with Pillow and converted to RGB (grayscale, palette and RGBA images are
converted, and the output says so), resized to the model's ``input_size`` (``resize=crop``: the
shorter side to ``input_size`` then a center crop, keeping the aspect ratio; ``resize=stretch``:
both sides to ``input_size``; as the training data was prepared: cats_vs_dogs ``crop``, CIFAR-10/100 and
the synthetic set ``stretch``, random-weight exports by stem), scaled to ``[0, 1]``, normalized
with the file's ``mean``/``std`` and laid out as the file's ``layout`` (NCHW or NHWC).
The probabilities are the softmax of the logits. This module imports neither torch nor tensorflow.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.onnx_meta import RESIZE_MODES, parse_metadata


class InferenceError(ValueError):
    """A user-facing error: bad model file, unreadable image, wrong input shape."""


@dataclass
class OnnxModel:
    """An ONNX Runtime session and the file's decoded metadata."""

    path: Path
    session: Any
    meta: dict[str, Any]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The per-image shape the file expects, in its layout (C, H, W) or (H, W, C)."""
        s, c = self.meta["input_size"], self.meta["spec"].get("in_channels", 3)
        return (c, s, s) if self.meta["layout"] == "NCHW" else (s, s, c)

    def logits(self, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Logits of a batch already preprocessed into the file's layout; checks its shape first."""
        check_input(x, self)
        name = self.session.get_inputs()[0].name
        out = [self.session.run(None, {name: np.ascontiguousarray(x[i:i + batch_size], np.float32)})[0]
               for i in range(0, len(x), batch_size)]
        return np.concatenate(out)


def load(path: str | Path, threads: int | None = None) -> OnnxModel:
    """Open ``path`` with ONNX Runtime (CPU); clear errors for a missing, truncated or foreign file."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise InferenceError(f"ONNX file not found: {path}")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own exception types for protobuf/graph errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InferenceError(f"{path} is not a readable ONNX model (truncated or corrupt?): {first}") from e
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


def load_image(path: str | Path, model: OnnxModel, resize: str | None = None) -> tuple[np.ndarray, str | None]:
    """One image file preprocessed for ``model`` (shape ``input_shape``), and a note if it was converted."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InferenceError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InferenceError(f"cannot decode image {path}: {e}") from e
    note = None if mode == "RGB" else f"{mode} image converted to RGB"
    size = model.meta["input_size"]
    resize = resize or model.meta.get("resize", "crop")
    if resize not in RESIZE_MODES:
        raise InferenceError(f"unknown resize mode {resize!r}; valid choices: {', '.join(RESIZE_MODES)}")
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
    return preprocess_array(np.asarray(rgb, dtype=np.uint8), model), note


def preprocess_array(pixels: np.ndarray, model: OnnxModel) -> np.ndarray:
    """uint8 RGB pixels (H, W, 3), already of the model's size, normalized into the file's layout."""
    size = model.meta["input_size"]
    if pixels.shape != (size, size, 3):
        raise InferenceError(f"pixels must be ({size}, {size}, 3) RGB uint8; got {pixels.shape}")
    norm = model.meta["normalization"]
    mean = np.asarray(norm["mean"], np.float32)
    std = np.asarray(norm["std"], np.float32)
    x = (pixels.astype(np.float32) / 255.0 - mean) / std
    return x.transpose(2, 0, 1) if model.meta["layout"] == "NCHW" else x


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


def classify(model: OnnxModel, images: list[str], k: int = 5, resize: str | None = None) -> list[dict[str, Any]]:
    """Top-k predictions of each image file: ``{"image", "top", "note"}``."""
    xs, notes = zip(*(load_image(p, model, resize) for p in images))
    probs = softmax(model.logits(np.stack(xs)))
    return [{"image": str(p), "top": top, "note": note}
            for p, top, note in zip(images, top_k(probs, model.meta["class_names"], k), notes)]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export.infer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("onnx", help="an .onnx file written by `make export`")
    p.add_argument("images", nargs="*", help="image files (anything Pillow decodes: JPEG, PNG, ...)")
    p.add_argument("--npy", help="a .npy batch already preprocessed into the file's layout (float32)")
    p.add_argument("--topk", type=int, default=5, help="classes to print per image (default 5)")
    p.add_argument("--resize", choices=RESIZE_MODES, help="override the file's resize mode")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.images and not args.npy:
        parser.error("give image files or --npy FILE")
    if args.topk < 1:
        parser.error(f"--topk must be >= 1; got {args.topk}")
    try:
        model = load(args.onnx)
        if args.npy:
            if not Path(args.npy).is_file():
                raise InferenceError(f"input file not found: {args.npy}")
            probs = softmax(model.logits(np.load(args.npy)))
            results = [{"image": f"{args.npy}[{i}]", "top": top, "note": None}
                       for i, top in enumerate(top_k(probs, model.meta["class_names"], args.topk))]
        else:
            results = classify(model, args.images, args.topk, args.resize)
    except InferenceError as e:
        raise SystemExit(f"error: {e}") from None
    if args.json:
        print(json.dumps([{**r, "top": [{"class": c, "prob": p} for c, p in r["top"]]} for r in results], indent=2))
        return 0
    print(f"# {model.path} ({model.meta['model']}, {model.meta['framework']} export, {model.meta['layout']}, "
          f"{model.meta['input_size']}px, dataset {model.meta.get('dataset', '?')})")
    for r in results:
        note = f"  [{r['note']}]" if r["note"] else ""
        print(f"{r['image']}{note}")
        for rank, (name, prob) in enumerate(r["top"], start=1):
            print(f"  {rank}. {name:<24} {prob:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
