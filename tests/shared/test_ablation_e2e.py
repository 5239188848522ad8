"""A tiny ablation with the real training CLIs of both frameworks.

Small models (plain8/resnet8), one short epoch (``--iters 2 --batch-size 32``) on synthetic data: a pipeline
check, not a result. Every number in the table is checked against the run folder it came from, read here
independently (csv/json), and the parameter count against the paper's formula for the model. A killed
run resumes; and a two-seed ablation on the digits, killed in the middle of its second seed and run again,
ends with the same table as one that was never interrupted (slow).
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from matplotlib.image import imread

from shared.process import FRAMEWORKS
from tests.conftest import ROOT, run_module

STEM = "ablation-cifar10-synthetic"
RESNET8_PARAMS = 75_290  # CIFAR ResNet with n = 1 block per stage; checked against the formula below


def _metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _ablation(tmp: Path, *extra: str, **kw) -> subprocess.CompletedProcess:
    return run_module("shared.ablation", "--ablation", "cifar10", "--dataset", "synthetic", "--data-dir",
                      tmp / "data", "--runs-dir", tmp / "runs", "--out", tmp / "results", "--train-args=--no-progress",
                      *extra, **kw)


def test_resnet8_param_count_matches_the_formula():
    # A CIFAR ResNet with n blocks per stage, widths 16/32/64, option A: stem 3*16*9 + 2*16 (BN),
    # per stage n blocks of 2 (3x3 conv + BN); the first block of stages 2 and 3 widens; fc 64*10 + 10.
    def params(n: int) -> int:
        total = 3 * 16 * 9 + 2 * 16 + 64 * 10 + 10
        for c_in, c in ((16, 16), (16, 32), (32, 64)):
            total += (c_in * c * 9 + 2 * c) + (c * c * 9 + 2 * c)  # first block
            total += (n - 1) * 2 * (c * c * 9 + 2 * c)
        return total

    assert params(3) == 269_722  # the oracle of resnet20 (tests/oracles.py) validates the formula
    assert params(1) == RESNET8_PARAMS


def test_tiny_ablation_table_plots_and_rerun(tmp_path):
    args = ("--models", "plain8,resnet8", "--frameworks", ",".join(FRAMEWORKS), "--iters", "2", "--batch-size", "32")
    proc = _ablation(tmp_path, *args)
    cells = [(m, fw) for m in ("plain8", "resnet8") for fw in FRAMEWORKS]
    for i, (m, fw) in enumerate(cells, start=1):
        assert f"[{i}/{len(cells)}] seed-0/{m}-{fw}: training" in proc.stdout
        assert f"[{i}/{len(cells)}] seed-0/{m}-{fw}: finished in" in proc.stdout
    out = tmp_path / "results"
    assert {p.name for p in out.iterdir()} == {f"{STEM}.md", f"{STEM}.json", f"{STEM}-error.png", f"{STEM}-loss.png"}
    report = json.loads((out / f"{STEM}.json").read_text())
    assert report["complete"] and report["synthetic"] is True and report["epochs"] == 1 and report["seeds"] == [0]
    assert [(r["model"], r["framework"]) for r in report["cells"]] == cells
    assert [(r["model"], r["framework"], r["seed"]) for r in report["runs"]] == [(m, fw, 0) for m, fw in cells]
    md = (out / f"{STEM}.md").read_text()
    assert "synthetic data" in md and "Epochs per cell: **1**" in md and "Hardware: CPU:" in md
    for row, cell in zip(report["runs"], report["cells"]):
        run = tmp_path / "runs" / "seed-0" / f"{row['model']}-{row['framework']}"
        metrics = _metrics(run)
        results = json.loads((run / "results.json").read_text())
        best = max(metrics, key=lambda r: float(r["val_acc"]))
        assert row["best_val_acc"] == float(best["val_acc"]) == results["best_val_acc"]
        assert row["best_epoch"] == int(best["epoch"]) == results["best_epoch"]
        assert row["test_acc"] == results["test_acc"] and row["train_time_s"] == results["wall_time_s"]
        assert row["params"] == RESNET8_PARAMS and row["shortcut"] == "A"
        assert row["layout"] == ("plain" if row["model"].startswith("plain") else "residual")
        assert cell["best_val_acc"]["values"] == [row["best_val_acc"]] and cell["test_acc"]["values"] == [
            results["test_acc"]] and cell["train_loss_last"]["values"] == [float(metrics[-1]["train_loss"])]
        assert (f"| {row['model']} | {row['layout']} | {row['framework']} | A | {RESNET8_PARAMS:,} | 1 "
                f"| {100 * row['best_val_acc']:.2f}% ± n/a (1 seed) | {100 * row['test_acc']:.2f}% ± n/a (1 seed) "
                f"| {float(metrics[-1]['train_loss']):.4f} ± n/a (1 seed) |") in md
        assert (f"| 0 | {row['model']} | {row['framework']} | {100 * row['best_val_acc']:.2f}% | {row['best_epoch']} "
                f"| {100 * row['test_acc']:.2f}% |") in md
    for kind in ("error", "loss"):
        assert imread(out / f"{STEM}-{kind}.png").shape[1] > 2 * imread(out / f"{STEM}-{kind}.png").shape[0]

    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("*") if p.is_file()
              and p.name != "ablation-state.json"}
    again = _ablation(tmp_path, *args)
    assert again.stdout.count("skipped (finished earlier") == len(cells) and "training" not in again.stdout
    assert mtimes == {p: p.stat().st_mtime_ns for p in mtimes}
    assert json.loads((out / f"{STEM}.json").read_text())["runs"] == report["runs"]


def _wait_for(predicate, proc: subprocess.Popen, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the ablation ended (exit {proc.returncode}) before the condition was met")
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.02)


@pytest.mark.slow  # fast guard: the trainers' SIGKILL contract; the tiny ablation's rerun skips finished cells
def test_interrupted_cell_is_resumed(tmp_path):
    # 64-image batches over 2000 images: 31 iterations per epoch, so --iters 32 is epoch 1 plus one
    # iteration of epoch 2. Freeze the whole process group as soon as epoch 1 is on disk, then kill it.
    args = ["--models", "resnet8", "--frameworks", "torch", "--iters", "32", "--batch-size", "64"]
    cmd = [sys.executable, "-m", "shared.ablation", "--ablation", "cifar10", "--dataset", "synthetic",
           "--data-dir", str(tmp_path / "data"), "--runs-dir", str(tmp_path / "runs"), "--out",
           str(tmp_path / "results"), "--train-args=--no-progress", *args]
    run = tmp_path / "runs" / "seed-0" / "resnet8-torch"
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ})
    try:
        _wait_for(lambda: (run / "checkpoint.pt").is_file() and (run / "metrics.csv").is_file()
                  and len(_metrics(run)) == 1, proc, timeout=600)
        os.killpg(proc.pid, signal.SIGSTOP)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (run / "results.json").exists(), "the run finished before it could be interrupted"
    epoch1 = _metrics(run)
    assert len(epoch1) == 1

    proc = _ablation(tmp_path, *args)
    assert "[1/1] seed-0/resnet8-torch: resuming from its checkpoint" in proc.stdout
    metrics = _metrics(run)
    assert [r["epoch"] for r in metrics] == ["1", "2"] and metrics[0] == epoch1[0]
    report = json.loads((tmp_path / "results" / f"{STEM}.json").read_text())
    assert report["complete"] and report["runs"][0]["epochs_done"] == 2


def _stop_when_epoch1_is_saved(cmd: list[str], run: Path) -> None:
    """Start ``cmd`` (an ablation) in its own process group; kill the group once ``run`` has saved its first epoch."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ})
    try:
        _wait_for(lambda: (run / "checkpoint.pt").is_file() and (run / "metrics.csv").is_file()
                  and len(_metrics(run)) == 1, proc, timeout=900)
        os.killpg(proc.pid, signal.SIGSTOP)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (run / "results.json").exists(), "the run finished before it could be interrupted"


def _without_timing(x):
    """A report without what depends on the clock, the machine or the folder it was written to."""
    drop = {"train_time_s", "images_per_s", "run_dir", "generated", "hardware", "git_commit", "runs_dir"}
    if isinstance(x, dict):
        return {k: _without_timing(v) for k, v in x.items() if k not in drop}
    return [_without_timing(v) for v in x] if isinstance(x, list) else x


def _markdown_tables_without_timing(md: str) -> list[list[str]]:
    """Every table row of the report, without its timing columns (train time, images/s)."""
    rows, drop = [], set()
    for line in md.splitlines():
        if not line.startswith("|"):
            drop = set()
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if not drop and not line.startswith("|---"):
            drop = {i for i, c in enumerate(cells) if c in ("train time", "images/s")} or {-1}
        rows.append([c for i, c in enumerate(cells) if i not in drop])
    return rows


@pytest.mark.slow
def test_multi_seed_ablation_killed_mid_seed_ends_with_the_same_table(tmp_path):
    """digits, plain8/resnet8, seeds 0 and 1, 9 iterations of batch 128 (one epoch of 8 and one step more):
    the interrupted ablation is killed once seed 1's plain8 has saved its first epoch, then run again."""
    data = tmp_path / "data"
    args = ["--ablation", "cifar10", "--dataset", "digits", "--data-dir", str(data), "--models", "plain8,resnet8",
            "--frameworks", "torch", "--seeds", "2", "--iters", "9", "--batch-size", "128",
            "--train-args=--no-progress"]

    def ablation(name: str) -> list[str]:
        return [sys.executable, "-m", "shared.ablation", *args, "--runs-dir", str(tmp_path / name),
                "--out", str(tmp_path / f"{name}-results")]

    run_module(*ablation("whole")[2:])
    _stop_when_epoch1_is_saved(ablation("cut"), tmp_path / "cut" / "seed-1" / "plain8-torch")
    assert (tmp_path / "cut" / "seed-0" / "resnet8-torch" / "results.json").is_file()  # seed 0 was done
    again = run_module(*ablation("cut")[2:])
    assert "[1/4] seed-0/plain8-torch: skipped" in again.stdout
    assert "[3/4] seed-1/plain8-torch: resuming from its checkpoint" in again.stdout
    stem = "ablation-cifar10-digits"
    whole, cut = (json.loads((tmp_path / f"{n}-results" / f"{stem}.json").read_text()) for n in ("whole", "cut"))
    assert cut["complete"] and cut["seeds"] == [0, 1] and [c["n"] for c in cut["cells"]] == [2, 2]
    assert cut["synthetic"] is False and cut["dataset"] == "digits"
    assert _without_timing(cut) == _without_timing(whole)
    tables = [_markdown_tables_without_timing((tmp_path / f"{n}-results" / f"{stem}.md").read_text())
              for n in ("whole", "cut")]
    # cells: header, rule, 2 rows; comparisons: 3 metrics x (header, rule, resnet8 vs plain8); runs: 2 + 4 rows
    assert tables[0] == tables[1] and len(tables[0]) == 4 + 3 * 3 + 6
