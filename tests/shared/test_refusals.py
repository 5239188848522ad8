"""When the machine says no (docs/training.md, "When the machine says no"): an output that cannot be written is one
line before any work, a full disk or a refused write is one line that names the file and loses nothing, and the
stop signals of a training process do what they promise. The trainers' own cases are in tests/trainer_contract.py.
"""

from __future__ import annotations

import errno
import importlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from shared import io as shared_io
from shared.errors import USER_ERROR, UserError, run
from shared.io import WriteError, atomic_write_text, load_weights, save_weights, together
from shared.signals import STOPPED, StopNow, StopRequest, run_processes
from tests.disk import small_disk
from tests.shared.test_entry_points import assert_one_error_line, make_command, run_jobs
from tests.train_helpers import leftovers

NOPE = "/proc/nope"  # /proc takes no new folder, even for root


def _writers(run_dir: Path) -> dict[str, tuple[str, list[str]]]:
    """Every command that writes, with its output where nothing can be written: the issue's make targets as make
    passes them, the rest as ``python -m`` runs them. (The trainers: tests/trainer_contract.py.)"""
    make = {
        "make infer": ("infer", ["ONNX=/nonexistent/model.onnx", "IMAGES=x.png", f"OUT={NOPE}/p.csv"]),
        "make export": ("export", ["MODEL=resnet20", f"OUT={NOPE}/m.onnx"]),
        "make data": ("data", ["DATASET=synthetic", f"DATA_DIR={NOPE}"]),
        "make convert": ("convert", ["FROM=torch", "TO=keras", "MODEL=resnet20", "RANDOM=0", f"OUT={NOPE}/w.h5"]),
        "make ablation": ("ablation", ["ABLATION=cifar10", f"ABLATION_OUT={NOPE}/a"]),
        "make bench": ("bench", ["MODEL=resnet20", f"BENCH_OUT={NOPE}/b"]),
        "make quantize": ("quantize", [f"RUN={run_dir}", f"OUT={NOPE}/q.onnx"]),
        "make onnx-parity": ("onnx-parity", [f"RUN={run_dir}", f"OUT={NOPE}/p"]),
        "make deploy-check": ("deploy-check", [f"RUN={run_dir}", f"OUT={NOPE}/d"]),
        "make bench-deploy": ("bench-deploy", [f"RUN={run_dir}", f"OUT={NOPE}/d"]),
        "make gpu-report": ("gpu-report", [f"OUT={NOPE}/g"]),
        "make gpu-full-run": ("gpu-full-run", [f"OUT={NOPE}/g"]),
    }
    commands = {name: make_command(*case) for name, case in make.items()}
    commands["compare"] = ("shared.harness.compare", ["--model", "resnet20", "--out-dir", f"{NOPE}/c"])
    commands["bench-data"] = ("datasets.bench", ["--out", f"{NOPE}/b"])
    commands["harness parity"] = ("shared.harness.parity", ["--model", "resnet20", "--out-dir", f"{NOPE}/p"])
    commands["test-times"] = ("tests.run", [f"--times={NOPE}/t", "-m", "not slow"])  # before any suite starts
    return commands


def test_every_command_refuses_an_output_it_cannot_write_in_one_line_before_any_work(tmp_path):
    """Each names the path and the reason, exits 2, and starts nothing first (no download, training, export or
    classification: they would fail differently, or not in this second)."""
    writers = _writers(tmp_path)
    results = run_jobs([{"module": module, "args": args} for module, args in writers.values()])
    for name, result in zip(writers, results):
        err = assert_one_error_line(result, name)
        assert err.startswith("error: cannot write") and f"{NOPE}/" in err, f"{name}: {err}"
        assert "(No such file or directory)" in err, f"{name}: {err}"


def test_a_full_disk_is_one_line_naming_the_file_and_the_space_left_and_leaves_the_old_file(tmp_path):
    with small_disk(tmp_path / "disk", 256 << 10) as disk:
        atomic_write_text(disk / "report.md", "the old report\n")
        arrays = {"w": np.arange(100_000, dtype=np.float32)}  # 400 kB: more than the disk
        with pytest.raises(WriteError) as caught:
            save_weights(disk / "w.safetensors", arrays)
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize / 1e6
        assert str(caught.value) == (f"no space left on device while writing {disk / 'w.safetensors'} "
                                     f"({free:.1f} MB free); free space and run it again")
        with pytest.raises(WriteError, match="no space left on device while writing .*w.safetensors"):
            with together():  # the report and the weights land together, or neither
                atomic_write_text(disk / "report.md", "the new report\n")
                save_weights(disk / "w.safetensors", arrays)
        assert (disk / "report.md").read_text() == "the old report\n"
        assert sorted(p.name for p in disk.iterdir()) == ["report.md"]


def test_a_read_only_folder_is_one_line_with_the_reason(tmp_path):
    with small_disk(tmp_path / "ro", 1 << 20, read_only=True) as disk:
        with pytest.raises(WriteError) as caught:
            atomic_write_text(disk / "r.json", "{}")
        assert str(caught.value) == (f"cannot write {disk / 'r.json'} (Read-only file system); check that its folder "
                                     "exists and is writable, and run it again")
        assert not caught.value.disk_full


def test_a_write_that_fails_at_fsync_leaves_nothing(tmp_path, monkeypatch):
    """Some filesystems (NFS, delayed allocation) report a full disk only when the data is flushed."""
    atomic_write_text(tmp_path / "a.txt", "old")

    def full(tmp: str) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)

    monkeypatch.setattr(shared_io, "_sync", full)
    with pytest.raises(WriteError, match=r"no space left on device while writing .*a\.txt \([\d.]+ MB free\)"):
        atomic_write_text(tmp_path / "a.txt", "new")
    assert (tmp_path / "a.txt").read_text() == "old" and leftovers(tmp_path) == []


def test_a_bug_inside_a_write_is_not_called_a_full_disk(tmp_path):
    def broken(tmp: str) -> None:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        shared_io.atomic_write(tmp_path / "x", broken)
    assert leftovers(tmp_path) == [] and not (tmp_path / "x").exists()


def test_a_stop_at_once_inside_staged_writes_keeps_the_last_files(tmp_path):
    atomic_write_text(tmp_path / "checkpoint", "epoch 1")
    with pytest.raises(StopNow):
        with together():
            atomic_write_text(tmp_path / "metrics.csv", "epoch 2")
            raise StopNow(signal.SIGINT)
    assert (tmp_path / "checkpoint").read_text() == "epoch 1" and not (tmp_path / "metrics.csv").exists()
    assert leftovers(tmp_path) == []


def test_preparing_data_on_a_full_disk_is_one_line_and_leaves_no_half_folder(tmp_path, capsys):
    """The synthetic set is 9 MB; 1 MB fits none of it (writing through a memory map here used to end the
    process with SIGBUS)."""
    prepare = importlib.import_module("datasets.prepare")  # the command (datasets.prepare is also a function)
    with small_disk(tmp_path / "disk", 1 << 20) as disk:
        assert run(prepare.main, ["--dataset", "synthetic", "--data-dir", str(disk / "data")]) == USER_ERROR
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: no space left on device while writing {disk / 'data/prepared/synthetic'} (")
        assert err.endswith("MB free); free space and run it again") and "\n" not in err
        assert list((disk / "data" / "prepared").iterdir()) == []


@pytest.mark.slow
def test_an_export_on_a_full_disk_is_one_line(tmp_path):
    with small_disk(tmp_path / "disk", 128 << 10) as disk:
        out = disk / "m.onnx"
        proc = subprocess.run([sys.executable, "-m", "export.onnx_export", "--model", "resnet8", "--out", str(out)],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == USER_ERROR and "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith(f"error: no space left on device while writing {out} (")
        assert leftovers(disk) == [] and not out.exists()


def test_a_corrupt_weight_file_is_one_short_line(tmp_path):
    path = tmp_path / "w.safetensors"
    save_weights(path, {"w": np.ones(1000, np.float32)})
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(UserError) as caught:
        load_weights(path)
    assert str(caught.value) == (f"cannot read weight file {path}: truncated or corrupt (not a whole safetensors "
                                 "file); write it again (train, convert or export)")


def test_the_first_sigterm_asks_the_second_and_sigint_stop_at_once():
    # what this process had before (a background job of a shell starts with SIGINT ignored): given back after
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signal == "SIGTERM"
        with pytest.raises(StopNow) as again:
            os.kill(os.getpid(), signal.SIGTERM)
        assert again.value.status == STOPPED
    with StopRequest() as stop, pytest.raises(StopNow) as interrupted:
        os.kill(os.getpid(), signal.SIGINT)
    assert interrupted.value.status == 130 and not stop.requested
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_rearm_takes_sigterm_back_from_a_handler_installed_after_it():
    """What joining several JAX processes does (JAX's distributed client installs its own SIGTERM handler, and the
    stop was lost: the two-process run finished instead of stopping); rearm puts the stop's handler back."""
    with StopRequest() as stop:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # another handler, installed after the stop's
        os.kill(os.getpid(), signal.SIGTERM)
        assert not stop.requested
        stop.rearm()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


CHILD = """
import os, signal, sys, time
got = []
signal.signal(signal.SIGTERM, lambda *a: got.append(1))
open(sys.argv[1] + ".ready", "w").close()
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end and not got:
    time.sleep(0.01)
time.sleep(0.3)  # a second SIGTERM would land here
open(sys.argv[1], "w").write(f"{len(got)}{' session leader' if os.getsid(0) == os.getpid() else ''}")
sys.exit(143 if got else int(sys.argv[3]))
"""


def _children(tmp_path: Path, *specs: tuple[float, int]) -> list[tuple[list[str], dict[str, str]]]:
    """(argv, env) of children that wait ``seconds`` for a SIGTERM, then exit with ``status`` (143 if it came)."""
    return [([sys.executable, "-c", CHILD, str(tmp_path / f"c{i}"), str(seconds), str(status)], dict(os.environ))
            for i, (seconds, status) in enumerate(specs)]


def _when_ready(tmp_path: Path, n: int, action) -> threading.Thread:
    def wait() -> None:
        while not all((tmp_path / f"c{i}.ready").exists() for i in range(n)):
            time.sleep(0.01)
        action()

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread


def test_the_launcher_passes_one_sigterm_to_each_process_and_waits_for_them(tmp_path):
    """Each child runs in its own session (a scheduler's SIGTERM to the launcher's process group does not reach it
    twice) and hears the launcher's SIGTERM once; the launcher waits for them and says 143."""
    _when_ready(tmp_path, 2, lambda: os.kill(os.getpid(), signal.SIGTERM))
    status = run_processes(_children(tmp_path, (30, 0), (30, 0)))
    assert status == STOPPED
    assert [(tmp_path / f"c{i}").read_text() for i in range(2)] == ["1 session leader"] * 2
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_when_one_process_fails_the_launcher_says_the_owners_status_and_ends_the_rest(tmp_path):
    """Child 1 fails at once (exit 1, as a non-owner does after a user error); the owner (child 0) says why and
    exits 2 a moment later; a third would wait forever in a collective, and is killed after the grace."""
    t0 = time.monotonic()
    status = run_processes(_children(tmp_path, (0.5, 2), (0, 1), (60, 0)), grace=2)
    assert status == USER_ERROR and time.monotonic() - t0 < 30
    assert not (tmp_path / "c2").exists()  # killed before it could write
