"""SIGTERM on the JAX and PyTorch backends, over two JAX processes and under MirroredStrategy (slow; processes
where ``import tensorflow`` fails where one is enough): the run finishes its step, backs up the position inside the
epoch and exits 143 with one line; the resume ends bit for bit as an uninterrupted run. Two JAX processes agree on
the step at a host check (a collective), and both take part in the backup."""

import signal
import sys

import numpy as np
import pytest

from shared import runs
from shared.io import load_weights
from shared.signals import STOPPED
from tests.conftest import run_module
from tests.train_helpers import (
    assert_one_line,
    assert_resumed_like,
    deterministic_rows,
    leftovers,
    signal_in_second_epoch,
)
from tests.trainer_contract import base_args

BACKENDS = ("jax", "torch")


def _stop_and_resume(data_dir, tmp_path, backend: str, *extra: str, settle: float = 1.5) -> None:
    launcher = ["tests.no_tensorflow", "keras_impl.train"] if not extra else ["keras_impl.train"]
    full, out = tmp_path / "full", tmp_path / "stopped"
    run_module(*launcher, *base_args(data_dir, full, "--epochs", "2"), *extra, env={"KERAS_BACKEND": backend})
    cmd = [sys.executable, "-m", *launcher, *base_args(data_dir, out, "--epochs", "2"), *extra]
    proc = signal_in_second_epoch(cmd, out, "keras", settle, signal.SIGTERM, KERAS_BACKEND=backend)
    assert proc.returncode == STOPPED, proc.stderr[-3000:]
    line = assert_one_line(proc.stderr, "stopped by SIGTERM at epoch 2, step ")
    assert line.endswith(f"; resume with RESUME={out}") and proc.stderr.count("stopped by") == 1
    assert leftovers(out) == []
    step = line.split("step ")[1].split(";")[0]
    resumed = run_module(*launcher, "--resume", out, "--no-progress", "--device", "cpu", *extra,
                         env={"KERAS_BACKEND": backend})
    assert resumed.stdout.count(f"resuming at epoch 2, step {step}") == 1
    assert_resumed_like(out, full)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_sigterm_mid_epoch_then_resume_gives_the_same_run(data_dir, tmp_path, backend):
    _stop_and_resume(data_dir, tmp_path, backend)


@pytest.mark.slow
def test_two_jax_processes_stop_on_sigterm_at_one_step_and_resume_to_the_same_run(data_dir, tmp_path):
    # The processes agree on a stop every 10 steps: epochs of 50 steps (batch 40) put the SIGTERM well before the
    # last agreement of the run, whatever the machine's speed (with 20 steps, it often came after it).
    _stop_and_resume(data_dir, tmp_path, "jax", "--nproc", "2", "--batch-size", "40", settle=0.5)


@pytest.mark.slow
def test_mirrored_strategy_resumes_after_sigterm_to_the_same_weights(data_dir, tmp_path):
    """MirroredStrategy over 2 logical CPU devices (TensorFlow): the resume, which restores the optimizer in the
    strategy's scope, ends with the same weights. Validation runs each replica on its own BN statistics, which the
    backup holds as their mean, so only the rows before the stop are compared (docs/training.md)."""
    full, out = tmp_path / "full", tmp_path / "stopped"
    launcher = ["tests.cpu_replicas", "2", "keras_impl.train"]
    run_module(*launcher, *base_args(data_dir, full, "--epochs", "2", "--strategy", "mirrored"))
    cmd = [sys.executable, "-m", *launcher, *base_args(data_dir, out, "--epochs", "2", "--strategy", "mirrored")]
    proc = signal_in_second_epoch(cmd, out, "keras", 1.5, signal.SIGTERM)
    assert proc.returncode == STOPPED
    assert_one_line(proc.stderr, "stopped by SIGTERM at epoch 2, step ")
    run_module(*launcher, "--resume", out, "--no-progress", "--device", "cpu")
    assert runs.read_run(out)["finished"] and deterministic_rows(out)[:1] == deterministic_rows(full)[:1]
    a, b = load_weights(out / runs.LAST)[0], load_weights(full / runs.LAST)[0]
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
