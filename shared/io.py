"""File writes that never leave half a file, and that say in one line when the machine refuses them (a full disk,
a read-only or vanished folder): docs/training.md, "When the machine says no"."""

from __future__ import annotations

import contextlib
import contextvars
import errno
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from shared.errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)

FULL = (errno.ENOSPC, errno.EDQUOT)
# A failed write whose library hid the errno (torch.save's "unexpected pos", numpy's short write) is a full disk when
# this little is left: such a write fills the disk before it fails.
NEARLY_FULL = 1 << 20  # bytes


class WriteError(UserError):
    """A write the machine refused, in one line naming the file: a full disk (``disk_full``, with the megabytes
    left), or another refusal (``reason``). Nothing half-written is left, and the file at ``path`` is as it was."""

    def __init__(self, path: str | os.PathLike, reason: str, *, disk_full: bool, free_mb: float | None,
                 advice: str | None = None) -> None:
        self.path, self.reason, self.disk_full, self.free_mb = Path(path), reason, disk_full, free_mb
        if advice is None:
            advice = ("free space and run it again" if disk_full
                      else "check that its folder exists and is writable, and run it again")
        self.advice = advice
        super().__init__(f"{self.what}; {advice}")

    @property
    def what(self) -> str:
        """The refusal alone, without the advice."""
        if self.disk_full:
            free = "" if self.free_mb is None else f" ({self.free_mb:.1f} MB free)"
            return f"no space left on device while writing {self.path}{free}"
        return f"cannot write {self.path} ({self.reason})"

    def advise(self, advice: str) -> WriteError:
        """The same refusal with other advice (what is kept, how to go on)."""
        return WriteError(self.path, self.reason, disk_full=self.disk_full, free_mb=self.free_mb, advice=advice)

    def measured(self) -> WriteError:
        """The same refusal with the space free now (once more temporary files are gone)."""
        free = free_bytes(self.path)
        return WriteError(self.path, self.reason, disk_full=self.disk_full, advice=self.advice,
                          free_mb=None if free is None else free / 1e6)


def free_bytes(path: str | os.PathLike) -> int | None:
    """The bytes free to this user on the filesystem that holds ``path`` (or its nearest existing parent)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _errno(error: BaseException) -> OSError | None:
    """The first OSError with an errno among ``error``, its cause and its context."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno:
            return error
        error = error.__cause__ or error.__context__
    return None


def refusal(path: str | os.PathLike, error: BaseException, free: int | None = None) -> WriteError | None:
    """What a failed write of ``path`` means: a :class:`WriteError` when the machine refused it, None when ``error``
    is something else (a bug, to be raised as it is). ``free``: the bytes free when it failed (measured now when
    not given); the message gives the bytes free now."""
    if not isinstance(error, Exception):  # KeyboardInterrupt, a stop signal: not a refusal
        return None
    free = free_bytes(path) if free is None else free
    os_error = _errno(error)
    if os_error is not None:
        full = os_error.errno in FULL
        reason = os.strerror(os_error.errno)
    elif isinstance(error, (OSError, RuntimeError)) and free is not None and free < NEARLY_FULL:
        full, reason = True, "no space left on device"
    else:
        return None
    now = free_bytes(path)
    return WriteError(path, reason, disk_full=full, free_mb=None if now is None else now / 1e6)


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Inside, a write the machine refuses (a full disk, ...) becomes a :class:`WriteError` naming ``path``; the
    block cleans up after itself (a temporary folder) before leaving."""
    try:
        yield
    except Exception as e:
        failure = refusal(path, e)
        if failure is None:
            raise
        raise failure from None


def check_writable(path: str | os.PathLike, *, folder: bool = False, what: str = "output",
                   keep_folders: bool = True) -> Path:
    """``path`` once it is known that a file (``folder``: files in a folder) can be written there.

    Called before any work starts: the missing folders are created and a probe file written and removed. A refusal
    (no such parent, read-only, no permission, a file where a folder should be) is a :class:`UserError` naming the
    path and the reason. ``keep_folders=False`` removes again the folders it created (a command that may still be
    refused leaves nothing behind).
    """
    path = Path(path)
    where = path if folder else path.parent
    if folder and path.exists() and not path.is_dir():
        raise UserError(f"cannot write {what} {path}: it is a file, and a folder is needed")
    if not folder and path.is_dir():
        raise UserError(f"cannot write {what} {path}: it is a folder, and a file name is needed")
    created = [p for p in (where, *where.parents) if not p.exists()]
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
    finally:
        if not keep_folders:
            for p in created:  # deepest first
                with contextlib.suppress(OSError):
                    p.rmdir()
    return path


# Writes that land together: (temporary file, final path) of each staged write, in order, while a block is open.
_staged: contextvars.ContextVar[list[tuple[str, Path]] | None] = contextvars.ContextVar("staged", default=None)


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@contextlib.contextmanager
def together() -> Iterator[None]:
    """The atomic writes inside land together when the block ends: each writes and syncs its temporary file, and
    only when every one is written are they renamed into place, in order. A write that fails (a full disk) leaves
    every file as it was and no temporary file. A kill between two renames leaves the first ones: put the write
    that commits (a resume checkpoint) last. Nested blocks join the outermost one."""
    if _staged.get() is not None:
        yield
        return
    pending: list[tuple[str, Path]] = []
    token = _staged.set(pending)
    try:
        yield
    except BaseException as e:
        for tmp, _ in pending:
            _unlink(tmp)
        if isinstance(e, WriteError):
            raise e.measured() from None
        raise
    finally:
        _staged.reset(token)
    for i, (tmp, path) in enumerate(pending):
        try:
            os.replace(tmp, path)
        except BaseException as e:
            for rest, _ in pending[i:]:
                _unlink(rest)
            if (failure := refusal(path, e)) is not None:
                raise failure from None
            raise


def _sync(tmp: str) -> None:
    """Flush a written temporary file to the disk (where a full disk may say so only now) and open its mode."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; a result file should read like any other


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], *, suffix: str = ".tmp") -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path`` (named ``...suffix``), then rename it into place
    (at the end of a :func:`together` block, when one is open). A refusal is a :class:`WriteError`; whatever
    happens, no temporary file is left."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise (refusal(path, e) or e) from None
    try:
        write(tmp)
        _sync(tmp)
        if (pending := _staged.get()) is not None:
            pending.append((tmp, path))
            return path
        os.replace(tmp, path)
    except BaseException as e:
        free = free_bytes(path)  # before the temporary file gives its space back
        _unlink(tmp)
        if (failure := refusal(path, e, free)) is not None:
            raise failure from None
        raise
    return path


def write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> Path:
    """Write ``data`` to ``path`` atomically (through Python's own file, so a full disk says ENOSPC)."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


class ReadError(UserError, ValueError):
    """A file that cannot be read back (truncated, corrupt, another format): one line naming it and what to do."""


def save_weights(path: str | os.PathLike, arrays: dict, metadata: dict[str, str] | None = None) -> Path:
    """Write canonical weights (numpy arrays keyed by canonical names) as safetensors, atomically.

    ``metadata`` values must be strings (safetensors' header); put the spec there as JSON.
    """
    import numpy as np
    from safetensors.numpy import save

    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    return write_bytes(path, save(arrays, metadata=metadata or {}))


def load_weights(path: str | os.PathLike) -> tuple[dict, dict[str, str]]:
    """Read a safetensors weight file: (arrays, metadata); one line (:class:`ReadError`) when missing or corrupt."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = dict(f.metadata() or {})
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except Exception:  # safetensors raises its own error types for truncated/garbled headers
        raise ReadError(f"cannot read weight file {path}: truncated or corrupt (not a whole safetensors file); "
                        "write it again (train, convert or export)") from None
    return arrays, metadata


def _npy_bytes(array: Any) -> memoryview:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.asarray(array))
    return buf.getbuffer()


def atomic_save_npy(path: str | os.PathLike, array: Any) -> Path:
    """Write one numpy array as ``.npy`` (exactly at ``path``, no suffix added), atomically."""
    return write_bytes(path, _npy_bytes(array))


def atomic_save_npz(path: str | os.PathLike, arrays: dict[str, Any]) -> Path:
    """Write named numpy arrays as one uncompressed ``.npz`` (exactly at ``path``), atomically."""
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return write_bytes(path, buf.getbuffer())
