"""The preloaded parent of tests/preload.py starts a command as ``subprocess.run`` would: the same exit status,
output, environment, folder and arguments as a fresh ``python -m``, in a process of its own. The commands that
``shared.process`` starts for the project's tools come from the parents too, and end as plain subprocesses do."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import time

import pytest

from shared import process
from tests import preload
from tests.preload import BROKER, Forked, Parents, framework_of, framework_of_code

PROBE = '''
import os, sys
print("argv", sys.argv[1:], "name", __name__, "cwd", os.getcwd() == sys.argv[1], "path0", sys.path[0] == os.getcwd())
print("env", os.environ.get("PROBE_VALUE"), "pid", os.getpid() != int(sys.argv[2]), file=sys.stderr)
if sys.argv[3] == "raise":
    raise ValueError("probe failed")
if sys.argv[3] == "sleep":
    import pathlib, time; pathlib.Path(sys.argv[1], "pid").write_text(str(os.getpid())); time.sleep(60)
sys.exit(int(sys.argv[3]))
'''


@pytest.fixture(scope="module")
def parents():
    p = Parents()
    yield p
    p.close()


@pytest.mark.parametrize("how", ["0", "3", "raise"])
def test_a_forked_command_is_what_a_fresh_python_m_gives(parents, tmp_path, how):
    (tmp_path / "probe_mod.py").write_text(PROBE)
    env = {**os.environ, "PROBE_VALUE": f"v-{how}"}
    args = [str(tmp_path), str(os.getpid()), how]
    cmd = [sys.executable, "-m", "probe_mod", *args]
    fresh = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    forked = parents.run(cmd, "probe_mod", args, cwd=str(tmp_path), env=env, timeout=60, framework="plain")
    assert forked is not None
    assert forked.returncode == fresh.returncode == {"0": 0, "3": 3, "raise": 1}[how]
    assert forked.stdout == fresh.stdout and "True" in fresh.stdout and "False" not in fresh.stdout
    if how == "raise":  # the traceback's frames differ (the parent's own), not how it ends
        assert forked.stderr.splitlines()[-1] == fresh.stderr.splitlines()[-1] == "ValueError: probe failed"
        assert "Traceback" in forked.stderr
    else:
        assert forked.stderr == fresh.stderr == f"env v-{how} pid True\n"


END = """
import atexit, ctypes, sys
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fputs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
libc.fputs(b"written by C, never closed", libc.fopen(sys.argv[1].encode(), b"w"))
atexit.register(print, "atexit ran")
class Noisy:
    def __del__(self):
        raise ValueError("raised in a destructor at exit")
noisy = Noisy()
print("from Python")
sys.exit(3)
"""


def test_a_forked_command_ends_as_a_fresh_python_does(parents, tmp_path):
    """A child skips only the C++ destructors of the libraries its parent loaded: its exit handlers, what Python
    prints while it finalizes, the files C left open and its exit status are a fresh ``python``'s."""
    (tmp_path / "end_mod.py").write_text(END)
    ends = {}
    for how in ("fresh", "forked"):
        args = [str(tmp_path / f"{how}.txt")]
        cmd = [sys.executable, "-m", "end_mod", *args]
        ends[how] = (subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60) if how == "fresh"
                     else parents.run(cmd, "end_mod", args, cwd=str(tmp_path), env=dict(os.environ), timeout=60,
                                      framework="plain"))
        err = ends[how].stderr.splitlines()  # the object's address differs, and the parent's source lines
        ends[how] = (ends[how].returncode, ends[how].stdout, err[0].split(" at 0x")[0], err[-1],
                     (tmp_path / f"{how}.txt").read_text())
    assert ends["forked"] == ends["fresh"] == (
        3, "from Python\natexit ran\n", "Exception ignored in: <function Noisy.__del__",
        "ValueError: raised in a destructor at exit", "written by C, never closed")


@pytest.mark.parametrize("skipped", [False, True])
def test_what_the_parent_registered_for_exit_is_skipped(skipped):
    """The libraries loaded before the fork register their C++ destructors with exit(); here a handler that aborts
    stands for them. A child that skips them ends with its own status; a process that does not, aborts."""
    if not hasattr(ctypes.CDLL(None), "on_exit"):  # not glibc: a child ends as python does, destructors and all
        pytest.skip("the C library has no on_exit")
    code = ("import ctypes, sys; from tests import preload; libc = ctypes.CDLL(None); "
            "libc.on_exit(ctypes.cast(libc.abort, ctypes.c_void_p), None); "
            f"{'preload.skip_inherited_destructors(); ' if skipped else ''}print('ended'); sys.exit(3)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=process.ROOT, capture_output=True, text=True, timeout=60)
    assert proc.stdout == "ended\n" and proc.returncode == (3 if skipped else -6)


def test_a_command_past_its_timeout_is_killed(parents, tmp_path):
    (tmp_path / "probe_mod.py").write_text(PROBE)
    args = [str(tmp_path), str(os.getpid()), "sleep"]
    start = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        parents.run([sys.executable, "-m", "probe_mod", *args], "probe_mod", args, cwd=str(tmp_path),
                    env=dict(os.environ), timeout=2, framework="plain")
    assert time.monotonic() - start < 30
    pid = int((tmp_path / "pid").read_text())  # the child, which its parent reaps once it is killed
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}"), "the command still runs after its timeout"


def test_a_parent_is_shared_by_commands_that_differ_only_where_it_imported_nothing():
    from tests.preload import env_key

    jax = {"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "OMP_NUM_THREADS": "1"}
    tf = {"KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1"}
    assert env_key(jax, "/r", "torch") == env_key(tf, "/r", "torch") == (("OMP_NUM_THREADS", "1"),)
    assert env_key(jax, "/r", "keras") != env_key(tf, "/r", "keras")  # Keras reads them when the parent imports it
    assert env_key({**tf, "TORCH_LOGS": "+dynamo"}, "/r", "plain") == env_key(jax, "/r", "plain")
    assert env_key({"TORCH_LOGS": "+dynamo"}, "/r", "torch") != env_key({}, "/r", "torch")
    # read where they are used, not at import: torch.hub's and inductor's folders, Keras' distribution
    used = {"TORCH_HOME": "/h", "TORCHINDUCTOR_CACHE_DIR": "/i", "KERAS_DISTRIBUTION_NUM_PROCESSES": "2"}
    assert env_key(used, "/r", "keras") == env_key({}, "/r", "keras") == env_key(used, "/r", "torch") == ()
    assert env_key({"KERAS_BACKEND": "jax"}, "/r", "keras") == (("KERAS_BACKEND", "jax"),)
    # TensorFlow's variables count for a Keras parent on TensorFlow only, torch's on torch only; JAX's on every
    # backend, as Keras imports JAX on each (the next test checks the packages themselves)
    assert env_key({**jax, "TF_CPP_MIN_LOG_LEVEL": "3"}, "/r", "keras") == env_key(jax, "/r", "keras")
    assert env_key({**tf, "TF_CPP_MIN_LOG_LEVEL": "0"}, "/r", "keras") != env_key(tf, "/r", "keras")
    assert env_key({**tf, "TORCH_LOGS": "+dynamo"}, "/r", "keras") == env_key(tf, "/r", "keras")
    torch_backend = {"KERAS_BACKEND": "torch", "TF_CPP_MIN_LOG_LEVEL": "3", "TORCH_LOGS": "+dynamo",
                     "JAX_ENABLE_X64": "1", "XLA_FLAGS": "--x"}
    assert env_key(torch_backend, "/r", "keras") == (("JAX_ENABLE_X64", "1"), ("KERAS_BACKEND", "torch"),
                                                     ("TORCH_LOGS", "+dynamo"), ("XLA_FLAGS", "--x"))
    assert env_key({**tf, "JAX_ENABLE_X64": "1"}, "/r", "keras") != env_key(tf, "/r", "keras")


# What each kind of parent's command imports (run in a child of that parent), and the variables each package reads
KINDS = {**{f"keras-{b}": ("keras", {"KERAS_BACKEND": b}) for b in ("tensorflow", "jax", "torch")},
         "torch": ("torch", {}), "plain": ("", {})}
READ_BY = {"KERAS_": ("keras",), "TF_": ("tensorflow",), "JAX_": ("jax",), "XLA_": ("jax", "tensorflow"),
           "TORCH": ("torch",), "CUDA_": ("torch", "jax", "tensorflow")}


@pytest.mark.parametrize("kind", KINDS)
def test_a_parent_ignores_the_variables_of_exactly_the_packages_it_never_imports(kind):
    """The rule above, against the packages themselves: a command in a child of each kind of parent lists what is
    imported (Keras imports JAX on every backend, TensorFlow or torch only as its backend), and the parent ignores
    a family of variables exactly when no package that reads it is there."""
    from tests.conftest import run_code
    from tests.preload import NOT_IMPORTED

    module, env = KINDS[kind]
    packages = ("keras", "tensorflow", "jax", "torch")
    proc = run_code(f"import sys{', ' + module if module else ''}; print(*(m in sys.modules for m in {packages!r}))",
                    env=env)
    imported = {m for m, there in zip(packages, proc.stdout.split()) if there == "True"}
    ignored = {prefix for prefix in READ_BY if prefix in NOT_IMPORTED[kind]}
    assert ignored == {prefix for prefix, readers in READ_BY.items() if not imported & set(readers)}, imported


def test_path_entries_that_change_nothing_do_not_start_a_parent(tmp_path):
    from tests.preload import env_key

    lib, root, site = tmp_path / "lib", str(tmp_path / "root"), str(tmp_path / "site")
    lib.mkdir()
    # the command's folder in PYTHONPATH: `python -m` looks there first anyway; any other folder counts
    assert env_key({"PYTHONPATH": f"{root}:{site}"}, root, "torch") == (("PYTHONPATH", site),)
    assert env_key({"PYTHONPATH": root}, root, "torch") == ()
    assert env_key({"PYTHONPATH": site}, root, "torch") != env_key({}, root, "torch")
    # a library folder that does not exist (what importing cv2 adds) finds no library; one that exists counts
    missing = str(tmp_path / "cv2" / ".." / ".." / "lib64")
    assert env_key({"LD_LIBRARY_PATH": missing}, root, "plain") == env_key({}, root, "plain") == ()
    assert env_key({"LD_LIBRARY_PATH": f"{missing}:{lib}"}, root, "plain") == (("LD_LIBRARY_PATH", str(lib)),)


def test_which_commands_a_parent_serves():
    assert framework_of("pytorch_impl.train", []) == "torch"
    assert framework_of("keras_impl.export", ["onnx"]) == "keras"
    assert framework_of("tests.no_tensorflow", ["keras_impl.train", "--epochs", "1"]) == "keras"
    assert framework_of("tests.cpu_replicas", ["2", "keras_impl.train"]) == "keras"
    assert framework_of("tests.export_helpers", ["--framework", "torch", "--model", "resnet8"]) == "torch"
    assert framework_of("export.parity", ["--run", "x"]) is None  # it starts each framework itself
    assert framework_of("shared.ablation", []) is None
    assert framework_of("tests.entry_worker", ["torch"]) == "torch"
    assert framework_of("tests.shared.dump_batches", ["keras-jax", "[]"]) == "keras"
    assert framework_of("tests.entry_worker", ["neutral"]) is None
    # `python -c`: the framework the script imports; neither or both: the plain parent, which imports its own
    assert framework_of_code("import sys, numpy as np, torch; m = torch.export.load(sys.argv[1])") == "torch"
    assert framework_of_code("\nimport sys\nfrom keras_impl.optim import TorchSGD\n") == "keras"
    assert framework_of_code("import sys; print('torch')") is None
    assert framework_of_code("import sys; import torch.nn as nn") == "torch"
    assert framework_of_code("import torch\nimport keras\n") is None


CODE = """
import os, sys
print("argv", sys.argv, "name", __name__, "cwd", os.getcwd() == sys.argv[1], "path", repr(sys.path[0]))
print("env", os.environ.get("PROBE_VALUE"), file=sys.stderr)
if sys.argv[2] == "raise":
    raise ValueError("probe failed")
sys.exit(int(sys.argv[2]))
"""


@pytest.mark.parametrize("how", ["0", "3", "raise"])
def test_a_forked_script_is_what_a_fresh_python_c_gives(tmp_path, how):
    """``run_code`` (tests/conftest.py) runs ``python -c`` scripts forked too: in a fresh ``__main__``, with the
    script's arguments, folder and environment, ending with the same status and output."""
    _through_the_parents()
    cmd = [sys.executable, "-c", CODE, str(tmp_path), how]
    env = {**os.environ, "PROBE_VALUE": f"v-{how}"}
    fresh = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    forked = preload.run(cmd, cwd=str(tmp_path), env=env, timeout=60)
    assert forked is not None
    assert forked.returncode == fresh.returncode == {"0": 0, "3": 3, "raise": 1}[how]
    assert forked.stdout == fresh.stdout and "cwd True path ''" in fresh.stdout
    assert f"'-c', '{tmp_path}', '{how}'] name __main__" in fresh.stdout
    assert forked.stderr.splitlines()[-1] == fresh.stderr.splitlines()[-1] == (
        "ValueError: probe failed" if how == "raise" else f"env v-{how}")


def test_a_command_in_a_session_of_its_own_is_forked_and_killed_with_its_group(tmp_path):
    """The runs that tests kill as a job (tests/train_helpers.py) start forked, as ``Popen(start_new_session=True)``
    starts them: a session and group of their own, so ``killpg`` ends them with what they started."""
    _through_the_parents()
    cmd = [sys.executable, "-m", "tests.preload_probe", str(tmp_path), "sleep"]
    child = preload.popen(cmd, cwd=process.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True)
    assert isinstance(child, Forked)
    deadline = time.monotonic() + 30
    while not (tmp_path / "pid-sleep").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert child.pid == int((tmp_path / "pid-sleep").read_text())
    assert os.getsid(child.pid) == os.getpgid(child.pid) == child.pid != os.getsid(0)
    assert child.poll() is None
    os.killpg(child.pid, 9)
    out, err = child.communicate(timeout=30)
    assert child.returncode == -9 and out.startswith("argv ") and isinstance(err, str)


def test_runs_compared_for_process_independence_come_from_different_parents(tmp_path):
    """Two children of one parent share its hash seed; a run a test kills, or a pytest process, is forked apart, so
    that it and the runs it is compared with differ as two fresh processes do."""
    _through_the_parents()
    if os.environ.get("PYTHONHASHSEED", "random") != "random":
        pytest.skip("PYTHONHASHSEED is fixed: every process hashes alike")
    cmd = [sys.executable, "-m", "tests.preload_probe", str(tmp_path), "hash"]

    def hashed(**apart) -> str:
        child = preload.popen(cmd, cwd=process.ROOT, stdout=subprocess.PIPE, text=True, **apart)
        assert isinstance(child, Forked)
        return child.communicate(timeout=60)[0].split()[-1]

    assert hashed() == hashed() != hashed(apart=True) == hashed(apart=True)


def test_communicate_writes_stdin_and_reads_text_as_popen_does(tmp_path):
    _through_the_parents()
    cmd = [sys.executable, "-m", "tests.preload_probe", str(tmp_path), "echo"]
    child = preload.popen(cmd, cwd=process.ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    fresh = subprocess.Popen(cmd, cwd=process.ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    lines = "".join(f"line {i} \u00e9\r\n" for i in range(5000))  # more than a pipe holds
    assert isinstance(child, Forked) and child.communicate(lines, timeout=60) == fresh.communicate(lines, timeout=60)
    assert child.returncode == fresh.returncode == 0


# The project's own tools: shared.process starts their `python -m` commands from the parents too -------------------
def _through_the_parents() -> None:
    if BROKER not in os.environ:
        pytest.skip("RESNET_TEST_PRELOAD=0: commands start as plain subprocesses")


@pytest.mark.parametrize("mode", ["0", "3", "raise"])
def test_a_tools_command_is_forked_and_ends_as_a_plain_subprocess_does(tmp_path, monkeypatch, mode):
    _through_the_parents()
    cmd = [sys.executable, "-m", "tests.preload_probe", str(tmp_path), mode]
    env = process.child_env(keras=False, PROBE_VALUE=f"v-{mode}")
    child = process.subprocess.Popen(cmd, cwd=process.ROOT, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
    assert isinstance(child, Forked) and child.wait(60) == {"0": 0, "3": 3, "raise": 1}[mode]
    assert child.pid == int((tmp_path / f"pid-{mode}").read_text())
    forked = process.run(cmd, echo=False, capture_stdout=True, env=env)
    monkeypatch.setattr(process, "subprocess", subprocess)
    fresh = process.run(cmd, echo=False, capture_stdout=True, env=env)
    assert forked.returncode == fresh.returncode == child.returncode
    assert forked.stdout == fresh.stdout and f"cwd {process.ROOT} path0 True" in fresh.stdout
    assert forked.stderr_tail.splitlines()[-1] == fresh.stderr_tail.splitlines()[-1] == (
        "ValueError: probe failed" if mode == "raise" else f"env v-{mode}")


def test_a_tools_command_past_its_timeout_is_killed(tmp_path):
    _through_the_parents()
    start = time.monotonic()
    done = process.run([sys.executable, "-m", "tests.preload_probe", str(tmp_path), "sleep"], timeout=3, echo=False)
    assert done.timed_out and done.returncode == -9 and time.monotonic() - start < 30
    pid = int((tmp_path / "pid-sleep").read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}"), "the command still runs after its timeout"


def test_a_process_in_a_session_of_its_own_starts_plain_subprocesses(tmp_path):
    """A test that kills a process group starts it in a session of its own: what that process starts must stay in
    its group, so it is a plain subprocess, not a child of a parent outside the group."""
    _through_the_parents()
    code = ("import sys; from tests.preload import install; install(); from shared import process; "
            "p = process.subprocess.Popen([sys.executable, '-m', 'tests.preload_probe', sys.argv[1], '0'], "
            "cwd=process.ROOT, stdout=process.subprocess.DEVNULL); p.wait(); print(type(p).__name__, p.returncode)")
    for own_session, kind in ((False, "Forked"), (True, "Popen")):
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=process.ROOT, capture_output=True,
                             text=True, timeout=120, start_new_session=own_session)
        assert out.stdout.split() == [kind, "0"], out.stderr[-2000:]


def test_make_test_runs_every_test_file_once_in_its_suites_order(tmp_path):
    """The pieces of tests/run.py: each suite's files exactly once, never two frameworks' suites in one process,
    each piece in the suite's order, longest first by the recorded times."""
    import json

    from tests.run import SUITES, units

    files = {s: sorted(str(p.relative_to(process.ROOT)) for p in (process.ROOT / "tests" / s).glob("test_*.py"))
             for s in SUITES}
    times = tmp_path / "times.json"
    times.write_text(json.dumps({"file_s": {"tests/shared/test_compare.py": 1000.0}}))
    planned = units({"shared": 3, "torch": 1, "keras": 2}, times)
    assert planned[0][1][0] == "tests/shared/test_compare.py"  # the piece holding the longest file starts first
    seen = {s: [] for s in SUITES}
    for name, paths in planned:
        suite = name.split("-")[0]
        assert paths == [f"tests/{suite}"] or (paths == sorted(paths) and all(
            p.startswith(f"tests/{suite}/") for p in paths))
        seen[suite] += files[suite] if paths == [f"tests/{suite}"] else paths
    assert {s: sorted(v) for s, v in seen.items()} == files
    assert [n for n, _ in planned if n.startswith("keras")] and len(planned) == 6
