"""Framework-neutral training pieces: flags, settings, threads on resume, device choice, NaN guard, metrics
rows, progress bookkeeping."""

import argparse
import dataclasses

import pytest

from datasets import load_prepared
from shared.devices import resolve_device_name
from shared.errors import UserError
from shared.run_folder import EpochLog, NonFiniteLoss, Progress, RunFolder, metrics_row
from shared.run_settings import resolve_run
from shared.threads import choose_threads
from shared.train_flags import parse_bool, train_arg_parser, without_nproc


def test_boolean_switches_accept_the_makefile_forms():
    p = train_arg_parser("t", "torch")
    assert p.parse_args([]).amp is False
    assert p.parse_args(["--amp"]).amp is True
    assert p.parse_args(["--amp", "1", "--jit", "0"]).amp is True
    assert p.parse_args(["--jit", "0"]).jit is False
    with pytest.raises(argparse.ArgumentTypeError, match="got 'maybe'"):
        parse_bool("maybe")


def test_device_choice():
    assert resolve_device_name("auto", 0) == "cpu"
    assert resolve_device_name("auto", 2) == "cuda"
    assert resolve_device_name("gpu", 1) == "cuda"
    assert resolve_device_name("cuda:1", 2) == "cuda:1"
    with pytest.raises(UserError, match="no CUDA GPU is visible"):
        resolve_device_name("cuda", 0)
    with pytest.raises(UserError, match="only 1 GPU"):
        resolve_device_name("cuda:3", 1)
    with pytest.raises(UserError, match="valid choices: auto, cpu, cuda"):
        resolve_device_name("tpu", 0)


def test_nan_guard_names_where_and_what_is_kept(synthetic_dir, tmp_path):
    settings = _settings(synthetic_dir, tmp_path)
    # A run resumed from its epoch-2 checkpoint: that checkpoint is what the folder keeps.
    run = RunFolder(dataclasses.replace(settings, saved={}), {}, Progress(epoch=2, iteration=812), owner=False)
    run.check_loss(1.5, 0.1)
    with pytest.raises(NonFiniteLoss, match="became nan at epoch 3, iteration 812") as e:
        run.check_loss(float("nan"), 0.1)
    assert isinstance(e.value, UserError)  # one error: line, exit 2
    assert "last good checkpoint (epoch 2) is kept" in str(e.value) and str(settings.run_dir) in str(e.value)
    with pytest.raises(NonFiniteLoss, match="no epoch finished"):
        RunFolder(settings, {}, Progress(), owner=False).check_loss(float("inf"), 0.1)


def test_metrics_row_speed_is_the_training_phase_alone():
    row = metrics_row(3, EpochLog(loss=1.5, acc=0.5, images=400, seconds=2.0, lr=0.01), 1.25, 0.75, seconds=5.0)
    assert row == {"epoch": 3, "train_loss": 1.5, "train_acc": 0.5, "val_loss": 1.25, "val_acc": 0.75, "lr": 0.01,
                   "seconds": 5.0, "images_per_s": 200.0}


def test_progress_tracks_best_and_round_trips():
    p = Progress()
    assert p.finish_epoch({"epoch": 1, "val_acc": 0.5, "seconds": 2.0})
    assert not p.finish_epoch({"epoch": 2, "val_acc": 0.4, "seconds": 3.0})
    assert (p.epoch, p.best_epoch, p.best_val_acc, p.wall_time_s) == (2, 1, 0.5, 5.0)
    assert Progress.from_dict(p.to_dict()) == p


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    load_prepared("synthetic", d)
    return d


def _settings(synthetic_dir, tmp_path, *extra):
    args = train_arg_parser("t", "torch").parse_args(["--dataset", "synthetic", "--data-dir", str(synthetic_dir),
                                                      "--model", "resnet8", "--iters", "4", "--out",
                                                      str(tmp_path / "run"), *extra])
    return resolve_run(args, "torch", load_prepared)[0]


def test_threads_are_chosen_recorded_and_restored_on_resume(synthetic_dir, tmp_path, capsys):
    new = _settings(synthetic_dir, tmp_path, "--threads", "3")
    assert choose_threads(new, default=8) == (3, {"requested": 3, "intra_op": 3})
    default = _settings(synthetic_dir, tmp_path)
    assert choose_threads(default, default=8) == (None, {"requested": None, "intra_op": 8})
    assert choose_threads(default, default=None) == (None, {"requested": None, "intra_op": None})  # XLA's pool
    with pytest.raises(UserError, match="^--threads must be >= 1; got 0$"):
        choose_threads(_settings(synthetic_dir, tmp_path, "--threads", "0"), default=8)
    # Resuming: the saved count comes back, with a note; a different explicit count is refused.
    explicit = {"requested": 3, "intra_op": 3}
    resumed = dataclasses.replace(default, saved={"threads": explicit})
    assert choose_threads(resumed, default=8) == (3, explicit)
    assert capsys.readouterr().err == "note: resuming with 3 intra-op thread(s) (--threads 3), as the run started\n"
    with pytest.raises(UserError, match=r"^--threads 8: .* started with 3 intra-op thread\(s\) .*--threads 3$"):
        choose_threads(dataclasses.replace(resumed, threads=8), default=8)
    assert choose_threads(dataclasses.replace(resumed, threads=3), default=8)[0] == 3
    # a run recorded before the record's key was "requested" resumes the same way
    assert choose_threads(dataclasses.replace(default, saved={"threads": {"workers": 3, "intra_op": 3}}),
                          default=8)[0] == 3
    capsys.readouterr()
    started_default = dataclasses.replace(default, saved={"threads": {"requested": None, "intra_op": 8}})
    assert choose_threads(started_default, default=8)[0] is None  # the same default: nothing to set
    assert "default threading (8 intra-op threads)" in capsys.readouterr().err
    assert choose_threads(started_default, default=2)[0] == 8  # another machine: its default differs
    assert "this machine's default is 2" in capsys.readouterr().err


def test_labels_pick_the_cifar100_dataset(tmp_path):
    """``--labels coarse`` trains cifar100_coarse; a label set the dataset lacks is a one-line error."""
    from datasets.cifar import prepare
    from datasets.fixtures import write_cifar100_python

    write_cifar100_python(tmp_path, 200, 100)
    prepare(tmp_path, "cifar100_coarse", val_size=40, download=False)
    p = train_arg_parser("t", "torch")
    args = p.parse_args(["--dataset", "cifar100", "--labels", "coarse", "--data-dir", str(tmp_path), "--model",
                         "resnet8", "--epochs", "1", "--out", str(tmp_path / "run")])
    settings, _ = resolve_run(args, "torch", load_prepared)
    assert (settings.dataset, settings.spec.num_classes, settings.plan.recipe) == ("cifar100_coarse", 20, "cifar-paper")
    args = p.parse_args(["--dataset", "cifar10", "--labels", "coarse", "--data-dir", str(tmp_path)])
    with pytest.raises(UserError, match="^unknown labels 'coarse' for dataset cifar10; valid choices: fine$"):
        resolve_run(args, "torch", load_prepared)


def test_launched_processes_run_the_command_without_nproc():
    argv = ["--model", "resnet8", "--nproc", "2", "--epochs", "1", "--nproc=3", "--out", "x"]
    assert without_nproc(argv) == ["--model", "resnet8", "--epochs", "1", "--out", "x"]
    assert without_nproc(["--out", "nproc"]) == ["--out", "nproc"]  # a value that merely reads like it stays
