"""Test-wide helpers. Each suite directory adds its own framework fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.process import ROOT

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")


def run_module(module: str, *args: str, check: bool = True, timeout: int = 900,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m module args...`` from the repository root, in its own process."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
        timeout=timeout, env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"python -m {module} {' '.join(map(str, args))} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc


@pytest.fixture
def run():
    return run_module


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A data folder holding the prepared synthetic set (``make data DATASET=synthetic``), once per test process."""
    from datasets import load_prepared

    path = tmp_path_factory.mktemp("data")
    load_prepared("synthetic", path)
    return path
