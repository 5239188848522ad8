"""The metadata every exported model carries, in every deployment format, and the formats themselves: what
``make infer`` and ``make deploy-check`` read to preprocess an image with nothing else (docs/export.md lists the
keys). Imports neither torch nor tensorflow.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.data import CIFAR_DATASETS, SYNTHETIC_DATASETS
from shared.process import package

if TYPE_CHECKING:
    from shared.export_source import Source

LAYOUTS = {"torch": "NCHW", "keras": "NHWC"}
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"
RESIZE_MODES = ("crop", "stretch")
# How each dataset's preparation made its square images (datasets/): CIFAR-10/100 and the synthetic set are
# square already (digits: 8x8 upsampled to 32x32); cats_vs_dogs is resized (shorter side) and centre-cropped.
# Without a dataset: by stem.
DATASET_RESIZE = {**{name: "stretch" for name in (*CIFAR_DATASETS, *SYNTHETIC_DATASETS)}, "digits": "stretch",
                  "cats_vs_dogs": "crop"}
DEFAULT_OPSET = 18
OPSETS = tuple(range(13, 19))
REQUIRED_KEYS = ("framework", "model", "spec", "layout", "input_size", "class_names", "normalization")


@dataclass(frozen=True)
class Format:
    """A deployment format: its file suffix, where its metadata travels, and who writes it.

    ``routes`` maps an exporting framework to the Keras backends that write the format (``torch``: PyTorch
    itself). A format whose artifact is a folder (SavedModel) has ``folder=True``.
    """

    name: str
    suffix: str
    metadata: str
    routes: dict[str, tuple[str, ...]]
    description: str
    folder: bool = False


# Which framework (and Keras backend) writes which format: Keras 3.15's model.export writes tf_saved_model on
# TensorFlow (JAX through jax2tf), litert on TensorFlow (the torch backend needs litert-torch, not installed
# here), openvino on all three, torch (.pt2) on the torch backend only; ONNX as export_onnx says.
FORMATS = {
    "onnx": Format("onnx", ".onnx", "inside: ONNX metadata_props", {"torch": ("torch",),
                   "keras": ("tensorflow", "torch", "jax")}, "ONNX (ONNX Runtime, OpenVINO, OpenCV, onnx2torch...)"),
    "pt2": Format("pt2", ".pt2", "inside: the archive's extra file extra/metadata.json (torch.export.save)",
                  {"torch": ("torch",), "keras": ("torch",)}, "torch.export ExportedProgram (torch.export.load)"),
    "saved_model": Format("saved_model", ".savedmodel", "inside: assets.extra/metadata.json",
                          {"keras": ("tensorflow", "jax")}, "TensorFlow SavedModel (TF Serving)", folder=True),
    "litert": Format("litert", ".tflite", "sidecar: <file>.json beside it", {"keras": ("tensorflow",)},
                     "LiteRT (TensorFlow Lite) flatbuffer"),
    "openvino": Format("openvino", ".xml", "inside: the IR's rt_info (model.xml; weights in model.bin)",
                       {"keras": ("tensorflow", "jax", "torch")}, "OpenVINO IR"),
}
PT2_METADATA = "metadata.json"  # the extra file of a .pt2 archive
SAVED_MODEL_METADATA = "assets.extra/metadata.json"  # TF Serving's place for files a SavedModel carries
RT_INFO_SECTION = "export_metadata"  # the rt_info section of an OpenVINO IR that holds the keys


def check_format(name: str) -> Format:
    """The :class:`Format` named ``name``, or a one-line error naming the valid choices."""
    if name not in FORMATS:
        raise ValueError(f"unknown format {name!r}; valid choices: {', '.join(FORMATS)}")
    return FORMATS[name]


def check_route(name: str, framework: str, backend: str | None = None) -> Format:
    """The format, once ``framework`` (on Keras ``backend``) is known to write it; else a one-line error."""
    fmt = check_format(name)
    check_framework(framework)
    backends = fmt.routes.get(framework, ())
    if not backends:
        writers = [fw for fw in fmt.routes]
        theirs = [f for f, spec in FORMATS.items() if framework in spec.routes]
        raise ValueError(f"{framework} has no route to {name} (it is written by {', '.join(writers)}); "
                         f"{framework} writes: {', '.join(theirs)}")
    if framework == "keras" and backend is not None and backend not in backends:
        raise ValueError(f"Keras writes {name} on the {' or '.join(backends)} backend, not on {backend} "
                         f"(make ... BACKEND={backends[0]})")
    return fmt


def check_framework(framework: str) -> str:
    """``framework`` itself, or a clear error naming the valid choices."""
    package(framework)
    return framework


def check_opset(opset: int) -> int:
    """``opset`` itself, or a clear error naming the opsets both exporters write."""
    if opset not in OPSETS:
        raise ValueError(f"unsupported ONNX opset {opset}; valid choices: {OPSETS[0]}..{OPSETS[-1]} "
                         f"(default {DEFAULT_OPSET})")
    return opset


def build_metadata(source: Source, framework: str, exporter: str, opset: int = DEFAULT_OPSET, fmt: str = "onnx",
                   backend: str | None = None) -> dict[str, str]:
    """The metadata of an export of ``source`` by ``framework`` in ``fmt`` (all values strings); ``backend``
    is the Keras backend that wrote it (Keras exports only)."""
    check_framework(framework)
    check_opset(opset)
    check_format(fmt)
    cfg = source.config
    synthetic = bool(cfg.get("synthetic", False))
    dataset = str(cfg.get("dataset", "none"))
    resize = DATASET_RESIZE.get(dataset, "stretch" if source.spec.stem == "cifar" else "crop")
    return {
        "framework": framework,
        "model": source.spec.name,
        "spec": source.spec.to_json(),
        "layout": LAYOUTS[framework],
        "input_size": str(source.spec.input_size),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "class_names": json.dumps(source.class_names),
        "normalization": json.dumps(source.normalization),
        "resize": resize,
        "dataset": dataset,
        "synthetic": "true" if synthetic else "false",
        "source": str(source.run_dir) if source.run_dir else f"random:seed={source.seed}",
        "trained_framework": str(source.framework or "none"),
        "exporter": exporter,
        **({"opset": str(opset)} if fmt == "onnx" else {}),
        "precision": "float32",
        "format": check_format(fmt).name,
        **({"backend": backend} if framework == "keras" and backend else {}),
    }


def parse_metadata(props: dict[str, str], where: str = "model") -> dict[str, Any]:
    """Decoded metadata (JSON fields parsed, numbers converted); a clear error when keys are missing."""
    missing = [k for k in REQUIRED_KEYS if k not in props]
    if missing:
        raise ValueError(
            f"{where} lacks the metadata keys {', '.join(missing)} (was it exported by this project's "
            "`make export`?)"
        )
    meta: dict[str, Any] = dict(props)
    meta["spec"] = json.loads(props["spec"])
    meta["class_names"] = json.loads(props["class_names"])
    meta["normalization"] = json.loads(props["normalization"])
    meta["input_size"] = int(props["input_size"])
    meta["synthetic"] = props.get("synthetic") == "true"
    meta.setdefault("resize", "crop")
    meta.setdefault("input_name", INPUT_NAME)
    meta.setdefault("output_name", OUTPUT_NAME)
    meta.setdefault("precision", "float32")
    if "opset" in meta:
        meta["opset"] = int(meta["opset"])
    if meta["layout"] not in ("NCHW", "NHWC"):
        raise ValueError(f"{where}: layout must be NCHW or NHWC; got {meta['layout']!r}")
    return meta


def check_metadata(metadata: dict[str, str]) -> None:
    """A TypeError unless every key and value is a string (ONNX metadata_props hold strings)."""
    bad = {k: v for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)}
    if bad:
        raise TypeError(f"ONNX metadata values must be strings; got {bad}")


def format_of(path: str | os.PathLike) -> str:
    """The format of an exported file or folder, from its suffix (a folder holding ``saved_model.pb`` is a
    SavedModel whatever its name); a one-line error for anything else."""
    path = Path(path)
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return "saved_model"
    for name, fmt in FORMATS.items():
        if path.suffix == fmt.suffix:
            return name
    raise ValueError(f"{path}: not an exported model (suffixes: "
                     f"{', '.join(f.suffix for f in FORMATS.values())}, or a SavedModel folder)")


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON beside a file whose format has no place for metadata (``model.tflite.json``)."""
    return Path(path).with_name(Path(path).name + ".json")


def _onnx_props(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _pt2_props(path: Path) -> dict[str, str]:
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.endswith(f"/extra/{PT2_METADATA}")]
        return json.loads(archive.read(names[0])) if names else {}


def _openvino_props(path: Path) -> dict[str, str]:
    import xml.etree.ElementTree as ET

    section = ET.parse(path).getroot().find(f"rt_info/{RT_INFO_SECTION}")
    return {} if section is None else {e.tag: e.get("value", "") for e in section}


def _json_props(path: Path) -> dict[str, str]:
    return json.loads(path.read_text()) if path.is_file() else {}


# How each format's metadata is read back (the writers live with the exporters that write the format).
READERS = {
    "onnx": _onnx_props,
    "pt2": _pt2_props,
    "saved_model": lambda p: _json_props(p / SAVED_MODEL_METADATA),
    "litert": lambda p: _json_props(sidecar_path(p)),
    "openvino": _openvino_props,
}


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The decoded metadata (:func:`parse_metadata`) of an exported file of any format, read without a
    framework: from inside the file, or from its sidecar JSON (LiteRT)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"exported model not found: {path}")
    fmt = format_of(path)
    try:
        props = READERS[fmt](path)
    except Exception as e:  # a truncated zip, XML or protobuf: one line naming the file
        raise ValueError(f"cannot read {path}: truncated or corrupt {fmt} file ({type(e).__name__}); export it "
                         "again (make export)") from None
    meta = parse_metadata(props, where=str(path))
    meta.setdefault("format", fmt)
    return meta
