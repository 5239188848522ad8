"""shared.runs and shared.run_folder: the run-folder layout and its life cycle, written and read back
without any framework."""

import dataclasses
import json
import sys
import types
from datetime import UTC, datetime

import numpy as np
import pytest

from datasets import load_prepared
from shared import runs
from shared.io import load_weights
from shared.run_folder import EpochLog, Progress, RunFolder
from shared.run_settings import resolve_run
from shared.train_flags import train_arg_parser


def _config(framework="torch"):
    return {k: None for k in runs.CONFIG_KEYS} | {"framework": framework, "model": "resnet20"}


def test_default_run_dir_layout_and_uniqueness(tmp_path):
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    first = runs.default_run_dir("cifar10", "resnet20", "keras", root=tmp_path, now=now)
    assert first == tmp_path / "cifar10" / "resnet20" / "keras-20260102-030405"
    first.mkdir(parents=True)
    assert runs.default_run_dir("cifar10", "resnet20", "keras", root=tmp_path, now=now).name.endswith("-2")
    with pytest.raises(ValueError, match="valid choices: torch, keras"):
        runs.default_run_dir("cifar10", "resnet20", "jax", root=tmp_path)


def test_metrics_round_trip_exactly(tmp_path):
    rows = [{"epoch": e, "train_loss": 1 / 3 + e, "train_acc": 0.1 * e, "val_loss": 2 / 7, "val_acc": 0.5,
             "lr": 0.1, "seconds": 1.5, "images_per_s": 1000.25} for e in (1, 2)]
    runs.write_metrics(tmp_path, rows)
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0] == ",".join(runs.METRICS_COLUMNS)
    assert runs.read_metrics(tmp_path) == rows  # floats survive the CSV bit for bit


def test_read_run(tmp_path):
    run_dir = tmp_path / "runs" / "a"
    runs.write_config(run_dir, _config("keras"))
    run = runs.read_run(run_dir)
    assert (run["framework"], run["best"], run["results"], run["finished"]) == ("keras", None, None, False)
    (run_dir / "best.safetensors").write_bytes(b"x")
    results = {k: 0 for k in runs.RESULTS_KEYS} | {"finished": True, "test_acc": 0.5}
    runs.write_results(run_dir, results)
    run = runs.read_run(run_dir)
    assert run["best"] == str(run_dir / "best.safetensors") and run["last"] is None
    assert run["results"]["test_acc"] == 0.5 and run["finished"]


def test_read_run_errors_name_the_folder(tmp_path):
    with pytest.raises(runs.NotARunError, match="has no config.json"):
        runs.read_run(tmp_path)
    with pytest.raises(runs.NotARunError, match="does not exist"):
        runs.read_run(tmp_path / "nope")
    (tmp_path / "config.json").write_text(json.dumps({"framework": "jax"}))
    with pytest.raises(runs.NotARunError, match="no framework"):
        runs.read_run(tmp_path)
    with pytest.raises(ValueError, match="run config lacks"):
        runs.write_config(tmp_path, {"model": "resnet20"})


def _tb_scalars(run_dir) -> dict[str, list[float]]:
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_run_folder_life_cycle(tmp_path, capsys):
    """start -> record_epoch x2 -> finish, then start again at epoch 1 as a resume does: every file a reader needs."""
    load_prepared("synthetic", tmp_path / "data")
    args = train_arg_parser("t", "torch").parse_args(["--dataset", "synthetic", "--data-dir", str(tmp_path / "data"),
                                                      "--model", "resnet8", "--epochs", "2", "--out",
                                                      str(tmp_path / "run")])
    settings, prepared = resolve_run(args, "torch", load_prepared)
    device = {"type": "cpu", "name": "cpu"}
    rows = [{"epoch": e, "train_loss": 2.0 / e, "train_acc": 0.3 * e, "val_loss": 1.0, "val_acc": acc, "lr": 0.1,
             "seconds": 1.5, "images_per_s": 1000.0} for e, acc in ((1, 0.6), (2, 0.4))]
    threads = {"requested": None, "intra_op": 2}
    with RunFolder.start(settings, Progress(), owner=True, manifest=prepared.manifest, device=device,
                         threads=threads) as folder:
        config = runs.read_run(folder.path)["config"]
        assert set(runs.CONFIG_KEYS) <= set(config) and config["device"] == device  # complete when first written
        assert config["threads"] == threads and config["seed"] == 0
        for row in rows:
            train = EpochLog(row["train_loss"], row["train_acc"], images=1500, seconds=1.5, lr=row["lr"])
            folder.record_epoch(train, row["val_loss"], row["val_acc"], seconds=row["seconds"],
                                weights={"fc.bias": np.full(10, row["epoch"], np.float32)})
            assert folder.checkpoint_due()
        assert folder.checkpoint_path == folder.path / "checkpoint.pt"
        assert folder.best_weights()["fc.bias"][0] == 1  # epoch 1 had the best val accuracy
        folder.finish(test_loss=0.5, test_acc=0.625)
    run = runs.read_run(folder.path)
    assert run["metrics"] == rows and run["finished"]
    assert {k: run["results"][k] for k in ("best_epoch", "best_val_acc", "epochs", "wall_time_s", "test_acc")} == {
        "best_epoch": 1, "best_val_acc": 0.6, "epochs": 2, "wall_time_s": 3.0, "test_acc": 0.625}
    assert load_weights(run["last"])[1]["epoch"] == "2" and load_weights(run["best"])[1]["val_acc"] == "0.6"
    assert _tb_scalars(folder.path)["accuracy/val"] == pytest.approx([0.6, 0.4])
    out = capsys.readouterr().out
    assert "epoch   2/2  train loss 1.0000" in out and "test acc 0.6250" in out
    # A resume from the epoch-1 checkpoint drops the later row and continues from there.
    resumed = dataclasses.replace(settings, saved=config)
    with RunFolder.start(resumed, Progress.from_rows(rows[:1], settings.plan), owner=True, manifest={},
                         device=device, threads=threads) as folder:
        assert folder.progress.iteration == settings.plan.iters_per_epoch and folder.config == config
    assert runs.read_metrics(folder.path) == rows[:1]
