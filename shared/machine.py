"""What machine and which library versions a measurement ran on, without importing any framework (docs/bench.md).

Versions come from the installed distributions' metadata, the GPU's name from ``nvidia-smi`` where there is one.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from shared.process import ROOT

LIBRARIES = ("torch", "torchvision", "tensorflow", "keras", "jax", "onnx", "onnxruntime", "onnxruntime-gpu", "numpy")


def cpu_model() -> str:
    """The CPU's marketing name (``model name`` in /proc/cpuinfo), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def cpu_cores() -> int:
    """Logical cores this process may run on (the affinity mask, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def gpu_names() -> list[str]:
    """NVIDIA GPU names from ``nvidia-smi``; empty when there is none (or no driver)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str]:
    """Installed versions of ``names`` (missing distributions are left out)."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def git_commit(root: str | os.PathLike | None = None) -> str | None:
    """The checkout's HEAD commit (with ``+dirty`` when files differ), or None outside git."""
    root = Path(root) if root else ROOT
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=20, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (runnable processes; compare with the core count)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, GPUs, OS, Python and library versions: the context of any measurement."""
    return {
        "cpu": cpu_model(),
        "cores": cpu_cores(),
        "load_average": load_average(),
        "gpus": gpu_names(),
        "os": platform.platform(),
        "python_executable": sys.executable,
        "versions": library_versions(),
        "git_commit": git_commit(),
    }


BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 CPU flags of native bf16 arithmetic
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # x86 CPU flags of int8 dot products (VNNI / AMX)
# The flags a deployment report names (what decides float32, bf16 and int8 speed on a CPU).
REPORT_FLAGS = ("avx2", "fma", "avx512f", *VNNI_FLAGS, *BF16_FLAGS)


def cpu_flag_set() -> set[str]:
    """Every flag /proc/cpuinfo lists (x86 ``flags``, ARM ``Features``); empty where there is no /proc/cpuinfo."""
    cpuinfo = Path("/proc/cpuinfo")
    flags: set[str] = set()
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith(("flags", "features")):
                flags |= set(line.split(":", 1)[1].split())
    return flags


def cpu_flags(names: tuple[str, ...] = REPORT_FLAGS) -> dict[str, bool]:
    """Whether this CPU has each of ``names`` (read, never assumed)."""
    have = cpu_flag_set()
    return {name: name in have for name in names}


def cpu_has_vnni() -> bool:
    """Whether the CPU has int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX-INT8)."""
    return bool(cpu_flag_set() & set(VNNI_FLAGS))


def cpu_has_bf16() -> bool:
    """Whether the CPU computes in bf16 natively (x86 ``avx512_bf16``/``amx_bf16``; ARM ``bf16``).

    Without it, bf16 autocast / ``mixed_bfloat16`` emulate bf16 in software: measured 0.07-0.08x the
    float32 speed on a 2-core AVX2 CPU.
    """
    if not Path("/proc/cpuinfo").is_file():
        return platform.machine().lower() in ("arm64", "aarch64")  # Apple/ARM cores with bf16: assume yes
    return bool(cpu_flag_set() & {*BF16_FLAGS, "bf16"})
