"""A small filesystem for the full-disk tests: a tmpfs of a given size, mounted for the test (root on Linux);
the test is skipped where mounting is refused."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@contextlib.contextmanager
def small_disk(path: Path, size: int, *, read_only: bool = False) -> Iterator[Path]:
    """``path`` as a tmpfs of ``size`` bytes (``read_only``: one that takes nothing) while the block runs."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    done = _mount("-t", "tmpfs", "-o", options, "tmpfs", str(path))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def resize(path: Path, size: int) -> None:
    """Grow (or shrink) the tmpfs at ``path`` in place: space freed, as a user would free it."""
    done = _mount("-o", f"remount,size={size}", str(path))
    assert done.returncode == 0, done.stderr


def fill(path: Path, leave: int) -> Path:
    """A file that takes the space of the filesystem at ``path`` but ``leave`` bytes; its path."""
    filler = path / "filler"
    free = shutil.disk_usage(path).free
    with open(filler, "wb") as f:
        f.truncate(0)
        f.write(b"\0" * max(free - leave, 0))
    return filler
