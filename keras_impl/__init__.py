"""Keras 3 ResNets on any Keras backend: ``KERAS_BACKEND=tensorflow|jax|torch`` (default tensorflow).

Importing the package checks the backend (``shared.backends``) before Keras is imported, so a bad name
or a missing package is one ``error:`` line, not a traceback (docs/keras-backends.md).
"""

import os
import sys

from shared.backends import DEFAULT, keras_backend
from shared.errors import USER_ERROR

os.environ["KERAS_BACKEND"] = os.environ.get("KERAS_BACKEND") or DEFAULT
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
try:
    keras_backend()
except ValueError as _e:  # before any entry point runs: said here, once, with the user-error status
    print(f"error: {_e}", file=sys.stderr)
    raise SystemExit(USER_ERROR) from None
