"""SIGTERM and SIGINT under DDP (``--nproc 2``, gloo on the CPU; slow): a SIGTERM to the launcher reaches each
process once, they agree at a host check on the step to stop at, the first writes the position inside the epoch,
one line is said and the launcher exits 143; the resume ends bit for bit as an uninterrupted 2-process run. SIGINT
stops both at once and keeps the last epoch's checkpoint."""

import signal
import sys

import pytest

from shared import runs
from shared.signals import STOPPED
from tests.conftest import run_module
from tests.train_helpers import assert_one_line, assert_resumed_like, leftovers, signal_in_second_epoch
from tests.trainer_contract import base_args

NPROC = ("--nproc", "2")


@pytest.fixture(scope="module")
def ddp_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "full"
    run_module("pytorch_impl.train", *base_args(data_dir, out, "--epochs", "2"), *NPROC)
    return out


@pytest.mark.slow
def test_sigterm_under_ddp_stops_both_at_one_step_and_resumes_to_the_same_run(trainer, ddp_run, data_dir, tmp_path):
    out = tmp_path / "stopped"
    cmd = [sys.executable, "-m", "pytorch_impl.train", *base_args(data_dir, out, "--epochs", "2"), *NPROC]
    proc = signal_in_second_epoch(cmd, out, "torch", 0.5, signal.SIGTERM)
    assert proc.returncode == STOPPED
    line = assert_one_line(proc.stderr, "stopped by SIGTERM at epoch 2, step ")
    assert line.endswith(f"; resume with RESUME={out}") and proc.stderr.count("stopped by") == 1
    epoch, iteration = trainer.checkpoint_progress(out)
    assert epoch == 1 and iteration in (30, 40)  # the host check it was agreed at: step 10 or 20 of epoch 2
    assert f"step {iteration - 20};" in line and leftovers(out) == []
    resumed = run_module("pytorch_impl.train", "--resume", out, "--no-progress", "--device", "cpu", *NPROC)
    assert f"resuming at epoch 2, step {iteration - 20}" in resumed.stdout
    assert_resumed_like(out, ddp_run)


@pytest.mark.slow
def test_sigint_under_ddp_stops_both_at_once_and_keeps_the_last_epoch(trainer, data_dir, tmp_path):
    out = tmp_path / "interrupted"
    cmd = [sys.executable, "-m", "pytorch_impl.train", *base_args(data_dir, out, "--epochs", "2"), *NPROC]
    proc = signal_in_second_epoch(cmd, out, "torch", 0.5, signal.SIGINT)
    assert proc.returncode == 128 + signal.SIGINT
    assert_one_line(proc.stderr, f"stopped at once by SIGINT; the run keeps epoch 1; resume with RESUME={out}")
    assert trainer.checkpoint_progress(out) == (1, 20) and leftovers(out) == []
    assert [r["epoch"] for r in runs.read_metrics(out)] == [1] and not (out / runs.RESULTS).exists()
