"""What both trainers promise, written once and run on each: ``tests/torch/test_train_contract.py`` and
``tests/keras/test_train_contract.py`` collect these tests with their suite's ``trainer`` fixture (each framework
in its own pytest process).

On half the synthetic set (``contract_data_dir``), on the CPU, ResNet-8: it learns and leaves a complete run
folder, the same seed gives the same steps bit for bit, a SIGKILLed run resumes to the same end (its thread count
restored), a NaN stops the run with one line and keeps the last good checkpoint, and every user error is one
``error:`` line with exit status 2.
A SIGTERM, a full disk and a second SIGTERM each stop it with one line and lose nothing: the resume ends the same.
The determinism and resume tests run at one thread and at the framework's default threading.
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import signal
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared import errors, runs
from shared import io as shared_io
from shared.io import load_weights
from shared.run_folder import RunFolder
from shared.signals import STOPPED
from shared.spec import ModelSpec
from tests.conftest import run_module
from tests.disk import small_disk
from tests.train_helpers import (
    assert_full_disk_kept_epoch_1,
    assert_learned_run,
    assert_resumed_like,
    deterministic_rows,
    fill_the_disk_in_second_epoch,
    kill_in_second_epoch,
    leftovers,
)

CHANCE = 0.1  # 10 balanced classes
CONTRACT_BATCH = "50"
THREADING = {"one thread": "1", "default threading": None}


@dataclass(frozen=True)
class Trainer:
    """One framework's trainer as the contract drives it."""

    framework: str
    module: str  # python -m <module>
    settle: float  # seconds into epoch 2 before the SIGKILL (about half of it)
    default_threads: int  # the framework's own intra-op count in a fresh process
    checkpoint_progress: Callable[[Path], tuple[int, int]]  # (epoch, optimizer steps) the resume checkpoint holds
    check_optimizer: Callable[[Path], None]  # asserts what the checkpoint says the optimizer stepped with
    other_framework: str

    def main(self, argv: list[str]) -> int:
        """The trainer's entry point in this process, as ``python -m`` runs it (user errors -> exit 2)."""
        return errors.run(importlib.import_module(self.module).main, argv)


def base_args(data_dir: Path, out: Path, *extra: str, threads: str | None = "1", batch: str = "100") -> list[str]:
    return ["--dataset", "synthetic", "--data-dir", str(data_dir), "--model", "resnet8", "--batch-size", batch,
            *(["--threads", threads] if threads else []), "--no-progress", "--device", "cpu", "--out", str(out),
            *extra]


def _args(data: Path, out: Path, *extra: str, threads: str | None = "1") -> list[str]:
    """The contract's runs: ResNet-8 on the half-size synthetic set (``contract_data_dir``) in batches of 50, 20 steps
    an epoch as on the full set in batches of 100, at half the compute."""
    return base_args(data, out, *extra, threads=threads, batch=CONTRACT_BATCH)


@pytest.fixture(scope="module", params=THREADING)
def full_run(request, trainer, contract_data_dir, tmp_path_factory) -> tuple[Path, str | None]:
    """(two epochs of 20 iterations, uninterrupted: the reference run; its --threads)."""
    threads = THREADING[request.param]
    out = tmp_path_factory.mktemp("runs") / "full"
    run_module(trainer.module, *_args(contract_data_dir, out, "--epochs", "2", "--trace-steps", "5", threads=threads))
    return out, threads


def _tb_scalars(run_dir: Path) -> dict[str, list[float]]:
    # tensorboard's reader on its TF-free stub (tensorflow must stay out of the torch suite's process)
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_learns_and_leaves_a_complete_run_folder(trainer, full_run):
    out, threads = full_run
    run = assert_learned_run(out, trainer.framework, CHANCE)
    rows, results, config = run["metrics"], run["results"], run["config"]
    assert config["threads"] == {"requested": threads and int(threads),
                                 "intra_op": int(threads) if threads else trainer.default_threads}
    assert results["best_val_acc"] == max(r["val_acc"] for r in rows)
    for name in ("best", "last"):
        arrays, meta = load_weights(run[name])
        assert ModelSpec.from_dict(json.loads(meta["spec"])).name == "resnet8"
        assert meta["framework"] == trainer.framework and "layer1.0.conv1.weight" in arrays
    assert trainer.checkpoint_progress(out) == (2, 40)
    trainer.check_optimizer(out)
    tb = _tb_scalars(out)
    assert tb["loss/train"] == pytest.approx([r["train_loss"] for r in rows], rel=1e-6)
    assert tb["accuracy/val"] == pytest.approx([r["val_acc"] for r in rows], rel=1e-6)
    assert {"torch": "pytorch_impl", "keras": "keras_impl"}[trainer.other_framework] not in sys.modules


def test_sigkill_mid_epoch_then_resume_gives_the_same_metrics(trainer, full_run, contract_data_dir, tmp_path):
    out, threads = full_run
    """The same seed gives the same run (the first steps bit for bit, before the kill), and a run killed in the
    middle of epoch 2 resumes to the uninterrupted run's metrics, weights and test result."""
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", trainer.module,
           *_args(contract_data_dir, killed, "--epochs", "2", "--trace-steps", "5", threads=threads)]
    kill_in_second_epoch(cmd, killed, trainer.framework, settle=trainer.settle)
    first = json.loads((out / "steps.json").read_text())
    steps = json.loads((killed / "steps.json").read_text())  # written with epoch 1, before the kill
    assert steps["lr"] == first["lr"] == [0.1] * 5
    assert steps["loss"] == first["loss"]  # bit for bit
    # The run's thread count comes back without --threads; a conflicting --epochs is reported and ignored.
    proc = run_module(trainer.module, "--resume", str(killed), "--epochs", "5", "--no-progress", "--device", "cpu")
    assert "resuming at epoch 2" in proc.stdout
    assert "note: --epochs 5 ignored" in proc.stderr and "epochs 2" in proc.stderr
    assert proc.stderr.count("ignored") == 1  # flags not given (--model, --dataset) are not "ignored"
    restored = (f"note: resuming with {threads} intra-op thread(s) (--threads {threads})" if threads
                else f"note: resuming with the framework's default threading ({trainer.default_threads} intra-op")
    assert restored in proc.stderr
    assert_resumed_like(killed, out)


def test_nonfinite_loss_stops_with_one_line(trainer, contract_data_dir, tmp_path):
    proc = run_module(trainer.module, *_args(contract_data_dir, tmp_path / "nan", "--iters", "15", "--lr", "1e36"),
                      check=False)
    assert proc.returncode == errors.USER_ERROR
    assert "error: training loss became nan" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "nan" / runs.RESULTS).exists()


@pytest.mark.parametrize("extra,match", [
    (["--model", "resnet21"], "unknown model 'resnet21'"),
    (["--epochs", "1", "--iters", "5"], "not both"),
    (["--num-classes", "3"], "does not match synthetic, which has 10 classes"),
    (["--batch-size", "5000"], "larger than the 1000 training images"),
    (["--init", "missing.safetensors"], "--init missing.safetensors: no such weight file"),
    (["--shortcut", "D"], "argument --shortcut: invalid choice: 'D'"),
    (["--threads", "0"], "--threads must be >= 1; got 0"),
])
def test_user_errors_are_one_line_and_exit_2(trainer, contract_data_dir, tmp_path, capsys, extra, match):
    assert trainer.main(_args(contract_data_dir, tmp_path / "x", *extra)) == errors.USER_ERROR
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and match in err


def test_cuda_without_a_gpu_is_one_line(trainer, contract_data_dir, tmp_path, capsys):
    if trainer.main(_args(contract_data_dir, tmp_path / "x", "--device", "cuda", "--iters", "1")) == 0:
        pytest.skip("this machine has a CUDA GPU")
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --device cuda: no CUDA GPU is visible") and "\n" not in err


def test_resume_refuses_a_folder_that_is_not_a_run(trainer, tmp_path, capsys):
    assert trainer.main(["--resume", str(tmp_path)]) == errors.USER_ERROR
    assert "not a run folder" in capsys.readouterr().err


def test_divergence_keeps_the_last_good_checkpoint_and_resume_recovers(trainer, contract_data_dir, tmp_path,
                                                                       monkeypatch, capsys):
    """The loss turns NaN in epoch 2 (the run folder's NaN guard is told so): one line, exit 2, the epoch-1
    checkpoint, weights and rows kept; the resume refuses another thread count and then finishes."""
    real = RunFolder.check_loss

    def diverge_in_epoch_2(run, loss, lr):
        return real(run, float("nan") if run.progress.epoch == 1 else loss, lr)

    out = tmp_path / "diverged"
    monkeypatch.setattr(RunFolder, "check_loss", diverge_in_epoch_2)
    assert trainer.main(_args(contract_data_dir, out, "--epochs", "2")) == errors.USER_ERROR
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: training loss became nan at epoch 2") and "\n" not in err
    assert "the last good checkpoint (epoch 1) is kept" in err
    assert trainer.checkpoint_progress(out) == (1, 20)
    assert load_weights(out / runs.LAST)[1]["epoch"] == "1" and not (out / runs.RESULTS).exists()
    monkeypatch.setattr(RunFolder, "check_loss", real)
    assert trainer.main(["--resume", str(out), "--threads", "2", "--no-progress", "--device", "cpu"]) == 2
    assert "started with 1 intra-op thread(s)" in capsys.readouterr().err
    assert trainer.main(["--resume", str(out), "--no-progress", "--device", "cpu"]) == 0
    assert runs.read_run(out)["finished"] and len(runs.read_metrics(out)) == 2


def test_an_unwritable_run_folder_is_one_line_before_any_data_is_read(trainer, tmp_path, capsys):
    """/proc takes no new folders (even for root); the data folder is empty, so reading CIFAR-10 first would fail
    on the data instead."""
    argv = ["--dataset", "cifar10", "--data-dir", str(tmp_path / "empty"), "--out", "/proc/nope/run", "--no-progress"]
    assert trainer.main(argv) == errors.USER_ERROR
    err = capsys.readouterr().err.strip()
    assert err == ("error: cannot write the run folder /proc/nope/run: cannot create the folder /proc/nope/run "
                   "(No such file or directory)")
    assert not (tmp_path / "empty").exists()


def _at_first_check_of(epoch: int, action: Callable[[RunFolder], None]) -> Callable:
    """A ``RunFolder.check_loss`` that calls ``action(run)`` once, at the first host check of ``epoch`` (0-based)."""
    real, done = RunFolder.check_loss, []

    def check_loss(run: RunFolder, loss: float, lr: float) -> None:
        real(run, loss, lr)
        if run.progress.epoch == epoch and not done:
            done.append(True)
            action(run)

    return check_loss


def _sigterm(times: int) -> Callable[[RunFolder], None]:
    return lambda run: [os.kill(os.getpid(), signal.SIGTERM) for _ in range(times)]


@pytest.mark.parametrize("full_run", ["one thread"], indirect=True)
def test_sigterm_a_full_disk_and_a_second_sigterm_each_keep_the_run_and_it_resumes_to_the_same_end(
        trainer, full_run, contract_data_dir, tmp_path, monkeypatch, capsys):
    """One run stopped three ways, in this process, each at the first host check of an epoch: a SIGTERM in epoch 1
    (it finishes the step and writes the position inside the epoch: exit 143), a full disk at the epoch-2
    checkpoint (exit 2; the epoch-1 files stay as they were), a second SIGTERM in epoch 2 (at once: exit 143).
    Each says one line and leaves no temporary file; the last resume ends bit for bit as the uninterrupted run."""
    full, _ = full_run
    out = tmp_path / "stopped"
    resume = ["--resume", str(out), "--no-progress", "--device", "cpu"]
    checkpoint = out / runs.CHECKPOINTS[trainer.framework]

    monkeypatch.setattr(RunFolder, "check_loss", _at_first_check_of(0, _sigterm(1)))
    assert trainer.main(_args(contract_data_dir, out, "--epochs", "2")) == STOPPED
    step = trainer.checkpoint_progress(out)[1]
    assert trainer.checkpoint_progress(out) == (0, step) and 10 <= step <= 11  # the check's step, or the next one
    assert capsys.readouterr().err.strip().splitlines()[-1] == (f"stopped by SIGTERM at epoch 1, step {step}; "
                                                                f"resume with RESUME={out}")
    assert not (out / runs.METRICS).exists() and leftovers(out) == []

    real_sync, armed = shared_io._sync, []

    def full_disk_at_the_checkpoint(tmp: str) -> None:  # the epoch's last write, once its other files are staged
        if armed and Path(tmp).name.startswith(f".{checkpoint.name}."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)
        real_sync(tmp)

    monkeypatch.setattr(shared_io, "_sync", full_disk_at_the_checkpoint)
    monkeypatch.setattr(RunFolder, "check_loss", _at_first_check_of(1, lambda run: armed.append(True)))
    assert trainer.main(resume) == errors.USER_ERROR
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"error: no space left on device while writing {checkpoint} (")
    assert line.endswith(f" MB free); the run keeps epoch 1; free space and resume with RESUME={out}")
    assert deterministic_rows(out) == deterministic_rows(full)[:1] and leftovers(out) == []
    assert load_weights(out / runs.LAST)[1]["epoch"] == "1" and trainer.checkpoint_progress(out) == (1, 20)

    monkeypatch.setattr(shared_io, "_sync", real_sync)
    monkeypatch.setattr(RunFolder, "check_loss", _at_first_check_of(1, _sigterm(2)))
    assert trainer.main(resume) == STOPPED
    assert capsys.readouterr().err.strip().splitlines()[-1] == (f"stopped at once by SIGTERM; the run keeps epoch 1; "
                                                                f"resume with RESUME={out}")
    assert trainer.checkpoint_progress(out) == (1, 20) and leftovers(out) == []

    monkeypatch.undo()
    assert trainer.main(resume) == 0
    assert_resumed_like(out, full)


def test_a_full_disk_in_the_second_epoch_is_one_line_and_the_resume_finishes(trainer, contract_data_dir, tmp_path):
    """A real full disk in the middle of a run (a small tmpfs; skipped where it cannot be mounted): one line that
    names the file and the space left, the epoch-1 files kept, and the resume finishes once space is freed. Until
    now ``torch.save`` said ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos``, with a
    traceback; Keras' backup goes through h5py, whose own full-disk errors say errno 28. Slow on Keras."""
    with small_disk(tmp_path / "disk", 32 << 20) as disk:
        out = disk / "run"
        cmd = [sys.executable, "-m", trainer.module, *_args(contract_data_dir, out, "--epochs", "2")]
        assert_full_disk_kept_epoch_1(fill_the_disk_in_second_epoch(cmd, disk, out, trainer.framework), out,
                                      trainer.framework)
        assert trainer.checkpoint_progress(out) == (1, 20)
        resumed = run_module(trainer.module, "--resume", out, "--no-progress", "--device", "cpu")
        assert "resuming at epoch 2" in resumed.stdout and runs.read_run(out)["finished"]
