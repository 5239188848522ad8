"""keras_impl.train on the JAX and PyTorch backends, in processes where ``import tensorflow`` fails: it
trains (fast), and a run killed mid-epoch resumes to the uninterrupted run's metrics (slow; default threading,
as a user runs it). The multi-device JAX runs are slow; tests/keras/test_data.py checks their batch slicing and
padding in the fast suite."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from shared import runs
from shared.io import load_weights
from tests.conftest import run_module
from tests.keras.test_train import base_args
from tests.train_helpers import assert_resumed_like, kill_in_second_epoch, same_metrics
from tests.trainer_contract import CONTRACT_BATCH
from tests.trainer_contract import base_args as contract_args

BACKENDS = ("jax", "torch")


def train(backend: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_module("tests.no_tensorflow", "keras_impl.train", *args, env={"KERAS_BACKEND": backend}, check=check)


@pytest.mark.parametrize("backend", BACKENDS)
def test_trains_without_tensorflow(contract_data_dir, tmp_path, backend):
    """One run per backend: it learns and finishes. That the same seed gives the same run on these backends is
    the slow SIGKILL test below (an uninterrupted run and a killed, resumed one end bit for bit alike). On the
    trainer contract's half-size set in its batches of 50: the same 20 steps an epoch at half the compute."""
    out = tmp_path / "run"  # 25 iterations: a whole epoch of 20, then 5 of the second
    train(backend, *contract_args(contract_data_dir, out, "--iters", "25", threads=None, batch=CONTRACT_BATCH))
    run = runs.read_run(out)
    assert run["finished"] and run["config"]["device"]["backend"] == backend
    rows = run["metrics"]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["val_acc"] > 0.2  # it learned (chance 0.1)
    assert run["results"]["iterations"] == 25


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_jax_two_processes_take_the_steps_of_two_devices_in_one(data_dir, tmp_path):
    """``--nproc 2``: two JAX processes joined by keras.distribution.initialize (gloo on the CPU), each feeding
    its half of every global batch, train exactly as one process over 2 devices: the same global batch, the
    same all-reduce of 2 gradients. Bit for bit: steps, metrics, test result and weights. Only the first
    process writes the run folder."""
    args = ("--iters", "25", "--trace-steps", "6")
    run_module("keras_impl.train", *base_args(data_dir, tmp_path / "one", *args),
               env={"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    two = run_module("keras_impl.train", *base_args(data_dir, tmp_path / "two", *args), "--nproc", "2",
                     env={"KERAS_BACKEND": "jax"})
    assert "DataParallel x2 over 2 processes" in two.stdout
    assert two.stdout.count("training resnet8") == 1 and two.stdout.count("test acc") == 1  # the first process
    a, b = runs.read_run(tmp_path / "one"), runs.read_run(tmp_path / "two")
    assert (a["config"]["device"]["processes"], b["config"]["device"]["processes"]) == (1, 2)
    assert json.loads((tmp_path / "two" / "steps.json").read_text()) == json.loads(
        (tmp_path / "one" / "steps.json").read_text())
    assert same_metrics(tmp_path / "one", tmp_path / "two")
    assert [a["results"][k] for k in ("test_acc", "test_loss")] == [b["results"][k] for k in ("test_acc", "test_loss")]
    wa, _ = load_weights(tmp_path / "one" / runs.LAST)
    wb, _ = load_weights(tmp_path / "two" / runs.LAST)
    assert all(np.array_equal(wa[k], wb[k]) for k in wa) and len(wa) == len(wb)
    assert len(list((tmp_path / "two").glob("events.out.tfevents.*"))) == 1


@pytest.mark.slow
def test_two_jax_processes_killed_mid_epoch_resume_to_the_same_run(data_dir, tmp_path):
    full, out = tmp_path / "full", tmp_path / "killed"
    run_module("keras_impl.train", *base_args(data_dir, full, "--epochs", "2"), "--nproc", "2",
               env={"KERAS_BACKEND": "jax"})
    cmd = [sys.executable, "-m", "keras_impl.train", *base_args(data_dir, out, "--epochs", "2"), "--nproc", "2"]
    kill_in_second_epoch(cmd, out, "keras", settle=1.5, KERAS_BACKEND="jax")
    resumed = run_module("keras_impl.train", "--resume", out, "--no-progress", "--nproc", "2", "--device", "cpu",
                         env={"KERAS_BACKEND": "jax"})
    assert resumed.stdout.count("resuming at epoch 2") == 1
    assert_resumed_like(out, full)


@pytest.mark.slow
def test_jax_evaluation_batches_that_do_not_split_over_the_devices_are_padded_with_weight_zero(data_dir, tmp_path):
    """3 devices, batch 96: the 500-image splits end in a batch of 20, which 3 devices cannot split. It is
    padded with weight-0 copies, and validation and test give what one device gives (the lr is ~0, so the
    weights are the same up to the float order of BN's batch statistics)."""
    args = ("--iters", "6", "--lr", "1e-12", "--batch-size", "96")
    for devices in (1, 3):
        run_module("tests.no_tensorflow", "keras_impl.train", *base_args(data_dir, tmp_path / f"d{devices}", *args),
                   env={"KERAS_BACKEND": "jax", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"})
    one, three = runs.read_run(tmp_path / "d1"), runs.read_run(tmp_path / "d3")
    assert three["config"]["device"]["replicas"] == 3
    for key in ("val_loss", "val_acc"):
        assert three["metrics"][0][key] == pytest.approx(one["metrics"][0][key], rel=1e-6, abs=0)
    for key in ("test_loss", "test_acc"):
        assert three["results"][key] == pytest.approx(one["results"][key], rel=1e-6, abs=0)


@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_several_processes_off_jax_fail_with_one_line_naming_the_route(data_dir, tmp_path, backend):
    proc = run_module("keras_impl.train", *base_args(data_dir, tmp_path / "x", "--iters", "2"), "--nproc", "2",
                      env={"KERAS_BACKEND": backend}, check=False)
    assert proc.returncode == 2 and not (tmp_path / "x").exists()
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: --nproc 2: several Keras training processes run on the jax backend "
                           f"(keras.distribution), not on {backend}; use KERAS_BACKEND=jax")


def test_several_jax_processes_on_one_machine_need_the_cpu(data_dir, tmp_path):
    args = [a for a in base_args(data_dir, tmp_path / "x", "--iters", "2") if a not in ("--device", "cpu")]
    proc = run_module("tests.no_tensorflow", "keras_impl.train", *args, "--nproc", "2", "--device", "cuda",
                      env={"KERAS_BACKEND": "jax"}, check=False)
    assert proc.returncode == 2 and not (tmp_path / "x").exists()
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --nproc 2 --device cuda: the processes on one "
                                                            "machine are CPU processes (gloo); give --device cpu")


@pytest.mark.parametrize("value,message", [("two", "'two' is not a whole number"), ("0", "0: must be >= 1")])
def test_a_bad_process_count_fails_with_one_line(data_dir, tmp_path, value, message):
    proc = run_module("tests.no_tensorflow", "keras_impl.train", *base_args(data_dir, tmp_path / "x", "--iters", "2"),
                      env={"KERAS_BACKEND": "jax", "KERAS_DISTRIBUTION_NUM_PROCESSES": value}, check=False)
    assert proc.returncode == 2 and not (tmp_path / "x").exists()
    assert proc.stderr.strip().splitlines()[-1] == f"error: KERAS_DISTRIBUTION_NUM_PROCESSES={message}"
