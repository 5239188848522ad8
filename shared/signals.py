"""How training stops on a signal (docs/training.md, "When the machine says no").

The first SIGTERM (a spot machine's or a batch scheduler's notice) asks the loop to stop after its current step and
write a resumable checkpoint; the process then exits 143. A second SIGTERM, or SIGINT, stops it at once, wherever
it is (:class:`StopNow`): atomic writes leave the last checkpoint whole. :func:`run_processes` starts the processes
of one run and passes each signal it gets on to them once. Imports neither torch nor tensorflow.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

STOPPED = 128 + signal.SIGTERM  # 143: what a shell reports for a job that SIGTERM ended
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopNow(BaseException):
    """A second SIGTERM, or SIGINT: raised where the main thread is, so that ``finally`` blocks and atomic writes
    clean up on the way out. Not an ``Exception``: nothing that handles errors catches it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(f"stopped at once by {self.name}")

    @property
    def status(self) -> int:
        """The exit status a shell reports for this signal (143 for SIGTERM, 130 for SIGINT)."""
        return 128 + self.signum

    def said(self, what: str, say: bool = True) -> int:
        """Print ``stopped at once by <signal>; <what>`` (when ``say``); the exit status."""
        if say:
            print(f"stopped at once by {self.name}; {what}", file=sys.stderr, flush=True)
        return self.status


class StopRequest:
    """The stop signals of a training process, while the block is open: ``requested`` turns True at the first
    SIGTERM (the loop reads it after a step; no system call, no device sync); a second SIGTERM or a SIGINT raises
    :class:`StopNow`. Outside the main thread (a test's worker thread) it installs nothing."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def _handle(self, signum: int, frame: object) -> None:
        if signum == signal.SIGTERM and self.signal is None:
            self.signal = signal.Signals(signum).name
            return
        raise StopNow(signum)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def rearm(self) -> None:
        """Install the handlers again, over any that native code put in their place since :meth:`__enter__`
        (JAX's distributed client installs its own SIGTERM handler, which would swallow the stop)."""
        if self._previous:
            for s in STOP_SIGNALS:
                signal.signal(s, self._handle)

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


def _die_with_parent(libc: ctypes.CDLL | None, parent: int) -> None:
    """In a child before it runs (Linux): SIGKILL it when this process dies, as a job killed as a whole would."""
    if libc is not None:
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the launcher died before prctl
        os._exit(1)


def _status(returncode: int) -> int:
    """A child's exit status as a shell reports it (128 + N when signal N ended it)."""
    return returncode if returncode >= 0 else 128 - returncode


def free_port() -> int:
    """A TCP port on this machine that is free now: the rendezvous of the processes :func:`run_processes` starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_processes(commands: Sequence[tuple[list[str], dict[str, str]]], grace: float = 10.0) -> int:
    """Run the processes of one training run (``(argv, env)`` each, the first one the owner that speaks for the
    run) to their end: the owner's exit status if it failed, else the first failure's, else 0.

    Each child runs in its own session and dies with this process (SIGKILL), and every SIGTERM or SIGINT this
    process gets is passed on to each child once, so a scheduler's SIGTERM to the whole job is one request to
    each, not two. Once a child has ended with an error, the others get ``grace`` seconds to end too (a user
    error ends them all, the owner saying it), then SIGKILL: they would wait for it in a collective, where no
    signal handler runs. A child that stopped on a signal has passed the last collective of its stop, so the
    others get longer (six times ``grace``) to finish theirs.
    """
    libc = ctypes.CDLL(None) if sys.platform.startswith("linux") else None
    parent = os.getpid()
    procs = [subprocess.Popen(argv, env=env, start_new_session=True,
                              preexec_fn=lambda: _die_with_parent(libc, parent)) for argv, env in commands]

    def forward(signum: int, frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in STOP_SIGNALS}
    failures: dict[int, int] = {}  # pid -> exit status of the children that ended with one on their own, in order
    deadline, killed = None, False

    def record() -> None:
        if not killed:
            failures.update({p.pid: _status(p.returncode) for p in procs if p.returncode and p.pid not in failures})

    try:
        while running := [p for p in procs if p.poll() is None]:
            record()
            if failures and deadline is None:
                stopped = all(f in (STOPPED, 128 + signal.SIGINT) for f in failures.values())
                deadline = time.monotonic() + (6 * grace if stopped else grace)
            if deadline is not None and time.monotonic() > deadline:
                killed = True
                for p in running:
                    p.kill()
            time.sleep(0.1)
        record()
        return failures.get(procs[0].pid) or next(iter(failures.values()), 0)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
