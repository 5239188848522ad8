"""Atomic file writes: nothing half-written is ever left looking complete."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; a result file should read like any other
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_weights(path: str | os.PathLike, arrays: dict, metadata: dict[str, str] | None = None) -> Path:
    """Write canonical weights (numpy arrays keyed by canonical names) as safetensors, atomically.

    ``metadata`` values must be strings (safetensors' header); put the spec there as JSON.
    """
    import numpy as np
    from safetensors.numpy import save_file

    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    return atomic_write(path, lambda tmp: save_file(arrays, tmp, metadata=metadata or {}))


def load_weights(path: str | os.PathLike) -> tuple[dict, dict[str, str]]:
    """Read a safetensors weight file: (arrays, metadata); a clear error when missing or corrupt."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = dict(f.metadata() or {})
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated/garbled headers
        raise ValueError(f"{path} is not a readable safetensors file ({e})") from e
    return arrays, metadata


def atomic_save_npy(path: str | os.PathLike, array: Any) -> Path:
    """Write one numpy array as ``.npy`` (exactly at ``path``, no suffix added), atomically."""
    import numpy as np

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(array))

    return atomic_write(path, write)


def atomic_save_npz(path: str | os.PathLike, arrays: dict[str, Any]) -> Path:
    """Write named numpy arrays as one uncompressed ``.npz`` (exactly at ``path``), atomically."""
    import numpy as np

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write(path, write)
