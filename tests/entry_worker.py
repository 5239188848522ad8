"""Run ``python -m`` entry points one after another in this one process, as ``python -m`` runs them
(``runpy``, ``__name__ == "__main__"``), so a framework is imported once for all of them.

    python -m tests.entry_worker [FRAMEWORK] < jobs.jsonl      # {"module": ..., "args": [...]} per line

FRAMEWORK (``torch``, ``keras``, ``neutral``) names the framework its jobs import, so that a preloaded parent of
that framework starts it (tests/preload.py); the worker itself does not read it.

Prints one JSON line per job: the exit status (``"traceback"`` when an exception escaped, ``"timeout"`` when a
job ran past ``LIMIT`` seconds: a bad argument should stop a command at once) and what it wrote to ``sys.stderr``.
"""

from __future__ import annotations

import contextlib
import io
import json
import runpy
import signal
import sys
import traceback
import warnings

if __name__ == "__main__":
    # An artifact of running many entry points in one process: a module an earlier one imported is found again.
    warnings.filterwarnings("ignore", message=".*found in sys.modules after import of package", category=RuntimeWarning)
    LIMIT = 120

    def too_long(signum, frame):
        raise TimeoutError(f"still running after {LIMIT} s")

    signal.signal(signal.SIGALRM, too_long)
    for line in sys.stdin:
        job = json.loads(line)
        err = io.StringIO()
        sys.argv = [job["module"], *job["args"]]
        code: int | str = 0
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            signal.alarm(LIMIT)
            try:
                runpy.run_module(job["module"], run_name="__main__", alter_sys=True)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except TimeoutError as e:
                code = "timeout"
                err.write(str(e))
            except BaseException:  # noqa: BLE001 what escaped is the finding
                code = "traceback"
                err.write(traceback.format_exc())
            finally:
                signal.alarm(0)
        print(json.dumps({"module": job["module"], "code": code, "stderr": err.getvalue()}), flush=True)
