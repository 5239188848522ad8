"""The one framework-process runner: stderr tail, stdout capture, timeout, environment, bad framework."""

import sys

import pytest

from shared import process
from shared.errors import UserError


def test_run_captures_stdout_and_keeps_the_last_progress_frame_of_stderr():
    code = ("import sys; print('answer 42'); sys.stderr.write('step 1\\rstep 2\\rstep 3\\n'); "
            "sys.stderr.write('Error: boom\\n'); sys.exit(3)")
    done = process.run([sys.executable, "-c", code], capture_stdout=True, echo=False)
    assert done.stdout.strip() == "answer 42"
    assert done.returncode == 3 and not done.ok
    assert done.stderr_tail.splitlines() == ["step 3", "Error: boom"]
    assert done.reason() == "process exited with code 3: Error: boom"


def test_run_kills_a_child_past_its_timeout():
    done = process.run([sys.executable, "-c", "import time; time.sleep(60)"], timeout=1, echo=False)
    assert done.timed_out and done.returncode == -9
    assert done.reason().startswith("timed out after 1 s")


def test_child_env_carries_the_backend_and_the_repository_root(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    code = "import os, shared; print(os.environ['KERAS_BACKEND'], shared.__path__[0])"
    done = process.run([sys.executable, "-c", code], capture_stdout=True, echo=False)
    backend, path = done.stdout.split()
    assert backend == "jax" and path == str(process.ROOT / "shared")


def test_unknown_framework_is_one_line_with_the_choices():
    with pytest.raises(ValueError, match=r"unknown framework 'mxnet'; valid choices: torch, keras"):
        process.module_command("mxnet", "train")


def test_a_child_without_keras_runs_whatever_the_backend(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "mxnet")
    with pytest.raises(UserError, match=r"unknown Keras backend 'mxnet'"):
        process.child_env()
    env = process.child_env(keras=False, EXTRA="1")
    assert env["KERAS_BACKEND"] == "mxnet" and env["EXTRA"] == "1"  # passed through unchecked, as the user set it


def test_call_returns_stdout_forwards_notes_and_raises_the_childs_error_line(monkeypatch, capsys):
    code = ("import sys; print('out'); sys.stderr.write('noise\\nnote: used plan B\\n'); "
            "sys.exit(sys.stderr.write('error: bad value 7; valid choices: 1, 2\\n') and int(sys.argv[1]))")
    monkeypatch.setattr(process, "module_command", lambda fw, module, *a: [sys.executable, "-c", code, *map(str, a)])
    assert process.call("torch", "x", 0) == "out\n"
    assert capsys.readouterr().err == "note: used plan B\n"  # the notes reach the user, the noise does not
    with pytest.raises(process.ChildError, match=r"^bad value 7; valid choices: 1, 2$"):
        process.call("torch", "x", 3)
