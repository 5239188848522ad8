"""The ONNX metadata schema and the framework-neutral half of every export.

Every ``.onnx`` file this project writes carries string ``metadata_props`` that make it
self-describing: ``export/infer.py`` preprocesses images from them alone. Keys:

``framework``      ``torch`` or ``keras`` (the exporter)
``model``          registry name (``resnet20``)
``spec``           ``ModelSpec.to_json()``
``layout``         ``NCHW`` (torch) or ``NHWC`` (keras): the input tensor's layout
``input_size``     side of the square input, pixels
``input_name`` / ``output_name``  the graph's input (``input``) and output (``logits``) names
``class_names``    JSON list, ``num_classes`` long
``normalization``  JSON ``{"mean": [..], "std": [..]}`` in 0-1 units: ``x = (pixels/255 - mean)/std``
``resize``         ``crop`` (shorter side to ``input_size``, then center crop) or ``stretch``, as the
                   dataset was prepared (:data:`DATASET_RESIZE`)
``dataset``, ``synthetic`` (``true``/``false``), ``source`` (run folder or ``random:seed=N``),
``exporter``       exporter and versions (``torch 2.14.1 dynamo`` / ``keras 3.15.1 tf2onnx 1.17.0``)
``opset``          the default-domain ONNX opset of the graph (checked against the file itself)
``precision``      ``float32`` for exports; ``int8`` / ``float16`` for ``make quantize`` files
``format``         the deployment format (:data:`FORMATS`): ``onnx``, ``pt2``, ``saved_model``, ``litert``, ``openvino``
``backend``        Keras exports only: the Keras backend that wrote the file (``tensorflow``, ``jax``, ``torch``)

**Formats.** The same keys travel with every deployment format (:data:`FORMATS`), inside the file where
the format has a place for them (ONNX metadata_props, OpenVINO ``rt_info``, a ``.pt2`` archive's extra
file, a SavedModel's ``assets.extra/``) and in a sidecar JSON beside it where it has none (LiteRT).
:func:`read_metadata` reads them back from any of them without importing a framework.

**Opset.** Both exporters write :data:`DEFAULT_OPSET` = 18 unless asked otherwise (``make export
OPSET=N``, N in :data:`OPSETS`). 18 is the newest opset tf2onnx 1.17 (the Keras exporter) supports and
the oldest that torch's dynamo exporter implements natively (its op library targets 18; lower requests
go through ONNX's version converter, which has no Pad 18->17 adapter and silently keeps 18). For
N < 18 the torch side therefore uses torch's TorchScript exporter, which writes any of these opsets.

This module imports neither torch nor tensorflow; ``onnx`` is imported only where a file is
rewritten. It also resolves a ``RUN`` argument (a run folder or a ``.safetensors`` checkpoint)
into what an exporter needs, so that both frameworks read runs the same way.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.data import CIFAR_DATASETS, SYNTHETIC_DATASETS
from shared.process import FRAMEWORKS as FRAMEWORKS  # re-exported for export/'s tools
from shared.process import package
from shared.spec import ModelSpec, get_spec

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
# Random-weight exports have no dataset: pixels are only scaled to [0, 1].
IDENTITY_NORMALIZATION = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}


@dataclass
class Source:
    """What to export: a spec, optional canonical weights and the run's config (if any)."""

    spec: ModelSpec
    framework: str | None = None  # the framework that trained the weights (None: random weights)
    weights: Path | None = None
    run_dir: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    @property
    def class_names(self) -> list[str]:
        names = self.config.get("class_names")
        return list(names) if names else [f"class_{i}" for i in range(self.spec.num_classes)]

    @property
    def normalization(self) -> dict[str, list[float]]:
        norm = self.config.get("normalization") or IDENTITY_NORMALIZATION
        return {"mean": [float(v) for v in norm["mean"]], "std": [float(v) for v in norm["std"]]}


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


def source_label(framework: str, backend: str | None = None) -> str:
    """The label of an exporting source, as the benchmark names it: ``torch`` or ``keras-<backend>``."""
    return f"keras-{backend}" if framework == "keras" else framework


def check_framework(framework: str) -> str:
    """``framework`` itself, or a clear error naming the valid choices."""
    package(framework)
    return framework


def _read_run(run_dir: Path) -> tuple[dict[str, Any], Path | None]:
    """(config, best weights path or None) of a run folder (contract: ``shared.runs.read_run``)."""
    from shared.runs import read_run

    run = read_run(run_dir)
    return dict(run["config"]), Path(run["best"]) if run.get("best") else None


def check_opset(opset: int) -> int:
    """``opset`` itself, or a clear error naming the opsets both exporters write."""
    if opset not in OPSETS:
        raise ValueError(f"unsupported ONNX opset {opset}; valid choices: {OPSETS[0]}..{OPSETS[-1]} "
                         f"(default {DEFAULT_OPSET})")
    return opset


def resolve_source(run: str | os.PathLike | None = None, *, model: str | None = None,
                   num_classes: int | None = None, shortcut: str | None = None,
                   input_size: int | None = None, seed: int = 0) -> Source:
    """A run folder, a ``.safetensors`` checkpoint, or (``run=None``) a registry model with random weights."""
    if run is None:
        if model is None:
            raise ValueError("give a run folder / checkpoint or a model name")
        spec = get_spec(model, num_classes=num_classes, shortcut=shortcut, input_size=input_size)
        return Source(spec=spec, seed=seed)
    path = Path(run)
    if not path.exists():
        raise FileNotFoundError(f"run folder or checkpoint not found: {path}")
    if path.is_dir():
        config, weights = _read_run(path)
        if weights is None:
            raise FileNotFoundError(f"{path} has no best.safetensors weights")
        run_dir = path
    else:
        if path.suffix != ".safetensors":
            raise ValueError(f"{path}: expected a run folder or a .safetensors checkpoint")
        weights, run_dir = path, path.parent
        config = _read_run(run_dir)[0] if (run_dir / "config.json").is_file() else {}
    if "spec" in config:
        spec = ModelSpec.from_dict(config["spec"])
    else:
        from shared.io import load_weights

        _, meta = load_weights(weights)
        if "spec" not in meta:
            raise ValueError(f"{weights} has no 'spec' in its metadata and no config.json beside it")
        spec = ModelSpec.from_dict(json.loads(meta["spec"]))
    if config.get("input_size") and not input_size:
        input_size = int(config["input_size"])
    if input_size:
        spec = spec.with_overrides(input_size=input_size)
    return Source(spec=spec, framework=config.get("framework"), weights=weights, run_dir=run_dir,
                  config=config, seed=seed)


def default_onnx_path(source: Source, framework: str, out: str | os.PathLike | None = None) -> Path:
    """Where an export goes.

    A run's own framework writes ``<run>/model.onnx``; the other framework ``<run>/model-<fw>.onnx``.
    Random weights go to ``artifacts/export/<model>-<fw>.onnx``. ``out`` ending in ``.onnx`` is the
    file itself; any other ``out`` is the folder.
    """
    if source.run_dir is not None:
        name = "model.onnx" if framework == (source.framework or framework) else f"model-{framework}.onnx"
        folder = source.run_dir
    else:
        name, folder = f"{source.spec.name}-{framework}.onnx", Path("artifacts/export")
    if out:
        out = Path(out)
        if out.suffix == ".onnx":
            return out
        folder = out
    return folder / name


def default_export_path(source: Source, framework: str, fmt: str = "onnx", out: str | os.PathLike | None = None
                        ) -> Path:
    """Where an export in ``fmt`` goes: :func:`default_onnx_path`'s rule with the format's suffix
    (``model.pt2``, ``model-keras.tflite``, ``model-keras.savedmodel/``, ...)."""
    suffix = check_format(fmt).suffix
    if out and Path(out).suffix == suffix:
        return Path(out)
    default = default_onnx_path(source, framework)
    return (Path(out) if out else default.parent) / default.with_suffix(suffix).name


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


def _rename(graph: Any, old: str, new: str) -> None:
    if old == new:
        return
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.name == old:
            value.name = new


def finalize_onnx(raw_path: str | os.PathLike, path: str | os.PathLike, metadata: dict[str, str]) -> Path:
    """Normalise an exporter's raw file and write it atomically to ``path``.

    Renames the single input/output to ``input``/``logits``, names the batch dimension ``batch``
    (symbolic: any batch size runs), writes ``metadata`` as metadata_props, and runs
    ``onnx.checker`` (full check, with shape inference) before the file appears. When ``metadata``
    names an ``opset``, the graph's own default-domain opset must be that one.
    """
    import onnx

    from shared.io import atomic_write

    check_metadata(metadata)
    model = onnx.load(str(raw_path))
    graph = model.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ValueError(f"expected one graph input and output; got {len(graph.input)} and {len(graph.output)}")
    _rename(graph, graph.input[0].name, INPUT_NAME)
    _rename(graph, graph.output[0].name, OUTPUT_NAME)
    for value in (graph.input[0], graph.output[0]):
        dim = value.type.tensor_type.shape.dim[0]
        if dim.HasField("dim_value"):
            raise ValueError(f"{value.name}: batch dimension is fixed at {dim.dim_value}; expected symbolic")
        dim.dim_param = BATCH_DIM
    if "opset" in metadata:
        written = graph_opset(model)
        if written != int(metadata["opset"]):
            raise ValueError(f"the exporter wrote opset {written}, not the requested {metadata['opset']}")
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model, full_check=True)
    path = atomic_write(path, lambda tmp: onnx.save(model, tmp))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)  # a file to ship: the usual permissions, not the temp file's 0600
    return path


def graph_opset(model: Any) -> int:
    """The default-domain (``ai.onnx``) opset of an ``onnx.ModelProto``."""
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


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
        raise ValueError(f"{path} is not a readable {fmt} file (truncated or corrupt?): {e}") from None
    meta = parse_metadata(props, where=str(path))
    meta.setdefault("format", fmt)
    return meta


def parse_target(text: str) -> tuple[str, int, Path]:
    """``FORMAT[:OPSET]=PATH`` (the framework CLIs' ``--to``) -> (format, opset, path)."""
    spec, sep, path = text.partition("=")
    name, _, opset = spec.partition(":")
    if not sep or not path:
        raise ValueError(f"--to takes FORMAT[:OPSET]=PATH; got {text!r}")
    check_format(name)
    return name, check_opset(int(opset)) if opset else DEFAULT_OPSET, Path(path)


def export_cli(framework: str, impl: Any, argv: list[str] | None = None) -> int:
    """The command line both ``pytorch_impl.export`` and ``keras_impl.export`` run; ``impl`` is the framework's
    export module (``load_model``, ``export_onnx``, ``export_format``, ``predict``, ``benchmark``,
    ``exporter_version``).

    ``onnx`` writes one ONNX file (its path on stdout); ``export --to FORMAT[:OPSET]=PATH ...`` writes several
    formats from one loaded model, in the order given, and prints one JSON line per target (``path`` or the
    one-line ``error``: one target failing does not stop the others); ``predict`` and ``bench`` as before.
    User errors exit 2 with one ``error:`` line."""
    import numpy as np

    from shared.errors import ArgumentParser, UserError
    from shared.io import atomic_save_npy, atomic_write_json

    spec = getattr(impl, "__spec__", None)
    prog = f"python -m {spec.name if spec else impl.__name__}"
    p = ArgumentParser(prog=prog, description=impl.__doc__)
    p.add_argument("command", choices=("onnx", "export", "predict", "bench"))
    p.add_argument("--run", help="run folder or .safetensors checkpoint (default: random weights)")
    p.add_argument("--model", help="registry model name (random weights; needs no --run)")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--shortcut")
    p.add_argument("--input-size", type=int, help="override the input side (pixels)")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights")
    p.add_argument("--out", help="onnx: output .onnx file or folder")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"onnx: ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--to", action="append", default=[], help="export: FORMAT[:OPSET]=PATH (repeatable)")
    p.add_argument("--inputs", help="predict: .npy of normalized NHWC float32 images")
    p.add_argument("--logits", help="predict: output .npy of logits")
    p.add_argument("--json", help="bench: output .json")
    args = p.parse_args(argv)
    backend = getattr(impl, "BACKEND", None) if framework == "keras" else None
    try:
        targets = [parse_target(t) for t in args.to]
        if args.command == "export" and not targets:
            raise ValueError("export needs at least one --to FORMAT[:OPSET]=PATH")
        for name, _, _ in targets:
            check_route(name, framework, backend)
        source = resolve_source(args.run, model=args.model, num_classes=args.num_classes,
                                shortcut=args.shortcut, input_size=args.input_size, seed=args.seed)
        model = impl.load_model(source)
        if args.command == "onnx":
            check_opset(args.opset)
            path = default_onnx_path(source, framework, args.out)
            metadata = build_metadata(source, framework, impl.exporter_version(args.opset), args.opset,
                                      backend=backend)
            impl.export_onnx(model, source.spec, path, metadata, opset=args.opset)
            print(path)
        elif args.command == "export":
            for name, opset, path in targets:
                metadata = build_metadata(source, framework, impl.exporter_version(opset, name), opset, name, backend)
                try:
                    done = impl.export_format(model, source.spec, name, path, metadata, opset)
                    print(json.dumps({"format": name, "opset": opset if name == "onnx" else None,
                                      "path": str(done)}), flush=True)
                except Exception as e:  # noqa: BLE001 any exporter failure is this target's one-line reason
                    reason = " ".join(str(e).split())[:400] or type(e).__name__
                    print(json.dumps({"format": name, "opset": opset if name == "onnx" else None, "path": str(path),
                                      "error": f"{type(e).__name__}: {reason}"}), flush=True)
        elif args.command == "predict":
            if not args.inputs or not args.logits:
                raise ValueError("predict needs --inputs X.npy and --logits OUT.npy")
            atomic_save_npy(args.logits, impl.predict(model, np.load(args.inputs)))
        else:
            result = {"framework": framework, **impl.benchmark(model, source.spec)}
            if args.json:
                atomic_write_json(args.json, result)
            print(json.dumps(result))
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    return 0
