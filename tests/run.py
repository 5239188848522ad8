"""Run the test suite with each framework in its own pytest process, then print one total.

``tests/shared`` (framework-neutral; may start framework subprocesses), ``tests/torch`` and
``tests/keras`` run one after the other, because torch.export crashes in a process that has
imported tensorflow. Extra arguments go to every pytest run (e.g. ``-m "not slow"``, ``-k name``).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from shared.process import ROOT

SUITES = ("shared", "torch", "keras")


def _counts(junit: Path) -> dict[str, int]:
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    if not junit.exists():
        return counts
    for suite in ET.parse(junit).getroot().iter("testsuite"):
        tests = int(suite.get("tests", 0))
        failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped = int(suite.get("skipped", 0))
        counts["failed"] += failed
        counts["skipped"] += skipped
        counts["passed"] += tests - failed - skipped
    return counts


def main(argv: list[str]) -> int:
    total = {"passed": 0, "failed": 0, "skipped": 0}
    worst = 0
    with tempfile.TemporaryDirectory() as tmp:
        for suite in SUITES:
            junit = Path(tmp) / f"{suite}.xml"
            cmd = [sys.executable, "-m", "pytest", f"tests/{suite}", f"--junitxml={junit}", *argv]
            print(f"\n=== tests/{suite}: {' '.join(cmd[1:])}", flush=True)
            rc = subprocess.call(cmd, cwd=ROOT)
            if rc not in (0, 5):  # 5 = no test selected in this suite (e.g. -m slow): not a failure
                worst = rc
            for k, v in _counts(junit).items():
                total[k] += v
    print(f"\ntotal: {total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped")
    if total["passed"] + total["failed"] == 0:
        print("no test ran", file=sys.stderr)
        return 5 if worst == 0 else worst
    return 1 if total["failed"] or worst else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
