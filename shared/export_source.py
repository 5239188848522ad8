"""What an export reads: a run folder, a ``.safetensors`` checkpoint, or a registry model with random weights,
resolved the same way for both frameworks, and where each export goes by default (docs/export.md). Imports neither
torch nor tensorflow.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.export_meta import check_format
from shared.spec import ModelSpec, get_spec

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


def _read_run(run_dir: Path) -> tuple[dict[str, Any], Path | None]:
    """(config, best weights path or None) of a run folder (contract: ``shared.runs.read_run``)."""
    from shared.runs import read_run

    run = read_run(run_dir)
    return dict(run["config"]), Path(run["best"]) if run.get("best") else None


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
