"""A command for tests/shared/test_preload.py: it says how it was started, then ends as asked.

    python -m tests.preload_probe SCRATCH MODE   # MODE: an exit status, raise, sleep, echo or hash
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
if mode == "hash":  # this interpreter's string hashing, which a forked child shares with its parent
    print("hash", hash("resnet"))
    sys.exit(0)
if mode == "echo":  # stdin back to stdout, counted on stderr
    data = sys.stdin.read()
    sys.stdout.write(data)
    print(len(data.splitlines()), file=sys.stderr)
    sys.exit(0)
sys.exit(int(mode))
