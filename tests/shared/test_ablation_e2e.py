"""A tiny ablation on synthetic data with the real training CLIs of both frameworks.

Small models (plain8/resnet8), one short epoch (``--iters 2 --batch-size 32``): a pipeline check, not a
result. Every number in the table is checked against the run folder it came from, read here
independently (csv/json), and the parameter count against the paper's formula for the model.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
        assert f"[{i}/{len(cells)}] {m}-{fw}: training" in proc.stdout
        assert f"[{i}/{len(cells)}] {m}-{fw}: finished in" in proc.stdout
    out = tmp_path / "results"
    assert {p.name for p in out.iterdir()} == {f"{STEM}.md", f"{STEM}.json", f"{STEM}-error.png", f"{STEM}-loss.png"}
    report = json.loads((out / f"{STEM}.json").read_text())
    assert report["complete"] and report["synthetic"] is True and report["epochs"] == 1
    assert [(r["model"], r["framework"]) for r in report["cells"]] == cells
    md = (out / f"{STEM}.md").read_text()
    assert "synthetic data" in md and "Epochs per cell: **1**" in md and "Hardware: CPU:" in md
    for row in report["cells"]:
        run = tmp_path / "runs" / f"{row['model']}-{row['framework']}"
        metrics = _metrics(run)
        results = json.loads((run / "results.json").read_text())
        best = max(metrics, key=lambda r: float(r["val_acc"]))
        assert row["best_val_acc"] == float(best["val_acc"]) == results["best_val_acc"]
        assert row["best_epoch"] == int(best["epoch"]) == results["best_epoch"]
        assert row["test_acc"] == results["test_acc"] and row["train_time_s"] == results["wall_time_s"]
        assert row["params"] == RESNET8_PARAMS and row["shortcut"] == "A"
        assert row["layout"] == ("plain" if row["model"].startswith("plain") else "residual")
        assert (f"| {row['model']} | {row['layout']} | {row['framework']} | A | {RESNET8_PARAMS:,} "
                f"| {100 * row['best_val_acc']:.2f}% | {row['best_epoch']} | {100 * row['test_acc']:.2f}% |") in md
    for kind in ("error", "loss"):
        assert imread(out / f"{STEM}-{kind}.png").shape[1] > 2 * imread(out / f"{STEM}-{kind}.png").shape[0]

    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("*") if p.is_file()
              and p.name != "ablation-state.json"}
    again = _ablation(tmp_path, *args)
    assert again.stdout.count("skipped (finished earlier") == len(cells) and "training" not in again.stdout
    assert mtimes == {p: p.stat().st_mtime_ns for p in mtimes}
    assert json.loads((out / f"{STEM}.json").read_text())["cells"] == report["cells"]


def _wait_for(predicate, proc: subprocess.Popen, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the ablation ended (exit {proc.returncode}) before the condition was met")
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.02)


def test_interrupted_cell_is_resumed(tmp_path):
    # 64-image batches over 2000 images: 31 iterations per epoch, so --iters 32 is epoch 1 plus one
    # iteration of epoch 2. Freeze the whole process group as soon as epoch 1 is on disk, then kill it.
    args = ["--models", "resnet8", "--frameworks", "torch", "--iters", "32", "--batch-size", "64"]
    cmd = [sys.executable, "-m", "shared.ablation", "--ablation", "cifar10", "--dataset", "synthetic",
           "--data-dir", str(tmp_path / "data"), "--runs-dir", str(tmp_path / "runs"), "--out",
           str(tmp_path / "results"), "--train-args=--no-progress", *args]
    run = tmp_path / "runs" / "resnet8-torch"
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
    assert "[1/1] resnet8-torch: resuming from its checkpoint" in proc.stdout
    metrics = _metrics(run)
    assert [r["epoch"] for r in metrics] == ["1", "2"] and metrics[0] == epoch1[0]
    report = json.loads((tmp_path / "results" / f"{STEM}.json").read_text())
    assert report["complete"] and report["cells"][0]["epochs_done"] == 2
