"""Atomic file writes: nothing half-written is ever left looking complete."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


def check_writable(path: str | os.PathLike, *, folder: bool = False, what: str = "output") -> Path:
    """``path`` once it is known that a file (``folder``: files in a folder) can be written there.

    Called before any work starts: the folder is created and a probe file written in it and removed.
    A refusal (no such parent, read-only, no permission, a file where a folder should be) is a
    :class:`UserError` naming the path and the reason.
    """
    path = Path(path)
    where = path if folder else path.parent
    if folder and path.exists() and not path.is_dir():
        raise UserError(f"cannot write {what} {path}: it is a file, and a folder is needed")
    if not folder and path.is_dir():
        raise UserError(f"cannot write {what} {path}: it is a folder, and a file name is needed")
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write {what} {path}: cannot create the folder {where} ({e.strerror})") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write {what} {path}: {where} does not take new files ({e.strerror})") from None
    return path


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
