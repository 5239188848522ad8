"""Test-wide helpers. Each suite directory adds its own framework fixtures."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from shared.process import ROOT
from tests import preload
from tests.preload import BROKER, Parents, install
from tests.run import DEFAULT_ENV, jax_cache

for _name, _value in DEFAULT_ENV.items():
    os.environ.setdefault(_name, _value)
# JAX's compilation cache for this session (tests/run.py gives its pytest processes one for the whole run), or the
# folder the environment names, with what the suite caches
JAX_CACHE = None if "JAX_COMPILATION_CACHE_DIR" in os.environ else Path(tempfile.mkdtemp(prefix="jax-cache-"))
for _name, _value in jax_cache(JAX_CACHE or Path(os.environ["JAX_COMPILATION_CACHE_DIR"])).items():
    os.environ.setdefault(_name, _value)


# The parents are served by `make test`'s runner to its three pytest processes (tests/run.py), or else by this
# one; the framework processes that the project's own tools start come from them too.
PRELOAD = os.environ.get("RESNET_TEST_PRELOAD", "1") != "0"
PARENTS = Parents() if PRELOAD and BROKER not in os.environ else None
if PARENTS is not None:
    PARENTS.share()
elif PRELOAD:
    install()


def run_module(module: str, *args: str, check: bool = True, timeout: int = 900,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m module args...`` from the repository root, in its own process (forked from a parent that has
    imported the module's framework, or numpy and ONNX: tests/preload.py)."""
    return _run_python(["-m", module, *map(str, args)], check=check, timeout=timeout, env=env)


def run_code(code: str, *args: str, check: bool = True, timeout: int = 900,
             env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -c code args...`` from the repository root, in its own process (forked from a parent that has
    imported the framework the code imports: tests/preload.py)."""
    return _run_python(["-c", code, *map(str, args)], check=check, timeout=timeout, env=env)


def _run_python(argv: list[str], *, check: bool, timeout: int, env: dict | None) -> subprocess.CompletedProcess:
    cmd, full_env = [sys.executable, *argv], {**os.environ, **(env or {})}
    proc = preload.run(cmd, cwd=str(ROOT), env=full_env, timeout=timeout) if PRELOAD else None
    if proc is None:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"python {' '.join(argv)} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc


def pytest_sessionfinish():
    if PARENTS is not None:
        PARENTS.close()
    if JAX_CACHE is not None:
        shutil.rmtree(JAX_CACHE, ignore_errors=True)


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


@pytest.fixture(scope="session")
def contract_data_dir(tmp_path_factory) -> Path:
    """The synthetic set at half its size (1,000 / 250 / 250 images of the same generator and seeds), for the trainer
    contract (tests/trainer_contract.py): its runs need to learn, resume and stop, not the full set."""
    from datasets import synthetic
    from datasets.prepared import prepared_dir, write_prepared

    path = tmp_path_factory.mktemp("contract-data")
    sizes = {"train": 1000, "val": 250, "test": 250}
    splits = {split: synthetic.generate(n, seed) for seed, (split, n) in enumerate(sizes.items())}
    write_prepared(prepared_dir("synthetic", path), splits, {**synthetic.meta(0), "sizes": sizes})
    return path
