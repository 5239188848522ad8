"""Running a framework in its own process: the repository root, each framework's package, the environment a child
gets (its Keras backend included) and how a child is watched.

Every tool that starts framework work goes through here, because torch's ONNX exporter crashes where TensorFlow is
loaded (docs/README.md). Imports neither torch nor tensorflow.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from shared import errors
from shared.backends import keras_backend

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORK_PACKAGES = {"torch": "pytorch_impl", "keras": "keras_impl"}
FRAMEWORKS = tuple(FRAMEWORK_PACKAGES)


def package(framework: str) -> str:
    """The package that implements ``framework`` (``pytorch_impl`` / ``keras_impl``)."""
    if framework not in FRAMEWORK_PACKAGES:
        raise ValueError(f"unknown framework {framework!r}; valid choices: {', '.join(FRAMEWORKS)}")
    return FRAMEWORK_PACKAGES[framework]


def module_command(framework: str, module: str, *args: object) -> list[str]:
    """``python -m <package>.<module> args...`` for ``framework``, with this interpreter."""
    return [sys.executable, "-m", f"{package(framework)}.{module}", *map(str, args)]


def child_env(*, keras: bool = True, **extra: str) -> dict[str, str]:
    """The environment of a framework process: this one's, with the checked Keras backend made explicit,
    TensorFlow's C++ logging quietened and the repository root importable.

    ``keras=False`` is for a child that imports no Keras (a torch process, data preparation): its backend
    is neither checked nor set, so such a command runs where Keras is not installed. Otherwise a bad or
    missing backend stops the calling command with one line (callers are command-line tools); the backend
    checked is the child's own (``KERAS_BACKEND`` in ``extra`` wins over this process's).
    """
    env = dict(os.environ)
    if keras:
        try:
            env["KERAS_BACKEND"] = keras_backend({**env, **extra})
        except ValueError as e:
            raise errors.UserError(str(e)) from None
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**env, **extra}


@dataclass(frozen=True)
class Finished:
    """How a child process ended: its exit code (-9 after a timeout), stdout if captured, stderr's tail."""

    returncode: int
    stdout: str
    stderr_tail: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def reason(self) -> str:
        """One line: why the process failed (its last error-looking stderr line)."""
        if self.timed_out:
            return self.stderr_tail.splitlines()[-1]
        lines = [ln.strip() for ln in self.stderr_tail.splitlines() if ln.strip()]
        errors = [ln for ln in lines if "Error" in ln or "error" in ln or "Exception" in ln]
        last = (errors or lines or ["no output"])[-1]
        return f"process exited with code {self.returncode}: {last}"[:300]


def run(cmd: Sequence[str], *, timeout: float | None = None, echo: bool = True, capture_stdout: bool = False,
        show_stdout: bool = False, env: dict[str, str] | None = None, tail_lines: int = 40) -> Finished:
    """Run ``cmd`` from the repository root, passing its stderr (progress bars) through as it comes.

    Only the last ``tail_lines`` lines of stderr are kept (a progress bar's carriage-return frames
    collapse to their last frame). After ``timeout`` seconds the child is killed and the result says so.
    Stdout is dropped unless captured (``capture_stdout``) or shared with this process (``show_stdout``).
    """
    tail: deque[str] = deque(maxlen=tail_lines)
    stdout = subprocess.PIPE if capture_stdout else None if show_stdout else subprocess.DEVNULL
    proc = subprocess.Popen(list(cmd), cwd=ROOT, env=child_env() if env is None else env, stdout=stdout,
                            stderr=subprocess.PIPE)
    assert proc.stderr is not None
    streams = {proc.stderr.fileno(): b""}
    if proc.stdout is not None:
        streams[proc.stdout.fileno()] = b""
    out = bytearray()
    deadline = time.monotonic() + timeout if timeout else None
    open_fds = set(streams)
    while open_fds:
        if deadline and time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            tail.append(f"timed out after {timeout:.0f} s: {' '.join(map(str, cmd))}")
            return Finished(-9, out.decode(errors="replace"), "\n".join(tail), timed_out=True)
        for fd in select.select(list(open_fds), [], [], 1.0)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                open_fds.discard(fd)
                continue
            if proc.stdout is not None and fd == proc.stdout.fileno():
                out += chunk
                continue
            if echo:
                sys.stderr.buffer.write(chunk)
                sys.stderr.flush()
            *lines, streams[fd] = (streams[fd] + chunk).split(b"\n")
            tail.extend(line.decode(errors="replace").rsplit("\r", 1)[-1] for line in lines)
    proc.wait()
    tail.append(streams[proc.stderr.fileno()].decode(errors="replace").rsplit("\r", 1)[-1])
    return Finished(proc.returncode, out.decode(errors="replace"), "\n".join(tail).strip("\n"))


class ChildError(RuntimeError):
    """A framework process failed; the message is the child's own ``error:`` line, else why it ended."""


def call(framework: str, module: str, *args: object, timeout: float | None = None, **env: str) -> str:
    """Run ``python -m <package>.<module> args...`` quietly in ``framework``'s own process; its stdout.

    The child's ``note:`` lines (e.g. which exporter ran) reach this process's stderr. A failure raises
    :class:`ChildError` with the child's last ``error:`` line (the one line its CLI prints for bad input),
    else with :meth:`Finished.reason`.
    """
    done = run(module_command(framework, module, *args), timeout=timeout, echo=False, capture_stdout=True,
               env=child_env(keras=framework == "keras", **env), tail_lines=1000)
    lines = done.stderr_tail.splitlines()
    if not done.ok:
        errors = [ln.removeprefix("error:").strip() for ln in lines if ln.startswith("error:")]
        raise ChildError(errors[-1] if errors and not done.timed_out else
                         f"{package(framework)}.{module}: {done.reason()}")
    for line in lines:
        if line.startswith("note:"):
            print(line, file=sys.stderr)
    return done.stdout
