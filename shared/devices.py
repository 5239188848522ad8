"""Which device a command runs on, and when mixed precision falls back to float32: facts of the machine,
detected (docs/training.md). Imports neither torch nor tensorflow.
"""

from __future__ import annotations

import sys

from shared import machine
from shared.errors import UserError


def resolve_device_name(requested: str, cuda_count: int) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible else ``cpu``; a one-line error for unknown or unavailable ones."""
    req = (requested or "auto").lower()
    if req == "gpu":
        req = "cuda"
    if req == "auto":
        return "cuda" if cuda_count > 0 else "cpu"
    if req == "cpu":
        return "cpu"
    if req == "cuda" or (req.startswith("cuda:") and req[5:].isdigit()):
        if cuda_count == 0:
            raise UserError(f"--device {requested}: no CUDA GPU is visible on this machine; valid choices: auto, cpu")
        if ":" in req and int(req[5:]) >= cuda_count:
            raise UserError(f"--device {requested}: only {cuda_count} GPU(s) visible (cuda:0..cuda:{cuda_count - 1})")
        return req
    raise UserError(f"unknown --device {requested!r}; valid choices: auto, cpu, cuda, cuda:N, gpu")


def bf16_falls_back(amp: bool, bf16_on_cpu: bool, say: bool = True) -> bool:
    """Whether ``--amp`` must train in float32 instead: it asks for bf16 on a CPU without native bf16, where
    emulated bf16 measured ~13x slower than float32 (0.07-0.08x); ``say``: print the one-line note."""
    fallback = amp and bf16_on_cpu and not machine.cpu_has_bf16()
    if fallback and say:
        print("note: --amp ignored: this CPU has no native bf16 (emulated bf16 measured 13x slower than float32 on "
              "such a CPU); training in float32", file=sys.stderr)
    return fallback
