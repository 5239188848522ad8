"""Run ``python -m tests.no_tensorflow MODULE ARGS...``: MODULE as ``python -m`` would, in a process where
``import tensorflow`` fails (as on a machine without it), to prove the Keras JAX/torch routes never need it."""

from __future__ import annotations

import runpy
import sys

if __name__ == "__main__":
    sys.modules["tensorflow"] = None  # every `import tensorflow` now raises ImportError
    module, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        assert sys.modules.get("tensorflow") is None, "tensorflow was imported"
