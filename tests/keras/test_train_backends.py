"""keras_impl.train on the JAX and PyTorch backends, in processes where ``import tensorflow`` fails: it
trains, the same seed gives the same metrics.csv, and a run killed mid-epoch resumes to the same metrics
(default threading, as a user runs it)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from shared import runs
from tests.conftest import run_module
from tests.keras.test_train import base_args
from tests.train_helpers import assert_resumed_like, kill_in_second_epoch, same_metrics

BACKENDS = ("jax", "torch")


def train(backend: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_module("tests.no_tensorflow", "keras_impl.train", *args, env={"KERAS_BACKEND": backend}, check=check)


@pytest.mark.parametrize("backend", BACKENDS)
def test_trains_without_tensorflow_and_the_same_seed_gives_the_same_run(data_dir, tmp_path, backend):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):  # 25 iterations: a whole epoch of 20, then 5 of the second
        train(backend, *base_args(data_dir, out, "--iters", "25"))
    run = runs.read_run(a)
    assert run["finished"] and run["config"]["device"]["backend"] == backend
    rows = run["metrics"]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["val_acc"] > 0.2  # it learned (chance 0.1)
    assert run["results"]["iterations"] == 25
    assert same_metrics(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkill_mid_epoch_then_resume_gives_the_same_metrics(data_dir, tmp_path, backend):
    full = tmp_path / "full"
    train(backend, *base_args(data_dir, full, "--epochs", "2"))
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "tests.no_tensorflow", "keras_impl.train", *base_args(data_dir, out, "--epochs", "2")]
    kill_in_second_epoch(cmd, out, "keras", settle=1.5, KERAS_BACKEND=backend)
    assert "resuming at epoch 2" in train(backend, "--resume", str(out), "--no-progress").stdout
    assert_resumed_like(out, full)


def test_jax_data_parallel_on_two_cpu_devices_takes_the_same_steps(data_dir, tmp_path):
    """keras.distribution.DataParallel over 2 host devices: the same global batch and lr schedule, the same
    losses as one device up to float32 reduction order."""
    args = ("--iters", "6", "--trace-steps", "6")
    train("jax", *base_args(data_dir, tmp_path / "one", *args))
    two = run_module("tests.no_tensorflow", "keras_impl.train", *base_args(data_dir, tmp_path / "two", *args),
                     env={"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert "DataParallel x2" in two.stdout
    assert runs.read_run(tmp_path / "two")["config"]["device"]["replicas"] == 2
    one = json.loads((tmp_path / "one" / "steps.json").read_text())
    dp = json.loads((tmp_path / "two" / "steps.json").read_text())
    assert dp["lr"] == one["lr"] == pytest.approx([0.1] * 3 + [0.01] * 2 + [0.001])
    assert dp["loss"][0] == pytest.approx(one["loss"][0], rel=1e-6)
    assert dp["loss"] == pytest.approx(one["loss"], rel=1e-4)
