"""A Python that behaves as if some packages were not installed (a GPU container without TensorFlow).

``blocked_python(tmp, names)`` writes ``tmp/site/sitecustomize.py``, which sets ``sys.modules[name] =
None`` for each name (Python's own marker for "not importable": ``import name`` raises
ModuleNotFoundError and ``importlib.util.find_spec(name)`` returns None), and ``tmp/bin/python3``, a
shim that runs this interpreter with that folder on PYTHONPATH. Child processes inherit
PYTHONPATH, so the block holds in every subprocess a tool starts.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

GPU_CONTAINER_MISSING = ("tensorflow", "keras", "torchinfo", "onnxscript", "tf2onnx")


def blocked_env(tmp: Path, names: tuple[str, ...] = GPU_CONTAINER_MISSING) -> dict[str, str]:
    """Environment variables that block ``names`` in any Python started with them."""
    site = tmp / "site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        f"for _name in {tuple(names)!r}:\n"
        "    sys.modules[_name] = None  # as if not installed\n"
    )
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


def blocked_python(tmp: Path, names: tuple[str, ...] = GPU_CONTAINER_MISSING) -> dict[str, str]:
    """An environment whose PATH starts with a ``python3`` that cannot import ``names``."""
    env = blocked_env(tmp, names)
    bin_dir = tmp / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "python3"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    shim.chmod(0o755)
    return {**env, "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}"}
