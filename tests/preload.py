"""``python -m`` entry points started from a parent that has already imported their framework.

A test that runs an entry point in a subprocess pays for importing its framework every time (torch and
torchvision 5 s on a 2-core CPU, Keras on TensorFlow 8 s), often more than the command itself. ``run_module``
(tests/conftest.py) asks a preloaded parent instead: a process that imported the framework once and then forks a
child per command. The child is a process of its own, as ``subprocess.run`` would start: its own pid, exit status,
signals and files. It takes the command's working directory, environment, stdin, stdout and stderr, and runs the
module as ``python -m`` does (``runpy``, ``__name__ == "__main__"``, ``sys.argv``), and the interpreter exits as
it would: exit status, traceback, atexit handlers. Only the import is shared, and nothing of the project's own
code is imported before the fork: the parent holds third-party frameworks only.

One parent runs per framework and per value of the environment variables that act when a framework is imported
(``KERAS_BACKEND``, ``PYTHON*``, ``TF_*``, ``XLA_FLAGS``, ...): a command with other values gets a parent of
its own. A module outside ``pytorch_impl`` and ``keras_impl`` runs as a plain subprocess, and so does every
command when ``RESNET_TEST_PRELOAD=0``.

    python tests/preload.py SOCKET FRAMEWORK     # the parent; it ends when its stdin closes
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

# What each parent imports before it forks: the framework, nothing of the project.
PRELOAD = {"torch": ("torch", "torchvision", "numpy"), "keras": ("keras", "numpy"), "numpy": ("numpy",)}
# Environment variables read when those frameworks or the interpreter start: a parent serves one set of values.
AT_IMPORT = ("PYTHON", "KERAS_", "TF_", "XLA_", "JAX_", "CUDA_", "OMP_", "MKL_", "OPENBLAS_", "TORCH", "LD_")
# `python -m tests.no_tensorflow MODULE ...` (and the others) run MODULE: the framework is MODULE's
WRAPPERS = {"tests.no_tensorflow": 0, "tests.no_weight_decay": 0, "tests.cpu_replicas": 1}
MESSAGE = 1 << 20


def framework_of(module: str, args: list[str]) -> str | None:
    """The framework whose parent can start ``python -m module args``; None: a plain subprocess."""
    if module in WRAPPERS and len(args) > WRAPPERS[module]:
        module = args[WRAPPERS[module]]
    if module == "tests.export_helpers" and "--framework" in args[:-1]:  # the framework it builds the model in
        module = {"torch": "pytorch_impl.", "keras": "keras_impl."}.get(args[args.index("--framework") + 1], "")
    for package, framework in (("pytorch_impl.", "torch"), ("keras_impl.", "keras")):
        if module.startswith(package):
            return framework
    return None


def env_key(env: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in env.items() if k.startswith(AT_IMPORT)))


class Parents:
    """The preloaded parents of this test process, started when first needed, ended with it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.parents: dict[tuple, tuple[subprocess.Popen, str] | None] = {}
        self.folder: Path | None = None

    def socket_for(self, framework: str, env: dict[str, str], cwd: str) -> str | None:
        """The socket of a ready parent for this framework and environment; None if it could not start."""
        key = (framework, env_key(env), cwd)
        with self.lock:
            if key not in self.parents:
                self.folder = self.folder or Path(tempfile.mkdtemp(prefix="preload-"))
                path = str(self.folder / f"{len(self.parents)}.sock")
                proc = subprocess.Popen([sys.executable, __file__, path, framework], cwd=cwd, env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                ready = proc.stdout.readline().strip() == b"ready" if proc.stdout else False
                self.parents[key] = (proc, path) if ready else None
                if not ready:
                    proc.kill()
                    proc.wait()
            parent = self.parents[key]
        if parent is None or parent[0].poll() is not None:
            return None
        return parent[1]

    def run(self, cmd: list[str], module: str, args: list[str], *, cwd: str, env: dict[str, str],
            timeout: float | None, framework: str | None = None) -> subprocess.CompletedProcess | None:
        """``subprocess.run(cmd, capture_output=True, text=True)`` as a child of a preloaded parent; None where no
        parent serves this command (the caller starts a plain subprocess)."""
        framework = framework or framework_of(module, args)
        path = self.socket_for(framework, env, cwd) if framework else None
        if path is None:
            return None
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
                open(os.devnull, "rb") as stdin, socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as conn:
            conn.connect(path)
            request = json.dumps({"module": module, "args": args, "cwd": cwd, "env": env}).encode()
            socket.send_fds(conn, [request], [stdin.fileno(), out.fileno(), err.fileno()])
            pid = _reply(conn, cmd)["pid"]
            conn.settimeout(timeout)
            try:
                status = _reply(conn, cmd)["status"]
            except TimeoutError:
                os.kill(pid, 9)
                raise subprocess.TimeoutExpired(cmd, timeout) from None
            out.seek(0)
            err.seek(0)
            text = lambda f: f.read().decode(errors="replace")  # noqa: E731
            return subprocess.CompletedProcess(cmd, os.waitstatus_to_exitcode(status), text(out), text(err))

    def close(self) -> None:
        for parent in self.parents.values():
            if parent is not None:
                parent[0].stdin.close()
                parent[0].wait()
        self.parents.clear()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _reply(conn: socket.socket, cmd: list[str]) -> dict:
    message = conn.recv(MESSAGE)
    if not message:  # the parent ended (killed, or out of memory) without an answer
        raise RuntimeError(f"the preloaded parent ended before it answered for: {' '.join(cmd)}")
    return json.loads(message)


def serve(path: str) -> dict:
    """Fork a child per request until stdin closes; returns (in the child only) the request it is to run."""
    sel = selectors.DefaultSelector()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen()
    sel.register(listener, selectors.EVENT_READ, "accept")
    sel.register(sys.stdin, selectors.EVENT_READ, "stdin")
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            if key.data == "stdin":  # the test process has ended
                sys.exit(0)
            if key.data == "accept":
                conn, _ = listener.accept()
                message, fds, _, _ = socket.recv_fds(conn, MESSAGE, 3)
                request = json.loads(message)
                pid = os.fork()
                if pid == 0:
                    sel.close()
                    listener.close()
                    conn.close()
                    for target, fd in enumerate(fds):
                        os.dup2(fd, target)
                        os.close(fd)
                    return request
                for fd in fds:
                    os.close(fd)
                conn.send(json.dumps({"pid": pid}).encode())
                sel.register(os.pidfd_open(pid), selectors.EVENT_READ, (conn, pid))
            else:  # a child has ended: its status to whoever asked for it
                conn, pid = key.data
                sel.unregister(key.fd)
                os.close(key.fd)
                _, status = os.waitpid(pid, 0)
                try:
                    conn.send(json.dumps({"status": status}).encode())
                except OSError:
                    pass  # the caller gave up (a timeout) and killed it
                conn.close()


def become(request: dict) -> None:
    """This child takes the command's environment, folder and arguments, as ``python -m`` would set them."""
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.path[0] = request["cwd"]
    sys.argv = [request["module"], *request["args"]]


if __name__ == "__main__":
    sock, framework = sys.argv[1], sys.argv[2]
    sys.path[0] = os.getcwd()  # not this script's folder (tests/torch would shadow torch), as under python -m
    for name in PRELOAD[framework]:
        __import__(name)
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow" and "tensorflow" in sys.modules:
        sys.exit("tensorflow was imported on another Keras backend")  # tests.no_tensorflow would see it
    request = serve(sock)
    become(request)
    import runpy

    runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
