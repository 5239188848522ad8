"""Which Keras 3 backend the Keras commands run on: ``KERAS_BACKEND`` (``make ... BACKEND=``), checked before any
framework is imported, so a bad name or a missing package is one line (docs/keras-backends.md). What differs
between the backends once Keras runs is ``keras_impl/backend_table.py``. Imports neither torch nor tensorflow.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path

BACKENDS = ("tensorflow", "jax", "torch")
DEFAULT = "tensorflow"
REQUIREMENTS = Path(__file__).resolve().parents[1] / "requirements.txt"


def pinned(package: str) -> str:
    """``package==version`` as requirements.txt pins it (``package`` alone where it pins none)."""
    for line in REQUIREMENTS.read_text(encoding="utf-8").splitlines():
        requirement = line.split("#", 1)[0].strip()
        if requirement.partition("==")[0].strip().lower() == package.lower():
            return requirement
    return package


def installed_backend(name: str) -> str:
    """``name`` if it is a Keras backend whose package is installed, else a ValueError in one line."""
    if name not in BACKENDS:
        raise ValueError(f"unknown Keras backend {name!r} (KERAS_BACKEND / make BACKEND=); "
                         f"valid choices: {', '.join(BACKENDS)}")
    if importlib.util.find_spec(name) is None:
        raise ValueError(f"the Keras {name} backend needs the {name!r} package, which is not installed: "
                         f".venv/bin/pip install {pinned(name)}")
    return name


def keras_backend(env: Mapping[str, str] | None = None) -> str:
    """The backend ``KERAS_BACKEND`` names (default tensorflow), checked by :func:`installed_backend`."""
    env = os.environ if env is None else env
    return installed_backend(env.get("KERAS_BACKEND") or DEFAULT)


def framework_label(framework: str, backend: str | None = None) -> str:
    """How every report names a source: ``torch``, or ``keras-<backend>`` (the Keras backend that ran it); ``keras``
    alone where the backend is the environment's."""
    return f"keras-{backend}" if framework == "keras" and backend else framework


def split_label(label: str) -> tuple[str, str | None]:
    """The inverse of :func:`framework_label`: ``keras-jax`` -> (``keras``, ``jax``), ``torch`` -> (``torch``, None)."""
    framework, _, backend = label.partition("-")
    return framework, backend or None


KERAS_LABELS = tuple(framework_label("keras", b) for b in BACKENDS)
