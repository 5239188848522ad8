"""Run the test suites, each framework in its own pytest process, several at once, then print one total and the
slowest tests (docs/testing.md).

``tests/shared`` (framework-neutral; may start framework subprocesses), ``tests/torch`` and ``tests/keras`` run as
separate pytest processes, because torch.export crashes in a process that has imported tensorflow; ``--jobs`` of
them run side by side (default: one per CPU core, at most 3), each line of their output prefixed with its suite.
Other arguments go to every pytest run (``-m "not slow"``, ``-k name``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

from shared.process import ROOT

SUITES = ("shared", "torch", "keras")  # longest first: it starts first
SLOWEST = 15


def results(junit: Path) -> list[dict]:
    """Every test case of a junit file: its id, seconds and outcome."""
    if not junit.exists():
        return []
    out = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome = ("failed" if case.find("failure") is not None or case.find("error") is not None
                   else "skipped" if case.find("skipped") is not None else "passed")
        name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        out.append({"id": name, "seconds": float(case.get("time", 0)), "outcome": outcome})
    return out


def run_suites(argv: list[str], jobs: int, junit_dir: Path) -> dict[str, int]:
    """Each suite's pytest exit status; up to ``jobs`` at once, output streamed line by line with its suite."""
    lock, codes = threading.Lock(), {}
    pending = list(SUITES)

    def one(suite: str) -> None:
        cmd = [sys.executable, "-m", "pytest", f"tests/{suite}", f"--junitxml={junit_dir / suite}.xml", *argv]
        with lock:
            print(f"=== tests/{suite}: {' '.join(cmd[1:])}", flush=True)
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert proc.stdout is not None
        for line in proc.stdout:
            with lock:
                print(f"[{suite}] {line}", end="", flush=True)
        codes[suite] = proc.wait()

    def worker() -> None:
        while True:
            with lock:
                if not pending:
                    return
                suite = pending.pop(0)
            one(suite)

    threads = [threading.Thread(target=worker) for _ in range(max(1, jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return codes


def summary(cases: Iterable[dict], seconds: float) -> tuple[dict[str, int], list[str]]:
    """(counts by outcome, the lines naming the slowest tests)."""
    cases = list(cases)
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "skipped")}
    slow = sorted(cases, key=lambda c: c["seconds"], reverse=True)[:SLOWEST]
    lines = [f"{SLOWEST} slowest tests (setup + call + teardown; {seconds:.0f} s wall in all):"]
    lines += [f"  {c['seconds']:7.1f}s  {c['id']}" for c in slow]
    return counts, lines


def main(argv: list[str]) -> int:
    jobs = min(len(SUITES), os.cpu_count() or 1)
    if argv and argv[0].startswith("--jobs="):
        jobs, argv = int(argv[0].split("=", 1)[1]), argv[1:]
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        codes = run_suites(argv, jobs, Path(tmp))
        cases = [c for suite in SUITES for c in results(Path(tmp) / f"{suite}.xml")]
    total, slow = summary(cases, time.monotonic() - t0)
    print("\n" + "\n".join(slow))
    print(f"\ntotal: {total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped")
    worst = max((c for c in codes.values() if c not in (0, 5)), default=0)  # 5: no test selected in that suite
    if total["passed"] + total["failed"] == 0:
        print("no test ran", file=sys.stderr)
        return 5 if worst == 0 else worst
    return 1 if total["failed"] or worst else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
