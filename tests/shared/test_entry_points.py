"""One user-error path for every command: a bad argument is one ``error:`` line and exit status 2 (argparse's
convention), for every ``python -m`` entry point and for the command line of every make target that runs one.

The entry points run as ``python -m`` runs them (``tests/entry_worker.py``: ``runpy`` with ``__main__``), one
process per framework, so each framework is imported once; a real ``make`` run checks the whole chain once.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys

import pytest

from shared.errors import USER_ERROR
from shared.process import ROOT, child_env
from tests import preload

PACKAGES = ("shared", "pytorch_impl", "keras_impl", "export", "datasets")
BAD = "--no-such-flag"


def entry_points() -> list[str]:
    """Every module of the packages that runs as ``python -m``, and ``tests.mutants`` (``make test-mutants``)."""
    found = ["tests.mutants"]
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            if path.name == "__main__.py":
                found.append(".".join(path.parent.relative_to(ROOT).parts))
            elif 'if __name__ == "__main__":' in text:
                found.append(".".join(path.with_suffix("").relative_to(ROOT).parts))
    return found


def process_of(module: str) -> str:
    """Which worker process runs ``module``: each framework's own, the rest in one that imports neither."""
    return {"pytorch_impl": "torch", "keras_impl": "keras"}.get(module.split(".")[0], "neutral")


def run_jobs(jobs: list[dict]) -> list[dict]:
    """``tests.entry_worker`` over ``jobs``, one process per framework; the results in the jobs' order."""
    results: dict[int, dict] = {}
    for kind in ("neutral", "torch", "keras"):
        mine = [(i, job) for i, job in enumerate(jobs) if process_of(job["module"]) == kind]
        if not mine:
            continue
        stdin = "".join(json.dumps(job) + "\n" for _, job in mine)
        # its own process group: a command that started children is stopped with them
        worker = preload.popen([sys.executable, "-m", "tests.entry_worker", kind], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                               env=child_env(keras=kind == "keras"), start_new_session=True)
        try:
            out, err = worker.communicate(stdin, timeout=900)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert len(lines) == len(mine), f"{kind} worker: {err[-3000:]}"
        results.update({i: r for (i, _), r in zip(mine, lines)})
    return [results[i] for i in range(len(jobs))]


def assert_one_error_line(result: dict, what: str) -> str:
    err = result["stderr"].strip()
    assert result["code"] == USER_ERROR, f"{what}: exit {result['code']}\n{err}"
    assert err.startswith("error: ") and "\n" not in err, f"{what}: stderr is not one error line:\n{err}"
    return err


def test_every_entry_point_says_a_bad_argument_in_one_line_and_exits_2():
    modules = entry_points()
    assert {"pytorch_impl.train", "keras_impl.train", "export.infer", "shared.ablation"} <= set(modules)
    for module, result in zip(modules, run_jobs([{"module": m, "args": [BAD]} for m in modules])):
        assert_one_error_line(result, module)


# A bad value for each make target that runs a command (a few targets take a file or folder as their input).
MAKE_CASES = {
    "summary": ["MODEL=resnet21"], "compare": ["MODEL=resnet21"],
    "convert": ["MODEL=resnet21", "OUT=/tmp/x.safetensors"], "export": ["MODEL=resnet21"],
    "infer": ["ONNX=/nonexistent/model.onnx", "IMAGES=x.png"], "onnx-parity": ["RUN=/nonexistent"],
    "quantize": ["RUN=/nonexistent"], "bench-deploy": ["RUN=/nonexistent"], "deploy-check": ["RUN=/nonexistent"],
    "train-torch": ["MODEL=resnet21"], "train-keras": ["MODEL=resnet21"], "ablation": ["ABLATION=nope"],
    "data": ["DATASET=nope"], "bench-data": ["BATCH_SIZE=0"], "bench": ["MODEL=resnet21"],
    "gpu-report": ["DEVICE=tpu"], "gpu-full-run": ["MODEL=resnet21"], "test-mutants": ["MUTANTS=nope"],
}


def make_command(target: str, variables: list[str]) -> tuple[str, list[str]]:
    """(module, arguments) of the command ``make <target> <variables>`` runs (what ``make -n`` prints)."""
    proc = subprocess.run(["make", "-n", target, *variables], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.replace("\\\n", " ").splitlines()  # a recipe's continued lines as one command
    words = next(shlex.split(line) for line in lines if " -m " in line and "pip" not in line)
    i = words.index("-m")
    return words[i + 1], words[i + 2:]


def test_every_make_target_passes_a_bad_value_to_a_command_that_says_it_in_one_line():
    targets = [t for t in MAKE_CASES]
    listed = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True).stdout
    runs_a_command = {line.split()[1] for line in listed.splitlines() if line.strip().startswith("make ")}
    # compare-all takes no value a user can get wrong (INCLUDE_1202 is a switch); readme none either
    runs_a_command -= {"help", "setup", "test", "test-times", "test-all", "test-slow", "lint", "format", "clean",
                       "compare-all", "readme"}
    assert runs_a_command == set(targets), "a make target without a bad-value case (or a stale one)"
    commands = [make_command(t, MAKE_CASES[t]) for t in targets]
    results = run_jobs([{"module": module, "args": args} for module, args in commands])
    for target, result in zip(targets, results):
        assert_one_error_line(result, f"make {target} {' '.join(MAKE_CASES[target])}")


@pytest.mark.parametrize("variables", [["DATASET=nope"]])
def test_make_itself_reports_the_commands_exit_status(variables):
    proc = subprocess.run(["make", "-s", "data", *variables], cwd=ROOT, capture_output=True, text=True, timeout=300)
    ours = [line for line in proc.stderr.splitlines() if not line.startswith("make")]
    assert proc.returncode == 2 and "Error 2" in proc.stderr
    assert len(ours) == 1 and ours[0].startswith("error: ") and "nope" in ours[0] and "Traceback" not in proc.stderr
