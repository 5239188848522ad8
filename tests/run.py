"""Run the test suites, each framework in its own pytest process, several at once, then print one total and the
slowest tests (docs/testing.md).

``tests/shared`` (framework-neutral; may start framework subprocesses), ``tests/torch`` and ``tests/keras`` run as
separate pytest processes, because torch.export crashes in a process that has imported tensorflow, each suite in
the pieces of :func:`units`; ``--jobs`` of them run side by side (default: one per CPU core), each line of their
output prefixed with its piece. The pieces and their tests' commands are forked from preloaded parents
(tests/preload.py).
Other arguments go to every pytest run (``-m "not slow"``, ``-k name``). ``--times DIR`` also writes where the
time went to ``DIR/test-times.json`` and ``.md``: each suite's wall time, each test file's seconds, and what a
fresh process pays to import each framework (every subprocess a test starts pays it again).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

from shared.errors import UserError, run
from shared.io import check_writable
from shared.process import ROOT
from tests.preload import Parents, popen

SUITES = ("shared", "torch", "keras")
# Each suite runs as this many pytest processes, of about equal time, so that every core has work until the end
PARTS = {"shared": 3, "torch": 1, "keras": 2}
SLOWEST = 15
# The suites share the cores, so a waiting OpenMP thread (torch's) sleeps instead of spinning: two spinning
# PyTorch processes on two cores took 35 s for what takes 16 s this way (each alone: 12 s, and 14 s this way).
# Only how idle threads wait changes: not how many there are, nor any result.
# And memory is reused instead of zero-filled afresh: a 2-epoch TensorFlow ResNet-8 run took 4.5 million page
# faults for its temporaries (14 s of system time of 40 s of CPU), 0.34 million with TensorFlow's pooling (BFC)
# CPU allocator (3 s of 31 s); glibc backs the rest with transparent huge pages where the kernel offers them
# (madvise). None of these changes a thread count or a result; an unknown tunable is ignored.
SUITE_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "TF_CPU_ALLOCATOR_USE_BFC": "true",
             "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
# What every test process runs with unless the environment says otherwise (tests/conftest.py sets it too), given to
# the pytest processes at their start: their parent is then the one that the runs their tests kill are forked from.
DEFAULT_ENV = {"KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2", "MPLBACKEND": "Agg"}
# JAX compiles each computation once per run of the suites, not once per process: its persistent compilation cache,
# in a folder that lives as long as the run and no longer (never shared between runs). A JAX process builds a model
# by compiling one random initializer per weight shape; a ResNet-8 training run compiled 39 programs (10 s of its
# 40 s of CPU), and the same run with the cache filled took 19 s, with the same metrics to the last bit. Every
# computation is the same, only where its executable comes from changes. The size limit turns on the cache's file
# lock, so that processes that run side by side never read an entry half written.
def jax_cache(folder: Path) -> dict[str, str]:
    return {"JAX_COMPILATION_CACHE_DIR": str(folder), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_COMPILATION_CACHE_MAX_SIZE": str(1 << 31)}


# Python compiles the project's modules once per run, not once per process: every forked command imports them
# afresh (its parent holds the frameworks alone), and where PYTHONDONTWRITEBYTECODE is set, as on this project's
# machine, each compiled them again (0.04 s for the modules a training run imports first). The bytecode goes to the
# run's temporary folder and no further: never into the tree, never into another run.
def bytecode_cache(folder: Path) -> dict[str, str]:
    return {"PYTHONPYCACHEPREFIX": str(folder), "PYTHONDONTWRITEBYTECODE": ""}


# Each suite's pytest processes are forked from a parent that has imported its framework (tests/preload.py), apart
# from the one their tests' commands come from: their in-process runs are compared with those commands' runs.
FRAMEWORK = {"torch": "torch", "keras": "keras"}


def results(junit: Path) -> list[dict]:
    """Every test case of a junit file: its id, seconds and outcome."""
    if not junit.exists():
        return []
    out = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome = ("failed" if case.find("failure") is not None or case.find("error") is not None
                   else "skipped" if case.find("skipped") is not None else "passed")
        parts = case.get("classname", "").split(".")  # tests.shared.test_x[.TestClass]
        cls = [parts.pop()] if parts and parts[-1][:1].isupper() else []
        name = "::".join(["/".join(parts) + ".py", *cls, case.get("name", "")])
        out.append({"id": name, "seconds": float(case.get("time", 0)), "outcome": outcome})
    return out


def units(parts: dict[str, int] = PARTS,
          times: Path = ROOT / "results" / "test-times.json") -> list[tuple[str, list[str]]]:
    """The pytest processes to run, longest first: each suite's test files in ``parts[suite]`` pieces of about equal
    time. A file's time is its seconds in the last ``make test-times`` (``times``), else its size."""
    try:
        seconds = json.loads(times.read_text())["file_s"]
    except (OSError, ValueError, KeyError):
        seconds = {}

    def weight(path: str) -> float:
        return seconds.get(path) or (ROOT / path).stat().st_size / 1000

    planned = []
    for suite in SUITES:
        files = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "tests" / suite).glob("test_*.py"))]
        if parts.get(suite, 1) <= 1:
            planned.append((sum(map(weight, files)), suite, [f"tests/{suite}"]))
            continue
        pieces = [(0.0, f"{suite}-{i + 1}", []) for i in range(parts[suite])]
        for path in sorted(files, key=weight, reverse=True):  # each file to the lightest piece so far
            total, name, paths = min(pieces, key=lambda p: p[0])
            pieces[pieces.index((total, name, paths))] = (total + weight(path), name, [*paths, path])
        # a piece runs its files in the suite's own order: the files before each are a subset of the whole suite's
        # (a Keras trainer in a process leaves TensorFlow's op determinism on, which turns XLA off for a later test)
        planned += [(total, name, sorted(paths)) for total, name, paths in pieces if paths]
    return [(name, paths) for _, name, paths in sorted(planned, key=lambda u: -u[0])]


def run_suites(argv: list[str], jobs: int, junit_dir: Path, walls: dict[str, float] | None = None) -> dict[str, int]:
    """Each pytest process's exit status (:func:`units`); up to ``jobs`` at once, output streamed line by line with
    its name (and its wall seconds into ``walls``)."""
    lock, codes, walls = threading.Lock(), {}, {} if walls is None else walls
    pending = units()

    def one(name: str, paths: list[str]) -> None:
        cmd = [sys.executable, "-m", "pytest", *paths, f"--junitxml={junit_dir / name}.xml", *argv]
        with lock:
            print(f"=== {name}: {' '.join(cmd[1:])}", flush=True)
        start = time.monotonic()
        proc = popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                     env={**SUITE_ENV, **DEFAULT_ENV, **os.environ, "PYTHONUNBUFFERED": "1"},
                     framework=FRAMEWORK.get(name.split("-")[0]), apart=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            with lock:
                print(f"[{name}] {line}", end="", flush=True)
        codes[name] = proc.wait()
        walls[name] = time.monotonic() - start

    def worker() -> None:
        while True:
            with lock:
                if not pending:
                    return
                name, paths = pending.pop(0)
            one(name, paths)

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


IMPORTS = {"torch": "import torch, torchvision", "keras (tensorflow)": "import keras",
           "keras (jax)": "import keras", "keras (torch)": "import keras", "onnxruntime": "import onnxruntime"}
IMPORT_ENV = {"keras (tensorflow)": "tensorflow", "keras (jax)": "jax", "keras (torch)": "torch"}


def import_seconds() -> dict[str, float]:
    """What a fresh ``python -c <import>`` takes for each framework: the price of every subprocess a test starts."""
    out = {}
    for name, code in IMPORTS.items():
        env = {**os.environ, "KERAS_BACKEND": IMPORT_ENV.get(name, "tensorflow"), "TF_CPP_MIN_LOG_LEVEL": "3"}
        t = time.monotonic()
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, check=True)
        out[name] = round(time.monotonic() - t, 1)
    return out


def write_times(folder: Path, cases: list[dict], walls: dict[str, float], seconds: float, argv: list[str],
                cpu: float) -> None:
    """``test-times.json`` and ``test-times.md`` in ``folder``: suite walls, seconds per test file, import costs."""
    from shared.io import atomic_write_json, atomic_write_text
    from shared.machine import cpu_cores, cpu_model, load_average

    files: dict[str, float] = {}
    for c in cases:
        f = c["id"].split("::")[0]
        files[f] = files.get(f, 0.0) + c["seconds"]
    ranked = sorted(files.items(), key=lambda kv: kv[1], reverse=True)
    machine = f"{cpu_model()}, {cpu_cores()} cores"
    data = {"machine": machine, "load_average_after": load_average(), "pytest_args": argv, "wall_s": round(seconds, 1),
            "cpu_s": round(cpu, 1),
            "suite_wall_s": {k: round(v, 1) for k, v in walls.items()},
            "file_s": {k: round(v, 1) for k, v in ranked}, "fresh_import_s": import_seconds(),
            "test_s": {c["id"]: round(c["seconds"], 1) for c in sorted(cases, key=lambda c: -c["seconds"])[:40]}}
    lines = ["# Where the test time goes", "", f"`make test` ({' '.join(argv)}) on {machine}: "
             f"{seconds / 60:.1f} min wall, the suites side by side (load average after: "
             f"{data['load_average_after']}); the test processes used {cpu / 60:.1f} min of CPU time "
             f"({cpu / seconds:.1f} cores busy on average).", "", "| suite | wall |", "|---|---:|"]
    lines += [f"| tests/{k} | {v / 60:.1f} min |" for k, v in data["suite_wall_s"].items()]
    lines += ["", "A fresh process importing each framework (every subprocess a test starts pays this):", "",
              "| import | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in data["fresh_import_s"].items()]
    lines += ["", "Seconds per test file (setup + call + teardown):", "", "| file | seconds |", "|---|---:|"]
    lines += [f"| `{k}` | {v:.0f} |" for k, v in ranked]
    lines += ["", "The 40 slowest tests:", "", "| test | seconds |", "|---|---:|"]
    lines += [f"| `{k}` | {v:.0f} |" for k, v in data["test_s"].items()]
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "test-times.json", data)
    atomic_write_text(folder / "test-times.md", "\n".join(lines) + "\n")


def main(argv: list[str]) -> int:
    jobs = os.cpu_count() or 1
    times = None
    while argv and argv[0].startswith(("--jobs=", "--times=")):
        key, value = argv[0].split("=", 1)
        if key == "--jobs":
            if not value.isdigit() or int(value) < 1:
                raise UserError(f"--jobs must be a whole number >= 1; got {value!r}")
            jobs = int(value)
        else:  # checked now, not after a quarter of an hour of tests
            times = check_writable(value, folder=True, what="test-times folder")
        argv = argv[1:]
    t0, cpu0, walls = time.monotonic(), os.times(), {}
    parents = Parents() if os.environ.get("RESNET_TEST_PRELOAD", "1") != "0" else None
    if parents is not None:  # the suites' commands are forked from preloaded parents (tests/preload.py), shared
        parents.share()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, value in jax_cache(Path(tmp) / "jax-cache").items():
                os.environ.setdefault(name, value)
            if "PYTHONPYCACHEPREFIX" not in os.environ:  # else the folder the user chose
                os.environ.update(bytecode_cache(Path(tmp) / "bytecode"))
            codes = run_suites(argv, jobs, Path(tmp), walls)
            cases = [c for name in sorted(walls) for c in results(Path(tmp) / f"{name}.xml")]
    finally:
        if parents is not None:
            parents.close()
    seconds, cpu1 = time.monotonic() - t0, os.times()
    # every process the suites started and waited for: user + system CPU seconds
    cpu = cpu1.children_user + cpu1.children_system - cpu0.children_user - cpu0.children_system
    total, slow = summary(cases, seconds)
    print("\n" + "\n".join(slow))
    print("suite wall: " + ", ".join(f"{k} {v:.0f} s" for k, v in walls.items()))
    print(f"CPU time of the test processes: {cpu:.0f} s, {cpu / seconds:.1f} cores busy on average "
          f"({os.cpu_count()} cores)")
    if times is not None:
        write_times(times, cases, walls, seconds, argv, cpu)
        print(f"where the time went: {times / 'test-times.md'}")
    print(f"\ntotal: {total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped")
    worst = max((c for c in codes.values() if c not in (0, 5)), default=0)  # 5: no test selected in that suite
    if total["passed"] + total["failed"] == 0:
        print("no test ran", file=sys.stderr)
        return 5 if worst == 0 else worst
    return 1 if total["failed"] or worst else 0


if __name__ == "__main__":
    sys.exit(run(main, sys.argv[1:]))
