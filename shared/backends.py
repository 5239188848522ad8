"""Which Keras 3 backend the Keras commands run on: ``KERAS_BACKEND`` (``make ... BACKEND=``).

One model, three engines: ``tensorflow`` (the default), ``jax`` and ``torch``. Every Keras command
(summary, compare, parity, convert, train, export, bench, ablation) reads the backend from here, so a
bad name or a missing package is one line before any framework is imported. This module imports
neither torch nor tensorflow.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping

BACKENDS = ("tensorflow", "jax", "torch")
DEFAULT = "tensorflow"
# The package each backend imports, pinned as in requirements.txt.
PACKAGES = {"tensorflow": "tensorflow==2.21.0", "jax": "jax==0.10.2", "torch": "torch==2.14.1"}


def check_backend(name: str) -> str:
    """``name`` if it is a Keras backend whose package is installed, else a ValueError in one line."""
    if name not in BACKENDS:
        raise ValueError(f"unknown Keras backend {name!r} (KERAS_BACKEND / make BACKEND=); "
                         f"valid choices: {', '.join(BACKENDS)}")
    if importlib.util.find_spec(name) is None:
        raise ValueError(f"the Keras {name} backend needs the {name!r} package, which is not installed: "
                         f".venv/bin/pip install {PACKAGES[name]}")
    return name


def keras_backend(env: Mapping[str, str] | None = None) -> str:
    """The backend ``KERAS_BACKEND`` names (default tensorflow), checked by :func:`check_backend`."""
    env = os.environ if env is None else env
    return check_backend(env.get("KERAS_BACKEND") or DEFAULT)

