"""The ablation orchestrator: cell list, skip-finished, resume-interrupted, restart, settings checks.

These use the stand-in trainer of ``ablation_fixtures`` (fast, deterministic); the end-to-end test
with the real training CLIs of both frameworks is ``test_ablation_e2e.py``.
"""

import json
import sys

import pytest

import shared.ablation.run as ablation
from shared.runs import read_metrics
from shared.spec import get_spec
from tests.conftest import run_module
from tests.shared.ablation_fixtures import write_run

FIXTURE_TRAINER = "tests.shared.ablation_fixtures"


@pytest.fixture
def fake_trainer(monkeypatch):
    fixture_command = lambda framework, module, *args: [sys.executable, "-m", FIXTURE_TRAINER, *map(str, args)]
    monkeypatch.setattr(ablation.process, "module_command", fixture_command)


def _calls(runs):
    path = runs / "fixture-calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_default_cells_are_the_issue_sets(tmp_path):
    s, _ = ablation.parse_settings(["--ablation", "cats_vs_dogs"])
    assert s["models"] == ["plain34", "resnet34", "plain50", "resnet50"] and s["shortcut"] == "B"
    assert s["frameworks"] == ["torch", "keras"] and s["dataset"] == "cats_vs_dogs"
    s, _ = ablation.parse_settings(["--ablation", "cifar10", "--dataset", "synthetic"])
    assert s["models"] == ["plain20", "resnet20", "plain56", "resnet56"] and s["shortcut"] == "A"
    assert s["stem"] == "ablation-cifar10-synthetic"
    cells = ablation.plan_cells(s["models"], s["frameworks"], tmp_path)
    assert [c.name for c in cells][:3] == ["plain20-torch", "plain20-keras", "resnet20-torch"]
    assert len(cells) == 8 and cells[0].path == tmp_path / "plain20-torch"
    s, _ = ablation.parse_settings(["--ablation", "cifar100", "--dataset", "cifar100_coarse"])
    assert (s["dataset"], s["shortcut"], s["stem"]) == ("cifar100_coarse", "A", "ablation-cifar100-cifar100_coarse")
    assert s["models"] == ["plain20", "resnet20", "plain56", "resnet56"]


def test_train_command_carries_the_shared_settings(tmp_path):
    s, _ = ablation.parse_settings(["--epochs", "3", "--seed", "7", "--batch-size", "32", "--runs-dir", str(tmp_path),
                                    "--train-args", "--amp on"])
    cell = ablation.plan_cells(["resnet56"], ["keras"], tmp_path)[0]
    cmd = ablation.train_command(cell, s, resume=True)
    assert cmd[1:3] == ["-m", "keras_impl.train"]
    joined = " ".join(cmd)
    for part in ("--model resnet56", "--dataset cifar10", "--shortcut A", "--epochs 3", "--seed 7",
                 "--batch-size 32", f"--out {cell.path.resolve()}", f"--resume {cell.path.resolve()}", "--amp on"):
        assert part in joined


@pytest.mark.parametrize("argv,message", [
    (["--ablation", "imagenet"], "unknown ablation 'imagenet'; valid choices: cifar10, cifar100, cats_vs_dogs"),
    (["--frameworks", "torch,jax"], "unknown framework(s) ['jax']; valid choices: torch, keras, keras-tensorflow, "
                                    "keras-jax, keras-torch"),
    (["--models", "resnet21"], "unknown model 'resnet21'"),
    (["--epochs", "0"], "--epochs must be >= 1; got 0"),
    (["--dataset", "cifar20"], "unknown dataset 'cifar20'; valid choices: cifar10, cifar100, cifar100_coarse, "),
])
def test_bad_arguments_are_clear_errors(argv, message):
    proc = run_module("shared.ablation", *argv, "--dry-run", check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_skip_finished_resume_interrupted_restart_empty(tmp_path, fake_trainer, monkeypatch, capsys):
    runs, out = tmp_path / "runs", tmp_path / "results"
    argv = ["--dataset", "synthetic", "--models", "plain20,resnet20", "--epochs", "3", "--runs-dir", str(runs),
            "--out", str(out)]
    monkeypatch.setenv("ABLATION_FIXTURE_DIE_AFTER", "2")  # the first cell dies after its 2nd epoch
    assert ablation.main(argv) == 1
    text = capsys.readouterr().out
    assert "[1/4] plain20-torch: FAILED (exit 3)" in text and "[2/4]" not in text
    assert not out.exists()  # no cell finished: no empty table
    assert len(read_metrics(runs / "plain20-torch")) == 2 and not (runs / "plain20-torch" / "results.json").exists()
    (runs / "resnet20-keras").mkdir()  # a cell folder without a checkpoint: it restarts from scratch
    (runs / "resnet20-keras" / "stray").write_text("x")

    monkeypatch.delenv("ABLATION_FIXTURE_DIE_AFTER")
    assert ablation.main(argv) == 0
    text = capsys.readouterr().out
    assert "[1/4] plain20-torch: resuming from its checkpoint" in text
    assert "[4/4] resnet20-keras: training" in text
    calls = _calls(runs)
    assert [c["cell"] for c in calls] == ["plain20-torch", "plain20-torch", "plain20-keras", "resnet20-torch",
                                          "resnet20-keras"]
    assert calls[1]["resume"] == str((runs / "plain20-torch").resolve()) and calls[2]["resume"] is None
    assert [r["epoch"] for r in read_metrics(runs / "plain20-torch")] == [1, 2, 3]
    assert not (runs / "resnet20-keras" / "stray").exists()
    report = json.loads((out / "ablation-cifar10-synthetic.json").read_text())
    assert report["complete"] and [(r["model"], r["framework"]) for r in report["cells"]] == [
        ("plain20", "torch"), ("plain20", "keras"), ("resnet20", "torch"), ("resnet20", "keras")]

    mtimes = {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file() and p.name != ablation.STATE_FILE}
    assert ablation.main(argv) == 0
    text = capsys.readouterr().out
    assert text.count("skipped (finished earlier") == 4 and len(_calls(runs)) == 5
    assert mtimes == {p: p.stat().st_mtime_ns for p in mtimes}


def test_other_settings_do_not_reuse_cells(tmp_path, fake_trainer, capsys):
    argv = ["--dataset", "synthetic", "--models", "resnet20", "--frameworks", "torch", "--runs-dir",
            str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    assert ablation.main([*argv, "--epochs", "1"]) == 0
    with pytest.raises(SystemExit, match=r"other settings \(epochs: 1 -> 2\)"):
        ablation.main([*argv, "--epochs", "2"])
    assert ablation.main([*argv, "--report-only"]) == 0  # a report takes the folder's own settings
    report = json.loads((tmp_path / "out" / "ablation-cifar10-synthetic.json").read_text())
    assert report["epochs"] == 1 and report["complete"]


def test_dry_run_trains_nothing(tmp_path, capsys):
    assert ablation.main(["--runs-dir", str(tmp_path / "runs"), "--frameworks", "torch", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert text.count(": new: ") == 4 and "pytorch_impl.train --model plain56" in text
    assert not (tmp_path / "runs").exists()


def test_several_keras_backends_in_one_report(tmp_path, fake_trainer, capsys):
    runs, out = tmp_path / "runs", tmp_path / "out"
    argv = ["--dataset", "synthetic", "--models", "resnet20", "--frameworks", "torch,keras-jax,keras-torch",
            "--runs-dir", str(runs), "--out", str(out), "--epochs", "1"]
    assert ablation.main([*argv, "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "resnet20-keras-jax: new: KERAS_BACKEND=jax " in text
    assert "resnet20-keras-torch: new: KERAS_BACKEND=torch " in text
    assert "resnet20-torch: new: /" in text  # torch gets no backend
    cell = ablation.plan_cells(["resnet20"], ["keras-jax"], runs)[0]
    assert (cell.framework, cell.backend, cell.env()["KERAS_BACKEND"]) == ("keras", "jax", "jax")
    assert ablation.main(argv) == 0
    calls = _calls(runs)
    assert [(c["cell"], c["keras_backend"]) for c in calls][1:] == [("resnet20-keras-jax", "jax"),
                                                                     ("resnet20-keras-torch", "torch")]
    report = json.loads((out / "ablation-cifar10-synthetic.json").read_text())
    assert [r["framework"] for r in report["cells"]] == ["torch", "keras-jax", "keras-torch"]
    assert "| resnet20 | residual | keras-jax |" in (out / "ablation-cifar10-synthetic.md").read_text()
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == [
        "resnet20-keras-jax", "resnet20-keras-torch", "resnet20-torch"]


def test_cell_from_another_run_length_is_refused(tmp_path, fake_trainer):
    runs = tmp_path / "runs"
    run = write_run(runs / "resnet20-torch", get_spec("resnet20"), "torch", [0.3, 0.4, 0.5])
    config = json.loads((run / "config.json").read_text())
    config["recipe"], config["seed"] = {"epochs": 3, "batch_size": 128, "total_iters": 45}, 0
    (run / "config.json").write_text(json.dumps(config))  # no state file: the run's own config decides
    argv = ["--dataset", "synthetic", "--models", "resnet20", "--frameworks", "torch", "--runs-dir", str(runs),
            "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match=r"was trained with epochs 3 \(asked: 2\)"):
        ablation.main([*argv, "--epochs", "2"])
    assert ablation.main([*argv, "--epochs", "3"]) == 0 and not _calls(runs)
