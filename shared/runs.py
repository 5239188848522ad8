"""Run folders: the one on-disk layout that both trainers write and every other tool reads (docs/training.md, "The run
folder"): ``config.json``, ``metrics.csv``, canonical best/last weights, the resume checkpoint, TensorBoard events,
``results.json``. The trainers write it through ``shared.run_folder.RunFolder``. Imports no framework.
"""

from __future__ import annotations

import csv
import io
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.io import atomic_write_json, atomic_write_text
from shared.process import FRAMEWORKS

CONFIG = "config.json"
METRICS = "metrics.csv"
RESULTS = "results.json"
BEST = "best.safetensors"
LAST = "last.safetensors"
# Framework-native resume checkpoints: torch's holds model, optimizer, RNG and progress; Keras' is the
# metadata of its keras.callbacks.BackupAndRestore folder (epoch + the weights file beside it, model and
# optimizer), its progress is metrics.csv up to that epoch.
CHECKPOINTS = {"torch": "checkpoint.pt", "keras": "backup/training_metadata.json"}
METRICS_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s")
CONFIG_KEYS = (
    "model", "framework", "dataset", "synthetic", "spec", "class_names", "input_size", "normalization",
    "recipe", "versions", "git_commit", "device",
)
RESULTS_KEYS = ("test_acc", "test_loss", "best_epoch", "best_val_acc", "epochs", "wall_time_s", "finished")


class NotARunError(ValueError):
    """The folder is not a run folder (no readable config.json)."""


def timestamp(now: datetime | None = None) -> str:
    """UTC ``YYYYmmdd-HHMMSS``: sortable and safe in paths."""
    return (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")


def default_run_dir(dataset: str, model: str, framework: str, root: str | os.PathLike = "runs",
                    now: datetime | None = None) -> Path:
    """``root/<dataset>/<model>/<framework>-<timestamp>``; a suffix keeps it unique if it exists."""
    if framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r}; valid choices: {', '.join(FRAMEWORKS)}")
    base = Path(root) / dataset / model / f"{framework}-{timestamp(now)}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


# Writing --------------------------------------------------------------------------------------------
def write_config(run_dir: str | os.PathLike, config: dict[str, Any]) -> Path:
    """Write ``config.json`` atomically; every key of :data:`CONFIG_KEYS` must be present."""
    missing = [k for k in CONFIG_KEYS if k not in config]
    if missing:
        raise ValueError(f"run config lacks {missing}; a run config needs {list(CONFIG_KEYS)}")
    return atomic_write_json(Path(run_dir) / CONFIG, config)


def format_metrics(rows: list[dict[str, Any]]) -> str:
    """The CSV text of ``rows`` (header :data:`METRICS_COLUMNS`)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRICS_COLUMNS, lineterminator="\n", extrasaction="raise")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row[k]) for k in METRICS_COLUMNS})
    return buf.getvalue()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)  # shortest exact round trip: a resumed run compares equal to the digit
    return str(value)


def write_metrics(run_dir: str | os.PathLike, rows: list[dict[str, Any]]) -> Path:
    """Rewrite the whole ``metrics.csv`` atomically (a reader never sees a half-written row)."""
    return atomic_write_text(Path(run_dir) / METRICS, format_metrics(rows))


def write_results(run_dir: str | os.PathLike, results: dict[str, Any]) -> Path:
    """Write ``results.json`` atomically; every key of :data:`RESULTS_KEYS` must be present."""
    missing = [k for k in RESULTS_KEYS if k not in results]
    if missing:
        raise ValueError(f"results lack {missing}; results need {list(RESULTS_KEYS)}")
    return atomic_write_json(Path(run_dir) / RESULTS, results)


# Reading --------------------------------------------------------------------------------------------
def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of ``metrics.csv`` with numbers parsed (``epoch`` int, the rest float); [] if absent."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != METRICS_COLUMNS:
            raise ValueError(f"{path}: header {reader.fieldnames} is not {list(METRICS_COLUMNS)}")
        return [{k: int(v) if k == "epoch" else float(v) for k, v in row.items()} for row in reader]


def read_run(path: str | os.PathLike) -> dict[str, Any]:
    """Everything a tool needs from a run folder.

    Returns ``{"path", "config", "framework", "best", "last", "checkpoint", "results", "metrics",
    "finished"}``: ``best``/``last``/``checkpoint`` are file paths (str) or None when absent,
    ``results`` is the parsed ``results.json`` or None, ``metrics`` the rows of ``metrics.csv``.
    Raises :class:`NotARunError` naming the folder when it is not a run folder.
    """
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise NotARunError(f"not a run folder: {run_dir} does not exist or is not a directory")
    cfg_path = run_dir / CONFIG
    if not cfg_path.is_file():
        raise NotARunError(
            f"not a run folder: {run_dir} has no {CONFIG} (a run folder is written by "
            "python -m pytorch_impl.train / python -m keras_impl.train)"
        )
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise NotARunError(f"not a run folder: {cfg_path} is not readable JSON ({e})") from e
    if not isinstance(config, dict) or config.get("framework") not in FRAMEWORKS:
        raise NotARunError(f"not a run folder: {cfg_path} has no framework in {FRAMEWORKS}")
    results = None
    if (run_dir / RESULTS).is_file():
        results = json.loads((run_dir / RESULTS).read_text(encoding="utf-8"))

    def existing(name: str) -> str | None:
        return str(run_dir / name) if (run_dir / name).is_file() else None

    return {
        "path": str(run_dir),
        "config": config,
        "framework": config["framework"],
        "best": existing(BEST),
        "last": existing(LAST),
        "checkpoint": existing(CHECKPOINTS[config["framework"]]),
        "results": results,
        "metrics": read_metrics(run_dir),
        "finished": bool(results and results.get("finished")),
    }

