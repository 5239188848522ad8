"""``python -m`` entry points started from a parent that has already imported their framework.

A test that runs an entry point in a subprocess pays for importing its framework every time (torch and
torchvision 5 s on a 2-core CPU, Keras on TensorFlow 8 s), often more than the command itself. ``run_module``
(tests/conftest.py) asks a preloaded parent instead: a process that imported the framework once and then forks a
child per command. The child is a process of its own, as ``subprocess.run`` would start: its own pid, exit status,
signals and files. It takes the command's working directory, environment, stdin, stdout and stderr, and runs the
module as ``python -m`` does (``runpy``, ``__name__ == "__main__"``, ``sys.argv``), and the interpreter exits as
it would: exit status, traceback, atexit handlers, the whole of Python's finalization (only the C++ destructors of
the libraries the parent loaded are skipped: :func:`skip_inherited_destructors`). Only the import is shared, and
nothing of the project's own code is imported before the fork: the parent holds third-party frameworks only.

One parent runs per framework and per value of the environment variables that act when a framework is imported
(``KERAS_BACKEND``, ``PYTHON*``, ``TF_*``, ``XLA_FLAGS``, ...): a command with other values gets a parent of
its own. A module outside ``pytorch_impl`` and ``keras_impl`` gets a parent that has imported numpy and ONNX only.

The project's own tools start framework processes too (``export.parity``, an ablation's cells, ``make
deploy-check``), each through ``shared.process.run``. In the test process and in every forked command,
``shared.process`` starts a ``python -m`` command the same way, through :func:`popen`: a broker (a socket named in
``RESNET_TEST_PRELOAD_BROKER``, served by ``make test``'s runner for all its pytest processes, else by the test
process) says which parent serves it. A process that a test
started in a session of its own (to kill its process group) starts its children as plain subprocesses, so that
they stay in its group. ``run_code`` forks ``python -c`` scripts the same way, from the parent of the framework the
script imports.

A child shares its parent's hash seed and memory layout. The runs that a test compares to see that a result does
not depend on the process never come from one parent: ``make test``'s pytest processes (whose in-process runs are
compared with forked ones) and the runs a test kills are forked from a second parent of their framework
(:func:`popen`'s ``apart``). Before it forks, a parent freezes what it holds (``gc.freeze``), so that a child's
garbage collections do not walk, and copy, the whole inherited heap. ``RESNET_TEST_PRELOAD=0`` turns all of this
off.

    python tests/preload.py SOCKET FRAMEWORK     # the parent; it ends when its stdin closes
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import io
import json
import locale
import os
import re
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

# What each parent imports before it forks: the framework, nothing of the project.
PRELOAD = {"torch": ("torch", "torchvision", "numpy"), "keras": ("keras", "numpy"), "plain": ("numpy", "onnx")}
# ... and where this torch has them, the modules its ONNX export imports when first called (2.5 s in each export)
PRELOAD_IF_PRESENT = {"torch": ("torch.export._trace", "torch.onnx._internal.exporter._compat",
                                "onnxscript.function_libs.torch_lib.ops")}
# Environment variables read when those frameworks or the interpreter start: a parent serves one set of values.
AT_IMPORT = ("PYTHON", "KERAS_", "TF_", "XLA_", "JAX_", "CUDA_", "OMP_", "MKL_", "OPENBLAS_", "TORCH", "LD_", "GLIBC_")
# ... but for these, which are read where they are used: torch.hub reads TORCH_HOME at each download, inductor its
# cache folder when it compiles (and sets the variable, to its default, in the process that asked), Keras the
# distribution's variables in keras.distribution.initialize()
WHEN_USED = ("TORCH_HOME", "TORCHINDUCTOR_CACHE_DIR", "KERAS_DISTRIBUTION_")
# ... and for what a parent does not import: these frameworks read theirs when a child imports them. Keras imports
# JAX on every backend, TensorFlow and torch only as its backend.
NOT_IMPORTED = {"torch": ("KERAS_", "TF_", "XLA_", "JAX_"),
                "plain": ("KERAS_", "TF_", "XLA_", "JAX_", "TORCH", "CUDA_"),
                "keras-tensorflow": ("TORCH",), "keras-jax": ("TF_", "TORCH"), "keras-torch": ("TF_",)}
# `python -m tests.no_tensorflow MODULE ...` (and the others) run MODULE: the framework is MODULE's
WRAPPERS = {"tests.no_tensorflow": 0, "tests.no_weight_decay": 0, "tests.cpu_replicas": 1}
# Test helpers whose first argument names the framework they import ("torch", "keras", "keras-jax", "neutral", ...)
FRAMEWORK_ARGUMENT = ("tests.entry_worker", "tests.shared.dump_batches")
# What a `python -c` script imports, by its statements (`import a, b as c, torch`, `from keras_impl import x`): a
# script that imports one framework gets that framework's parent
IMPORTS = {framework: re.compile(rf"(^|;)\s*(import\s+([\w.]+(\s+as\s+\w+)?\s*,\s*)*({names})\b|from\s+({names})\b)",
                                 re.M) for framework, names in
           (("torch", "torch|torchvision|pytorch_impl"), ("keras", "keras|tensorflow|keras_impl"))}
MESSAGE = 1 << 20
BROKER = "RESNET_TEST_PRELOAD_BROKER"  # "<socket>:<session id>" of the test process that serves the parents


def framework_of(module: str, args: list[str]) -> str | None:
    """The framework whose parent can start ``python -m module args``; None: a plain subprocess."""
    if module in WRAPPERS and len(args) > WRAPPERS[module]:
        module = args[WRAPPERS[module]]
    if module in FRAMEWORK_ARGUMENT and args:
        return next((f for f in ("torch", "keras") if args[0].startswith(f)), None)
    if module == "tests.export_helpers" and "--framework" in args[:-1]:  # the framework it builds the model in
        module = {"torch": "pytorch_impl.", "keras": "keras_impl."}.get(args[args.index("--framework") + 1], "")
    for package, framework in (("pytorch_impl.", "torch"), ("keras_impl.", "keras")):
        if module.startswith(package):
            return framework
    return None


def framework_of_code(code: str) -> str | None:
    """The framework whose parent can run ``python -c code``: the one it imports; None for neither or both."""
    named = [framework for framework, imports in IMPORTS.items() if imports.search(code)]
    return named[0] if len(named) == 1 else None


def env_key(env: dict[str, str], cwd: str, framework: str = "keras") -> tuple[tuple[str, str], ...]:
    """What a ``framework`` parent must share with a command: the variables read when it imported what it holds.

    Two kinds of path entry change nothing, so they do not count: the command's own folder in ``PYTHONPATH``
    (``shared.process.child_env`` puts it there; ``python -m`` and ``-c`` already look there first), and a folder
    of ``LD_LIBRARY_PATH`` that does not exist (importing OpenCV adds one, for the process's subprocesses)."""
    kind = f"keras-{env.get('KERAS_BACKEND', 'tensorflow')}" if framework == "keras" else framework
    key = {}
    for name, value in env.items():
        if not name.startswith(AT_IMPORT) or name.startswith((*NOT_IMPORTED.get(kind, ()), *WHEN_USED)):
            continue
        if name in ("PYTHONPATH", "LD_LIBRARY_PATH"):
            keep = os.path.isdir if name == "LD_LIBRARY_PATH" else lambda e: os.path.abspath(e) != os.path.abspath(cwd)
            value = os.pathsep.join(e for e in value.split(os.pathsep) if e and keep(e))
            if not value:
                continue
        key[name] = value
    return tuple(sorted(key.items()))


class Forked:
    """A command running in a child of a preloaded parent, with what ``subprocess.Popen`` offers of it: ``pid``,
    ``poll``, ``wait``, ``kill``, ``send_signal``, ``returncode`` and the pipes asked for."""

    def __init__(self, conn: socket.socket, args: list[str], stdin=None, stdout=None, stderr=None,
                 text: bool = False) -> None:
        if text:  # as subprocess.Popen(text=True) opens them: the locale's encoding, universal newlines
            encoding = locale.getpreferredencoding(False)
            stdin = stdin and io.TextIOWrapper(io.BufferedWriter(stdin), encoding, write_through=True)
            stdout, stderr = (f and io.TextIOWrapper(io.BufferedReader(f), encoding) for f in (stdout, stderr))
        self.conn, self.args, self.stdin, self.stdout, self.stderr = conn, args, stdin, stdout, stderr
        self.pid: int = _reply(conn, args)["pid"]
        self.returncode: int | None = None

    def communicate(self, input=None, timeout: float | None = None) -> tuple:
        """As ``Popen.communicate``: ``input`` to stdin, then stdout and stderr read to their end, and the exit."""
        if self.stdin:
            with contextlib.suppress(BrokenPipeError):
                if input:
                    self.stdin.write(input)
                self.stdin.close()
        read = {}
        readers = [threading.Thread(target=lambda n, f: read.update({n: f.read()}), args=(name, f), daemon=True)
                   for name, f in (("stdout", self.stdout), ("stderr", self.stderr)) if f]
        deadline = None if timeout is None else time.monotonic() + timeout
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(None if deadline is None else max(deadline - time.monotonic(), 0))
            if reader.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(None if deadline is None else max(deadline - time.monotonic(), 0))
        return read.get("stdout"), read.get("stderr")

    def poll(self) -> int | None:
        return self._wait(0.0)

    def wait(self, timeout: float | None = None) -> int:
        if self._wait(timeout) is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def _wait(self, timeout: float | None) -> int | None:
        if self.returncode is None:
            self.conn.settimeout(timeout)
            try:
                status = _reply(self.conn, self.args)["status"]
            except (TimeoutError, BlockingIOError):
                return None
            self.returncode = os.waitstatus_to_exitcode(status)
            self.conn.close()
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(9)


def command_of(cmd: list[str]) -> dict | None:
    """What a parent runs for ``cmd``: ``python -m module args`` or ``python -c code args``; None for anything else."""
    if len(cmd) > 2 and cmd[0] == sys.executable and cmd[1] in ("-m", "-c"):
        return {"module" if cmd[1] == "-m" else "code": cmd[2], "args": cmd[3:]}
    return None


def framework_for(command: dict) -> str:
    """Which parent runs ``command`` (:func:`command_of`): its framework's, else the plain one."""
    if "code" in command:
        return framework_of_code(command["code"]) or "plain"
    return framework_of(command["module"], command["args"]) or "plain"


def start(path: str, cmd: list[str], command: dict, *, cwd: str, env: dict[str, str], fds: list[int],
          session: bool = False, **pipes) -> Forked:
    """Fork ``command`` (:func:`command_of`) from the parent at ``path``, with ``fds`` as its stdin, stdout and stderr;
    ``session``: in a session (and process group) of its own, as ``Popen(start_new_session=True)`` starts it."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn.connect(path)
    request = json.dumps({**command, "cwd": cwd, "env": env, "session": session}).encode()
    socket.send_fds(conn, [request], fds)
    return Forked(conn, cmd, **pipes)


class Parents:
    """The preloaded parents of this test process, started when first needed, ended with it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.starting: dict[tuple, threading.Lock] = {}  # one per parent: two parents start side by side
        self.parents: dict[tuple, tuple[subprocess.Popen, str] | None] = {}
        self.folder = Path(tempfile.mkdtemp(prefix="preload-"))

    def socket_for(self, framework: str, env: dict[str, str], cwd: str, apart: bool = False) -> str | None:
        """The socket of a ready parent for this framework and environment; None if it could not start. ``apart``:
        a second parent for them (see :func:`popen`)."""
        key = (framework, env_key(env, cwd, framework), cwd, apart)
        with self.lock:
            starting = self.starting.setdefault(key, threading.Lock())
            path = str(self.folder / f"{len(self.starting)}.sock")
        with starting:
            if key not in self.parents:
                proc = subprocess.Popen([sys.executable, __file__, path, framework], cwd=cwd, env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                ready = proc.stdout.readline().strip() == b"ready" if proc.stdout else False
                if not ready:
                    proc.kill()
                    proc.wait()
                with self.lock:
                    self.parents[key] = (proc, path) if ready else None
            parent = self.parents[key]
        if parent is None or parent[0].poll() is not None:
            return None
        return parent[1]

    def run(self, cmd: list[str], module: str, args: list[str], *, cwd: str, env: dict[str, str],
            timeout: float | None, framework: str | None = None) -> subprocess.CompletedProcess | None:
        """``subprocess.run(cmd, capture_output=True, text=True)`` as a child of one of these parents; None where no
        parent serves this command (the caller starts a plain subprocess)."""
        command = {"module": module, "args": args}
        path = self.socket_for(framework or framework_for(command), env, cwd)
        return None if path is None else run_forked(path, cmd, command, cwd=cwd, env=env, timeout=timeout)

    def share(self) -> None:
        """Serve these parents to the commands this process starts and to their own subprocesses: a broker socket
        named in ``RESNET_TEST_PRELOAD_BROKER``, and ``shared.process`` starting its commands through it."""
        path = str(self.folder / "broker.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener.bind(path)
        listener.listen(64)
        threading.Thread(target=self._broker, args=(listener,), daemon=True).start()
        os.environ[BROKER] = f"{path}:{os.getsid(0)}"
        install()

    def _broker(self, listener: socket.socket) -> None:
        def answer(conn: socket.socket) -> None:
            with conn:
                ask = json.loads(conn.recv(MESSAGE))
                path = self.socket_for(ask["framework"], ask["env"], ask["cwd"], ask["apart"])
                conn.send(json.dumps({"path": path}).encode())

        while True:
            conn, _ = listener.accept()
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    def close(self) -> None:
        for parent in self.parents.values():
            if parent is not None:
                parent[0].stdin.close()
                parent[0].wait()
        self.parents.clear()
        shutil.rmtree(self.folder, ignore_errors=True)


def _reply(conn: socket.socket, cmd: list[str]) -> dict:
    message = conn.recv(MESSAGE)
    if not message:  # the parent ended (killed, or out of memory) without an answer
        raise RuntimeError(f"the preloaded parent ended before it answered for: {' '.join(cmd)}")
    return json.loads(message)


def run_forked(path: str, cmd: list[str], command: dict, *, cwd: str, env: dict[str, str],
               timeout: float | None) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True)`` as a child of the parent at ``path``."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, open(os.devnull, "rb") as stdin:
        child = start(path, cmd, command, cwd=cwd, env=env, fds=[stdin.fileno(), out.fileno(), err.fileno()])
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            raise
        out.seek(0)
        err.seek(0)
        text = lambda f: f.read().decode(errors="replace")  # noqa: E731
        return subprocess.CompletedProcess(cmd, child.returncode, text(out), text(err))


def run(cmd: list[str], *, cwd: str, env: dict[str, str], timeout: float | None) -> subprocess.CompletedProcess | None:
    """``subprocess.run(cmd, capture_output=True, text=True)`` for ``cmd = [python, "-m" or "-c", ...]``, forked from
    the parent the broker names; None where none serves it (the caller starts a plain subprocess)."""
    command = command_of(cmd)
    path = ask_broker(framework_for(command), env, cwd) if command else None
    return None if path is None else run_forked(path, cmd, command, cwd=cwd, env=env, timeout=timeout)


def ask_broker(framework: str, env: dict[str, str], cwd: str, apart: bool = False) -> str | None:
    """The socket of the parent that the test process's broker names for this command; None: start it plainly."""
    path, _, session = os.environ.get(BROKER, "").rpartition(":")
    if not path or os.getsid(0) != int(session):  # a test runs this process in a session of its own: kills its group
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as conn:
            conn.connect(path)
            conn.send(json.dumps({"framework": framework, "env": env, "cwd": cwd, "apart": apart}).encode())
            return json.loads(conn.recv(MESSAGE))["path"]
    except OSError:  # the test process has ended
        return None


def popen(args, *, stdin=None, stdout=None, stderr=None, cwd=None, env=None, text=False, start_new_session=False,
          framework: str | None = None, apart: bool = False, **kwargs):
    """``subprocess.Popen`` as ``shared.process`` and the tests call it, where a ``python -m`` command is forked from
    the parent the broker names (with the pipes and session asked for); any other command (``shared.process``'s own
    tests start ``python -c`` scripts), or where no parent serves, a plain one.

    ``framework``: the parent's, where the command's name does not say it (tests/run.py's pytest processes).
    ``apart``: from a second parent, not the one that ``run_module``'s commands come from. A forked child shares its
    parent's hash seed and memory layout, so two runs that a test compares, to see that a result does not depend on
    the process, come from different parents: the pytest processes (whose in-process runs are compared with
    forked ones) and the runs a test kills (compared with the uninterrupted run and its resume) start apart."""
    cmd = [str(a) for a in args] if isinstance(args, list | tuple) else []
    command = command_of(cmd)
    if not kwargs and command and "module" in command:
        cwd, env = str(cwd or os.getcwd()), dict(os.environ if env is None else env)
        path = ask_broker(framework or framework_for(command), env, cwd, apart)
        if path is not None:
            ours, theirs = [], []
            for spec, inherit in ((stdin, 0), (stdout, 1), (stderr, 2)):
                if spec == subprocess.PIPE:  # we keep the read end of stdout's and stderr's, the write end of stdin's
                    r, w = os.pipe()
                    ours.append(os.fdopen(w, "wb", buffering=0) if inherit == 0 else os.fdopen(r, "rb", buffering=0))
                    theirs.append(r if inherit == 0 else w)
                elif spec == subprocess.DEVNULL:
                    ours.append(None)
                    theirs.append(os.open(os.devnull, os.O_RDWR))
                elif spec == subprocess.STDOUT:  # stderr to wherever stdout goes
                    ours.append(None)
                    theirs.append(os.dup(theirs[1]))
                else:
                    ours.append(None)
                    theirs.append(os.dup(inherit if spec is None else spec if isinstance(spec, int) else spec.fileno()))
            try:
                return start(path, cmd, command, cwd=cwd, env=env, fds=theirs, session=start_new_session,
                             stdin=ours[0], stdout=ours[1], stderr=ours[2], text=text)
            finally:
                for fd in theirs:
                    os.close(fd)
    return subprocess.Popen(args, stdin=stdin, stdout=stdout, stderr=stderr, cwd=cwd, env=env, text=text,
                            start_new_session=start_new_session, **kwargs)


def install() -> None:
    """``shared.process`` of this process starts its commands through :func:`popen` (a command run from outside the
    repository has none)."""
    try:
        from shared import process
    except ImportError:
        return

    process.subprocess = types.SimpleNamespace(**{**vars(subprocess), "Popen": popen})


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
                    for other in sel.get_map().values():  # the other commands' pidfds and connections
                        if isinstance(other.data, tuple):
                            os.close(other.fd)
                            other.data[0].close()
                    sel.close()
                    listener.close()
                    conn.close()
                    for target, fd in enumerate(fds):
                        os.dup2(fd, target)
                        os.close(fd)
                    if request.get("session"):
                        os.setsid()
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


def skip_inherited_destructors() -> None:
    """This child ends as ``python`` does, all of Python's finalization included (exit handlers, ``Exception
    ignored`` lines, its files flushed, the exit status), and then C's buffered output is flushed too, but the C++
    destructors of the libraries its parent loaded do not run: they free, page by page, what the parent built, and
    so copy it. A forked torch command took 0.48 s of CPU time to end, 0.21 s this way; tests/shared/
    test_preload.py checks that it ends as a fresh ``python -m`` does. On glibc only; elsewhere the child ends as
    python does."""
    try:
        libc = ctypes.CDLL(None)
        on_exit, fcloseall, _exit = libc.on_exit, libc.fcloseall, libc._exit
    except (OSError, AttributeError):
        return
    # Python calls these with no argument once it has finalized, just before it calls exit(): C's buffers flushed
    ctypes.pythonapi.Py_AtExit(ctypes.cast(fcloseall, ctypes.c_void_p))
    # exit() then runs its handlers last registered first: this one, _exit(status), ends the process before the
    # destructors that the parent's libraries registered when they were loaded (on_exit passes (status, arg); the
    # status is _exit's one argument, in the same register on x86-64 and AArch64)
    on_exit(ctypes.cast(_exit, ctypes.c_void_p), None)


def become(request: dict) -> None:
    """This child takes the command's environment, folder and arguments, as ``python -m`` would set them."""
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.path[0] = "" if "code" in request else request["cwd"]  # as `python -c` and `python -m` set it
    sys.argv = [request.get("module", "-c"), *request["args"]]
    if BROKER in os.environ:  # its own framework commands come from the parents too
        install()
    skip_inherited_destructors()


if __name__ == "__main__":
    sock, framework = sys.argv[1], sys.argv[2]
    sys.path[0] = os.getcwd()  # not this script's folder (tests/torch would shadow torch), as under python -m
    for name in PRELOAD[framework]:
        __import__(name)
    for name in PRELOAD_IF_PRESENT.get(framework, ()):
        try:
            __import__(name)
        except ImportError:  # another torch: its export imports what it needs when it runs
            pass
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow" and "tensorflow" in sys.modules:
        sys.exit("tensorflow was imported on another Keras backend")  # tests.no_tensorflow would see it
    # What the parent holds is never garbage in a child, so the cyclic collector leaves it alone there: without
    # this, a child's collections (and its last one, at exit) walk the whole inherited heap and copy every page of
    # it. A command that does nothing took 1.4 s of CPU to end this way, 0.3 s frozen. (What the gc module's
    # documentation advises before fork() without exec(); a child's own objects are collected as before.)
    gc.collect()
    gc.freeze()
    request = serve(sock)
    become(request)
    if "code" in request:  # as `python -c` runs it: in a fresh __main__ module
        main = sys.modules["__main__"] = types.ModuleType("__main__")
        exec(compile(request["code"], "<string>", "exec"), main.__dict__)
    else:
        import runpy

        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
