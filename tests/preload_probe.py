"""A command for tests/shared/test_preload.py: it says how it was started, then ends as asked.

    python -m tests.preload_probe SCRATCH MODE     # MODE: an exit status, "raise", or "sleep" (60 s)
"""

import os
import sys
import time

scratch, mode = sys.argv[1], sys.argv[2]
with open(os.path.join(scratch, f"pid-{mode}"), "w") as f:
    f.write(str(os.getpid()))
print("argv", sys.argv[1:], "name", __name__, "cwd", os.getcwd(), "path0", sys.path[0] == os.getcwd())
print("env", os.environ.get("PROBE_VALUE"), file=sys.stderr)
if mode == "raise":
    raise ValueError("probe failed")
if mode == "sleep":
    time.sleep(60)
sys.exit(int(mode))
