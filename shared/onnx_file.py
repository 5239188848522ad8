"""An exporter's raw ONNX file made into the project's: one input ``input`` and one output ``logits`` with a
symbolic batch, the export metadata inside, checked by ``onnx.checker`` and written atomically (docs/export.md).
Imports neither torch nor tensorflow.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from shared.export_meta import BATCH_DIM, INPUT_NAME, OUTPUT_NAME, check_metadata


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
