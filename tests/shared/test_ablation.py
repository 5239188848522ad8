"""The ablation orchestrator: cell list, skip-finished, resume-interrupted, restart, settings checks.

These use the stand-in trainer of ``ablation_fixtures`` (fast, deterministic); the end-to-end test
with the real training CLIs of both frameworks is ``test_ablation_e2e.py``.
"""

import json
import subprocess
import sys

import pytest

import shared.ablation.run as ablation
from shared.errors import UserError
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
    """The stand-in trainer's calls, in order (its log sits in the runs folder)."""
    path = runs / "fixture-calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_default_cells_are_the_issue_sets(tmp_path):
    s, _ = ablation.parse_settings(["--ablation", "cats_vs_dogs"])
    assert s["models"] == ["plain34", "resnet34", "plain50", "resnet50"] and s["shortcut"] == "B"
    assert s["frameworks"] == ["torch", "keras"] and s["dataset"] == "cats_vs_dogs"
    s, _ = ablation.parse_settings(["--ablation", "cifar10", "--dataset", "synthetic"])
    assert s["models"] == ["plain20", "resnet20", "plain56", "resnet56"] and s["shortcut"] == "A"
    assert s["stem"] == "ablation-cifar10-synthetic"
    assert s["seeds"] == [0] and not s["seeds_given"]
    cells = ablation.plan_cells(s["models"], s["frameworks"], s["seeds"], tmp_path)
    assert [c.name for c in cells][:3] == ["plain20-torch", "plain20-keras", "resnet20-torch"]
    assert len(cells) == 8 and cells[0].path == tmp_path / "seed-0" / "plain20-torch"
    s, _ = ablation.parse_settings(["--ablation", "cifar100", "--dataset", "cifar100_coarse"])
    assert (s["dataset"], s["shortcut"], s["stem"]) == ("cifar100_coarse", "A", "ablation-cifar100-cifar100_coarse")
    assert s["models"] == ["plain20", "resnet20", "plain56", "resnet56"]


def test_train_command_carries_the_shared_settings(tmp_path):
    s, _ = ablation.parse_settings(["--epochs", "3", "--seed", "7", "--batch-size", "32", "--runs-dir", str(tmp_path),
                                    "--train-args", "--amp on"])
    cell = ablation.plan_cells(["resnet56"], ["keras"], [7], tmp_path)[0]
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
    (["--epochs", "0"], "epochs must be >= 1; got 0"),
    (["--dataset", "cifar20"], "unknown dataset 'cifar20'; valid choices: cifar10, cifar100, cifar100_coarse, "),
    (["--seeds", "0,x"], "--seeds takes seeds separated by commas (0,1,2) or a count (3); got '0,x'"),
    (["--seeds", "0"], "--seeds N asks for N seeds (0..N-1), so N must be >= 1; got '0'"),
    (["--seeds", "1,1"], "--seeds names a seed twice; got '1,1'"),
    (["--seeds", "3", "--seed", "1"], "give --seed or --seeds, not both"),
])
def test_bad_arguments_are_clear_errors(argv, message):
    proc = run_module("shared.ablation", *argv, "--dry-run", check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")


@pytest.mark.parametrize("text,seeds", [("3", [0, 1, 2]), ("0,1,2", [0, 1, 2]), ("5,2", [5, 2]), ("4,", [4]),
                                        (" 1 , 3 ", [1, 3])])
def test_seeds_name_them_or_count_them(text, seeds):
    assert ablation.parse_seeds(text) == seeds
    s, _ = ablation.parse_settings(["--seeds", text])
    assert s["seeds"] == seeds and s["seeds_given"]
    assert ablation.parse_settings(["--seed", "4"])[0]["seeds"] == [4]


def test_skip_finished_resume_interrupted_restart_empty(tmp_path, fake_trainer, monkeypatch, capsys):
    runs, out = tmp_path / "runs", tmp_path / "results"
    argv = ["--dataset", "synthetic", "--models", "plain20,resnet20", "--epochs", "3", "--runs-dir", str(runs),
            "--out", str(out)]
    monkeypatch.setenv("ABLATION_FIXTURE_DIE_AFTER", "2")  # the first cell dies after its 2nd epoch
    assert ablation.main(argv) == 1
    text = capsys.readouterr().out
    assert "[1/4] seed-0/plain20-torch: FAILED (exit 3)" in text and "[2/4]" not in text
    assert list(out.iterdir()) == []  # no run finished: no empty table
    seed0 = runs / "seed-0"
    assert len(read_metrics(seed0 / "plain20-torch")) == 2 and not (seed0 / "plain20-torch" / "results.json").exists()
    (seed0 / "resnet20-keras").mkdir()  # a cell folder without a checkpoint: it restarts from scratch
    (seed0 / "resnet20-keras" / "stray").write_text("x")

    monkeypatch.delenv("ABLATION_FIXTURE_DIE_AFTER")
    assert ablation.main(argv) == 0
    text = capsys.readouterr().out
    assert "[1/4] seed-0/plain20-torch: resuming from its checkpoint" in text
    assert "[4/4] seed-0/resnet20-keras: training" in text
    calls = _calls(runs)
    assert [c["cell"] for c in calls] == ["plain20-torch", "plain20-torch", "plain20-keras", "resnet20-torch",
                                          "resnet20-keras"]
    assert calls[1]["resume"] == str((seed0 / "plain20-torch").resolve()) and calls[2]["resume"] is None
    assert [r["epoch"] for r in read_metrics(seed0 / "plain20-torch")] == [1, 2, 3]
    assert not (seed0 / "resnet20-keras" / "stray").exists()
    report = json.loads((out / "ablation-cifar10-synthetic.json").read_text())
    assert report["complete"] and [(r["model"], r["framework"]) for r in report["cells"]] == [
        ("plain20", "torch"), ("plain20", "keras"), ("resnet20", "torch"), ("resnet20", "keras")]

    mtimes = {p: p.stat().st_mtime_ns for p in seed0.rglob("*") if p.is_file()}
    assert ablation.main(argv) == 0
    text = capsys.readouterr().out
    assert text.count("skipped (finished earlier") == 4 and len(_calls(runs)) == 5
    assert mtimes == {p: p.stat().st_mtime_ns for p in mtimes}


def test_other_settings_do_not_reuse_cells(tmp_path, fake_trainer, capsys):
    argv = ["--dataset", "synthetic", "--models", "resnet20", "--frameworks", "torch", "--runs-dir",
            str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    assert ablation.main([*argv, "--epochs", "1"]) == 0
    with pytest.raises(UserError, match=r"other settings \(epochs: 1 -> 2\)"):
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
    assert "seed-0/resnet20-keras-jax: new: KERAS_BACKEND=jax " in text
    assert "seed-0/resnet20-keras-torch: new: KERAS_BACKEND=torch " in text
    assert "seed-0/resnet20-torch: new: /" in text  # torch gets no backend
    cell = ablation.plan_cells(["resnet20"], ["keras-jax"], [0], runs)[0]
    assert (cell.framework, cell.backend, cell.env()["KERAS_BACKEND"]) == ("keras", "jax", "jax")
    assert ablation.main(argv) == 0
    calls = _calls(runs)
    assert [(c["cell"], c["keras_backend"]) for c in calls][1:] == [("resnet20-keras-jax", "jax"),
                                                                     ("resnet20-keras-torch", "torch")]
    report = json.loads((out / "ablation-cifar10-synthetic.json").read_text())
    assert [r["framework"] for r in report["cells"]] == ["torch", "keras-jax", "keras-torch"]
    assert "| resnet20 | residual | keras-jax |" in (out / "ablation-cifar10-synthetic.md").read_text()
    assert sorted(p.name for p in (runs / "seed-0").iterdir() if p.is_dir()) == [
        "resnet20-keras-jax", "resnet20-keras-torch", "resnet20-torch"]


def test_cell_from_another_run_length_is_refused(tmp_path, fake_trainer):
    runs = tmp_path / "runs"
    run = write_run(runs / "seed-0" / "resnet20-torch", get_spec("resnet20"), "torch", [0.3, 0.4, 0.5])
    config = json.loads((run / "config.json").read_text())
    config["recipe"], config["seed"] = {"epochs": 3, "batch_size": 128, "total_iters": 45}, 0
    (run / "config.json").write_text(json.dumps(config))  # no state file: the run's own config decides
    argv = ["--dataset", "synthetic", "--models", "resnet20", "--frameworks", "torch", "--runs-dir", str(runs),
            "--out", str(tmp_path / "out")]
    with pytest.raises(UserError, match=r"was trained with epochs 3 \(asked: 2\)"):
        ablation.main([*argv, "--epochs", "2"])
    assert ablation.main([*argv, "--epochs", "3"]) == 0 and not _calls(runs)


def _argv(tmp_path, *extra, runs="runs", models="plain20,resnet20", frameworks="torch"):
    return ["--dataset", "synthetic", "--models", models, "--frameworks", frameworks, "--epochs", "2",
            "--runs-dir", str(tmp_path / runs), "--out", str(tmp_path / "out" / runs), *extra]


def test_seeds_run_seed_by_seed_and_a_new_seed_trains_only_itself(tmp_path, fake_trainer, capsys):
    assert ablation.main(_argv(tmp_path, "--seeds", "2")) == 0
    text = capsys.readouterr().out
    assert "2 cells (plain20, resnet20 x torch) x 2 seeds (0, 1) = 4 runs" in text
    assert [(c["key"], c["seed"]) for c in _calls(tmp_path / "runs")] == [
        ("seed-0/plain20-torch", 0), ("seed-0/resnet20-torch", 0), ("seed-1/plain20-torch", 1),
        ("seed-1/resnet20-torch", 1)]
    assert ablation.main(_argv(tmp_path, "--seeds", "0,1,2")) == 0
    text = capsys.readouterr().out
    assert text.count("skipped (finished earlier") == 4 and "[5/6] seed-2/plain20-torch: training" in text
    assert [c["key"] for c in _calls(tmp_path / "runs")][4:] == ["seed-2/plain20-torch", "seed-2/resnet20-torch"]
    report = json.loads((tmp_path / "out" / "runs" / "ablation-cifar10-synthetic.json").read_text())
    assert report["seeds"] == [0, 1, 2] and [c["n"] for c in report["cells"]] == [3, 3]
    assert [r["seed"] for r in report["runs"]] == [0, 0, 1, 1, 2, 2]
    # a report of a subset: only the seeds asked for; --report-only alone takes every seed in the folder
    assert ablation.main(_argv(tmp_path, "--seed", "1", "--report-only")) == 0
    report = json.loads((tmp_path / "out" / "runs" / "ablation-cifar10-synthetic.json").read_text())
    assert report["seeds"] == [1] and [c["n"] for c in report["cells"]] == [1, 1]
    assert ablation.main(_argv(tmp_path, "--report-only")) == 0
    report = json.loads((tmp_path / "out" / "runs" / "ablation-cifar10-synthetic.json").read_text())
    assert report["seeds"] == [0, 1, 2] and len(_calls(tmp_path / "runs")) == 6


def _table_without_timing(report: dict) -> dict:
    """The report's numbers without what depends on the clock, the paths or the moment it was written."""
    drop = {"train_time_s", "images_per_s", "run_dir", "generated", "hardware", "git_commit", "runs_dir"}

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in drop}
        return [strip(v) for v in x] if isinstance(x, list) else x

    return strip(report)


def test_interrupted_in_the_middle_of_a_seed_ends_with_the_same_table(tmp_path, fake_trainer, monkeypatch, capsys):
    argv = ["--seeds", "2", "--epochs", "3"]
    assert ablation.main(_argv(tmp_path, *argv, runs="whole")) == 0
    monkeypatch.setenv("ABLATION_FIXTURE_DIE_AFTER", "1")
    monkeypatch.setenv("ABLATION_FIXTURE_DIE_IN", "seed-1/plain20-torch")  # seed 0 done, seed 1 interrupted
    assert ablation.main(_argv(tmp_path, *argv, runs="cut")) == 1
    assert "[3/4] seed-1/plain20-torch: FAILED" in capsys.readouterr().out
    partial = json.loads((tmp_path / "out" / "cut" / "ablation-cifar10-synthetic.json").read_text())
    assert not partial["complete"] and [c["n"] for c in partial["cells"]] == [1, 1]
    monkeypatch.delenv("ABLATION_FIXTURE_DIE_AFTER")
    assert ablation.main(_argv(tmp_path, *argv, runs="cut")) == 0
    assert "[3/4] seed-1/plain20-torch: resuming from its checkpoint" in capsys.readouterr().out
    whole, cut = (json.loads((tmp_path / "out" / r / "ablation-cifar10-synthetic.json").read_text())
                  for r in ("whole", "cut"))
    assert _table_without_timing(cut) == _table_without_timing(whole)
    assert cut["complete"] and [c["n"] for c in cut["cells"]] == [2, 2]


def test_single_seed_layout_of_earlier_versions_is_one_line_with_the_move(tmp_path, fake_trainer, capsys):
    runs = tmp_path / "runs"
    for model in ("plain20", "resnet20"):
        write_run(runs / f"{model}-torch", get_spec(model), "torch", [0.3, 0.4], seed=0)
    with pytest.raises(UserError) as e:
        ablation.main(_argv(tmp_path))
    message = str(e.value)
    assert "\n" not in message and "single-seed layout" in message and "plain20-torch, resnet20-torch" in message
    move = message.split("`")[1]
    subprocess.run(move, shell=True, check=True)
    assert ablation.main(_argv(tmp_path)) == 0
    assert capsys.readouterr().out.count("skipped (finished earlier") == 2 and not _calls(runs)


def test_cats_vs_dogs_takes_seeds_with_the_same_columns(tmp_path, fake_trainer):
    argv = ["--ablation", "cats_vs_dogs", "--frameworks", "torch", "--seeds", "2", "--epochs", "2",
            "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    assert ablation.main(argv) == 0
    report = json.loads((tmp_path / "out" / "ablation-cats_vs_dogs.json").read_text())
    assert report["complete"] and report["seeds"] == [0, 1] and len(report["runs"]) == 8
    assert [(c["model"], c["framework"], c["n"]) for c in report["cells"]] == [
        (m, "torch", 2) for m in ("plain34", "resnet34", "plain50", "resnet50")]
    kinds = [(c["a"], c["b"], c["paper"]) for c in report["comparisons"] if c["metric"] == "best_val_acc"]
    assert kinds == [("plain34", "plain50", "worse"), ("resnet34", "resnet50", "better"),
                     ("plain34", "resnet34", "better"), ("plain50", "resnet50", "better")]
    assert all(c["test"] == "paired" and c["paired"] == 2 for c in report["comparisons"])
    md = (tmp_path / "out" / "ablation-cats_vs_dogs.md").read_text()
    assert "## Published numbers (ImageNet top-1 error, 10-crop, validation (%))" in md
    assert "not comparable" in md and "| plain34 |" in md
    # the same columns as the CIFAR report
    assert ablation.main(_argv(tmp_path, "--seeds", "2", runs="cifar")) == 0
    cifar = (tmp_path / "out" / "cifar" / "ablation-cifar10-synthetic.md").read_text()

    def headers(text):
        return [line for line in text.splitlines() if line.startswith("| ") and "---" not in line
                and line.split("|")[1].strip() in ("model", "framework", "seed")]

    assert headers(md)[:3] == headers(cifar)[:3] and len(headers(md)) >= 3


def test_make_ablation_passes_seeds():
    from tests.conftest import ROOT

    def line(*variables):
        out = subprocess.run(["make", "-n", "--no-print-directory", "ablation", "SYSTEM_PYTHON=1",
                              f"PYTHON3={sys.executable}", *variables], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout
        return " ".join(out.replace("\\\n", " ").split()).split("-m shared.ablation", 1)[1].split()

    args = line("SEEDS=0,1,2", "DATASET=digits", "EPOCHS=2")
    assert args[args.index("--seeds") + 1] == "0,1,2" and args[args.index("--dataset") + 1] == "digits"
    assert "--seeds" not in line() and "--seed" not in line()
