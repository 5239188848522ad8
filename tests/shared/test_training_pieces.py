"""Framework-neutral training pieces: flags, settings, threads on resume, device choice, NaN guard, metrics
rows, progress bookkeeping."""

import argparse
import dataclasses

import pytest

from datasets import load_prepared
from shared.run_folder import Progress
from shared.training import (
    EpochLog,
    NonFiniteLoss,
    check_finite,
    choose_threads,
    metrics_row,
    nonfinite_message,
    parse_bool,
    resolve_device_name,
    setup_run,
    train_arg_parser,
    without_nproc,
)


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
    with pytest.raises(SystemExit, match="no CUDA GPU is visible"):
        resolve_device_name("cuda", 0)
    with pytest.raises(SystemExit, match="only 1 GPU"):
        resolve_device_name("cuda:3", 1)
    with pytest.raises(SystemExit, match="valid choices: auto, cpu, cuda"):
        resolve_device_name("tpu", 0)


def test_nan_guard_names_where_and_what_is_kept(tmp_path):
    check_finite(1.5, 0, 10, 0.1)
    with pytest.raises(NonFiniteLoss, match="became nan at epoch 3, iteration 812") as e:
        check_finite(float("nan"), 2, 812, 0.1)
    msg = nonfinite_message(e.value, tmp_path, 2)
    assert msg.startswith("error: ") and "last good checkpoint (epoch 2)" in msg and str(tmp_path) in msg


def test_metrics_row_speed_is_the_training_phase_alone():
    row = metrics_row(3, EpochLog(loss=1.5, acc=0.5, images=400, seconds=2.0), 1.25, 0.75, 0.01, seconds=5.0)
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
    return setup_run(args, "torch", load_prepared)[0]


def test_threads_are_chosen_recorded_and_restored_on_resume(synthetic_dir, tmp_path, capsys):
    new = _settings(synthetic_dir, tmp_path, "--workers", "3")
    assert choose_threads(new, default=8) == (3, {"workers": 3, "intra_op": 3})
    default = _settings(synthetic_dir, tmp_path)
    assert choose_threads(default, default=8) == (None, {"workers": None, "intra_op": 8})
    assert choose_threads(default, default=None) == (None, {"workers": None, "intra_op": None})  # XLA's pool
    with pytest.raises(SystemExit, match="^error: --workers must be >= 1; got 0$"):
        choose_threads(_settings(synthetic_dir, tmp_path, "--workers", "0"), default=8)
    # Resuming: the saved count comes back, with a note; a different explicit count is refused.
    explicit = {"workers": 3, "intra_op": 3}
    resumed = dataclasses.replace(default, saved={"threads": explicit})
    assert choose_threads(resumed, default=8) == (3, explicit)
    assert capsys.readouterr().err == "note: resuming with 3 intra-op thread(s) (--workers 3), as the run started\n"
    with pytest.raises(SystemExit, match=r"^error: --workers 8: .* started with 3 intra-op thread\(s\) .*--workers 3$"):
        choose_threads(dataclasses.replace(resumed, workers=8), default=8)
    assert choose_threads(dataclasses.replace(resumed, workers=3), default=8)[0] == 3
    started_default = dataclasses.replace(default, saved={"threads": {"workers": None, "intra_op": 8}})
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
    settings, _ = setup_run(args, "torch", load_prepared)
    assert (settings.dataset, settings.spec.num_classes, settings.plan.recipe) == ("cifar100_coarse", 20, "cifar-paper")
    args = p.parse_args(["--dataset", "cifar10", "--labels", "coarse", "--data-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="^error: unknown labels 'coarse' for dataset cifar10; valid choices: fine$"):
        setup_run(args, "torch", load_prepared)


def test_launched_processes_run_the_command_without_nproc():
    argv = ["--model", "resnet8", "--nproc", "2", "--epochs", "1", "--nproc=3", "--out", "x"]
    assert without_nproc(argv) == ["--model", "resnet8", "--epochs", "1", "--out", "x"]
    assert without_nproc(["--out", "nproc"]) == ["--out", "nproc"]  # a value that merely reads like it stays
