"""shared.runs: the run-folder layout, written and read back without any framework."""

import json
from datetime import UTC, datetime

import pytest

from shared import runs


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
    assert runs.find_runs(tmp_path / "runs") == [run_dir]


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
