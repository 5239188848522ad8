"""shared/backends.py and make BACKEND=: a bad Keras backend or a missing package is one line."""

from __future__ import annotations

import importlib.util
import subprocess

import pytest

from shared import backends, process
from shared.errors import UserError
from tests.conftest import ROOT


def test_unknown_backend_lists_the_choices():
    with pytest.raises(ValueError, match=r"unknown Keras backend 'mxnet'.*valid choices: tensorflow, jax, torch"):
        backends.keras_backend({"KERAS_BACKEND": "mxnet"})
    assert backends.keras_backend({}) == "tensorflow"


def test_missing_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "jax" else real(name, *a))
    with pytest.raises(ValueError, match=r"needs the 'jax' package.*pip install jax==\d"):
        backends.installed_backend("jax")
    with pytest.raises(UserError, match="the Keras jax backend needs"):
        monkeypatch.setenv("KERAS_BACKEND", "jax")
        process.child_env()


def test_pinned_versions_are_read_from_the_requirements():
    reqs = (ROOT / "requirements.txt").read_text().split()
    pins = [backends.pinned(b) for b in backends.BACKENDS]
    assert all("==" in pin and pin in reqs for pin in pins)
    assert backends.pinned("no-such-package") == "no-such-package"


def test_make_refuses_an_unknown_backend_in_one_line():
    proc = subprocess.run(["make", "-n", "summary", "FRAMEWORK=keras", "BACKEND=mxnet"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "BACKEND must be one of: tensorflow jax torch; got 'mxnet'" in proc.stderr
    ok = subprocess.run(["make", "-n", "summary", "FRAMEWORK=keras", "BACKEND=jax"], cwd=ROOT, capture_output=True,
                        text=True)
    assert ok.returncode == 0 and "keras_impl.summary" in ok.stdout
