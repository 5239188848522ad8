"""Framework-neutral training pieces: flags, device choice, NaN guard, progress bookkeeping."""

import argparse

import pytest

from shared.training import (
    EpochLog,
    NonFiniteLoss,
    Progress,
    check_finite,
    nonfinite_message,
    parse_bool,
    resolve_device_name,
    train_arg_parser,
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


def test_progress_tracks_best_and_round_trips():
    p = Progress()
    log = EpochLog()
    log.add(2.0, 3, 4)
    log.add(1.0, 1, 4)
    assert (log.loss, log.acc) == (1.5, 0.5)
    assert p.finish_epoch({"epoch": 1, "val_acc": 0.5})
    assert not p.finish_epoch({"epoch": 2, "val_acc": 0.4})
    assert (p.epoch, p.best_epoch, p.best_val_acc) == (2, 1, 0.5)
    assert Progress.from_dict(p.to_dict()) == p


def test_labels_pick_the_cifar100_dataset(tmp_path):
    """``--labels coarse`` trains cifar100_coarse; a label set the dataset lacks is a one-line error."""
    from datasets.cifar import prepare
    from datasets.fixtures import write_cifar100_python
    from shared.training import setup_run

    write_cifar100_python(tmp_path, 200, 100)
    prepare(tmp_path, "cifar100_coarse", val_size=40, download=False)
    p = train_arg_parser("t", "torch")
    args = p.parse_args(["--dataset", "cifar100", "--labels", "coarse", "--data-dir", str(tmp_path), "--model",
                         "resnet8", "--epochs", "1", "--out", str(tmp_path / "run")])
    run = setup_run(args, "torch")
    assert (run.config["dataset"], run.spec.num_classes, run.plan.recipe) == ("cifar100_coarse", 20, "cifar-paper")
    args = p.parse_args(["--dataset", "cifar10", "--labels", "coarse", "--data-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="^error: unknown labels 'coarse' for dataset cifar10; valid choices: fine$"):
        setup_run(args, "torch")
