"""What the training tests of both frameworks share: comparing two runs' metrics, and killing a run with
SIGKILL, or stopping it with SIGTERM, in the middle of its second epoch, then checking that ``--resume`` ends where
an uninterrupted run ends (``tests/trainer_contract.py``, ``tests/torch/test_train.py``,
``tests/keras/test_train_backends.py``)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from shared import runs
from shared.io import load_weights
from shared.process import ROOT, child_env
from tests import preload

DETERMINISTIC = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")  # all but time and speed


def deterministic_rows(run_dir: Path) -> list[dict]:
    """``metrics.csv`` without its time and speed columns."""
    return [{k: r[k] for k in DETERMINISTIC} for r in runs.read_metrics(run_dir)]


def same_metrics(a: Path, b: Path) -> bool:
    rows = deterministic_rows(a)
    return bool(rows) and rows == deterministic_rows(b)


def assert_learned_run(run_dir: Path, framework: str, chance: float) -> dict:
    """The 2-epoch, 40-iteration synthetic run both training suites make: it starts near chance, learns, follows
    the recipe's milestones and leaves a complete run folder. Returns the run (``runs.read_run``)."""
    run = runs.read_run(run_dir)
    rows, results, config = run["metrics"], run["results"], run["config"]
    assert [r["epoch"] for r in rows] == [1, 2]
    steps = json.loads((run_dir / "steps.json").read_text())
    assert steps["loss"][0] == pytest.approx(math.log(10), rel=0.35)  # starts near chance: ln(10)
    assert rows[-1]["train_loss"] < 0.7 * steps["loss"][0]  # loss goes down
    assert rows[-1]["val_acc"] > 3 * chance and results["test_acc"] > 3 * chance
    assert [r["lr"] for r in rows] == pytest.approx([0.1, 0.001])  # milestones at 20 and 30 of 40 iterations
    assert set(runs.CONFIG_KEYS) <= set(config) and config["framework"] == framework
    assert config["recipe"]["milestones"] == [20, 30] and config["device"]["type"] == "cpu"
    assert set(runs.RESULTS_KEYS) <= set(results) and results["finished"] is True
    assert results["best_epoch"] == max(rows, key=lambda r: r["val_acc"])["epoch"]
    return run


def wait_for_first_checkpoint(proc: subprocess.Popen, run_dir: Path, framework: str) -> Path:
    """Wait (up to 300 s) until the run ``proc`` writes into ``run_dir`` has its first checkpoint, or has ended."""
    checkpoint = run_dir / runs.CHECKPOINTS[framework]
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return checkpoint


def kill_in_second_epoch(cmd: list[str], run_dir: Path, framework: str, settle: float, **env: str) -> None:
    """Start ``cmd`` (a 2-epoch run into ``run_dir``), wait for its first checkpoint, let it run ``settle``
    seconds into the second epoch and SIGKILL it with every process it started (a job killed as a whole);
    the folder must then hold one epoch and no results."""
    # Forked apart from the parent that the reference and resumed runs come from (tests/preload.py): a result that
    # depended on the process (its hash seed, say) would differ between them, as between two fresh processes.
    proc = preload.popen(cmd, cwd=ROOT, env=child_env(**env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, apart=True)
    try:
        wait_for_first_checkpoint(proc, run_dir, framework)
        time.sleep(settle)
        assert proc.poll() is None, "the run finished before it could be killed mid-epoch"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert len(runs.read_metrics(run_dir)) == 1 and not (run_dir / runs.RESULTS).exists()


def signal_in_second_epoch(cmd: list[str], run_dir: Path, framework: str, settle: float, *signals: int,
                           gap: float = 0.0, **env: str) -> subprocess.CompletedProcess:
    """Start ``cmd`` (a 2-epoch run into ``run_dir``), wait for its first checkpoint, let it run ``settle`` seconds
    into the second epoch and send ``signals`` to its process group, ``gap`` seconds apart, as a scheduler or a
    terminal does; its output once it has ended."""
    proc = preload.popen(cmd, cwd=ROOT, env=child_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True, apart=True)
    try:
        wait_for_first_checkpoint(proc, run_dir, framework)
        time.sleep(settle)
        assert proc.poll() is None, "the run finished before it could be stopped mid-epoch"
        for i, sig in enumerate(signals):
            time.sleep(gap if i else 0)
            os.killpg(proc.pid, sig)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def assert_one_line(stderr: str, start: str) -> str:
    """The last line of ``stderr`` starts with ``start``, and nothing in it is a traceback; that line."""
    assert "Traceback" not in stderr, stderr[-3000:]
    line = stderr.strip().splitlines()[-1]
    assert line.startswith(start), stderr[-3000:]
    return line


def leftovers(run_dir: Path) -> list[str]:
    """Temporary files of atomic writes left in a run folder (there must be none)."""
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob(".*") if p.is_file())


def assert_resumed_like(resumed: Path, full: Path) -> None:
    """The resumed run ends bit for bit where the uninterrupted one ends: metrics (but time and speed),
    test accuracy and loss, last weights."""
    assert deterministic_rows(resumed) == deterministic_rows(full)
    a, b = runs.read_run(resumed)["results"], runs.read_run(full)["results"]
    assert (a["test_acc"], a["test_loss"], a["iterations"]) == (b["test_acc"], b["test_loss"], b["iterations"])
    wa, _ = load_weights(resumed / runs.LAST)
    wb, _ = load_weights(full / runs.LAST)
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)


def fill_the_disk_in_second_epoch(cmd: list[str], disk: Path, run_dir: Path, framework: str,
                                  **env: str) -> subprocess.CompletedProcess:
    """Start ``cmd`` (a 2-epoch run into ``run_dir`` on the small filesystem ``disk``), and once its first checkpoint
    is written fill the disk but half the room of the files an epoch writes, so that the second epoch's writes
    fail; its output once it has ended. The filler is removed after (space freed)."""
    proc = preload.popen(cmd, cwd=ROOT, env=child_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True, apart=True)
    filler = disk / "filler"
    try:
        wait_for_first_checkpoint(proc, run_dir, framework)
        epoch_files = sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file())
        with open(filler, "wb") as f:
            f.write(b"\0" * max(shutil.disk_usage(disk).free - epoch_files // 2, 0))
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
        filler.unlink(missing_ok=True)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def assert_full_disk_kept_epoch_1(proc: subprocess.CompletedProcess, run_dir: Path, framework: str) -> None:
    """One line naming the file and the space left, exit 2; the epoch-1 row, weights and checkpoint kept; no
    temporary file."""
    line = assert_one_line(proc.stderr, f"error: no space left on device while writing {run_dir}/")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert re.fullmatch(rf"error: no space left on device while writing {re.escape(str(run_dir))}/\S+ "
                        rf"\([\d.]+ MB free\); the run keeps epoch 1; free space and resume with "
                        rf"RESUME={re.escape(str(run_dir))}", line), line
    assert [r["epoch"] for r in runs.read_metrics(run_dir)] == [1] and leftovers(run_dir) == []
    assert load_weights(run_dir / runs.LAST)[1]["epoch"] == "1" and not (run_dir / runs.RESULTS).exists()
