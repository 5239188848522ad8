"""Which device a GPU report ran on, as its reports name it: ``nvidia-smi``'s view (name, driver, memory, power
limit, clocks) and the device's file-name slug (docs/gpu.md). Imports no framework.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

SMI_FIELDS = ("name", "driver_version", "memory.total", "power.limit", "clocks.max.sm")


def nvidia_smi() -> list[dict[str, str]]:
    """One dict of :data:`SMI_FIELDS` per GPU that ``nvidia-smi`` lists; empty without it."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, f"--query-gpu={','.join(SMI_FIELDS)}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [dict(zip(SMI_FIELDS, (v.strip() for v in line.split(",")), strict=False))
            for line in out.splitlines() if line.strip()]


def slug(name: str) -> str:
    """A device name as a file-name part: ``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def device_label(device: str, gpu_name: str | None) -> str:
    """``cpu``, or the slug of the GPU's name (``cuda`` when it is unknown)."""
    return "cpu" if device == "cpu" else slug(gpu_name) if gpu_name else "cuda"


def describe(device: str, torch_info: dict[str, Any] | None) -> dict[str, Any]:
    """The device of a report: kind, name, and on CUDA the driver (nvidia-smi) and the CUDA/cuDNN versions
    and properties the PyTorch process saw."""
    torch_info = torch_info or {}
    if device == "cpu":
        return {"kind": "cpu", "name": "CPU", "label": "cpu"}
    smi = nvidia_smi()
    name = torch_info.get("gpu") or (smi[0]["name"] if smi else None)
    versions = torch_info.get("versions") or {}
    return {"kind": "cuda", "name": name, "label": device_label(device, name),
            "driver": smi[0].get("driver_version") if smi else None, "nvidia_smi": smi,
            "cuda": versions.get("cuda"), "cudnn": versions.get("cudnn"),
            "properties": torch_info.get("cuda_device")}
