"""Keras 3 ResNets on any Keras backend: ``KERAS_BACKEND=tensorflow|jax|torch`` (default tensorflow).

Importing the package checks the backend (``shared.backends``) before Keras is imported, so a bad name
or a missing package is one line, not a traceback.
"""

import os

from shared.backends import DEFAULT, keras_backend

os.environ["KERAS_BACKEND"] = os.environ.get("KERAS_BACKEND") or DEFAULT
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
try:
    keras_backend()
except ValueError as _e:
    raise SystemExit(f"error: {_e}") from None

if os.environ["KERAS_BACKEND"] != "tensorflow":
    # Keras also seeds tensorflow whenever it can import it (keras.utils.set_random_seed); the JAX and torch
    # routes run where tensorflow is absent, so Keras is told it is.
    from keras.src.utils import module_utils

    module_utils.tensorflow._available = False
