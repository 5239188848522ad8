"""How many intra-op CPU threads a training run uses, recorded in ``config.json`` and restored on resume,
because results depend on the thread count (docs/training.md). Imports neither torch nor tensorflow.
"""

from __future__ import annotations

import sys
from typing import Any

from shared.errors import UserError
from shared.run_settings import RunSettings


def choose_threads(settings: RunSettings, default: int | None, say: bool = True) -> tuple[int | None, dict[str, Any]]:
    """(intra-op thread count to set, or None to keep the framework's default; the ``threads`` record).

    ``default`` is the framework's own count in this process (None where it cannot be changed once
    running, as XLA's CPU pool). ``--resume`` restores the count the run started with and says so in one
    line (``say``: only the first of several processes says it); a different explicit ``--threads`` is refused.
    """
    asked = settings.threads
    if asked is not None and asked < 1:
        raise UserError(f"--threads must be >= 1; got {asked}")
    if default is None:  # the framework sizes its pool at start-up: nothing to set or restore here
        return None, {"requested": asked, "intra_op": None}
    saved = (settings.saved or {}).get("threads")
    if saved is None or saved.get("intra_op") is None:  # a new run (or a resumed one that recorded none)
        return asked, {"requested": asked, "intra_op": asked or default}
    count = int(saved["intra_op"])
    requested = saved.get("requested", saved.get("workers"))  # "workers": the record's name before 2026-12
    if asked is not None and asked != count:
        raise UserError(f"--threads {asked}: {settings.run_dir} started with {count} intra-op thread(s) and "
                        f"resumes with them (results depend on the thread count); leave --threads out or give "
                        f"--threads {count}")
    record = {"requested": requested, "intra_op": count}
    if requested is None and default == count:
        if say:
            print(f"note: resuming with the framework's default threading ({count} intra-op threads), as the "
                  "run started", file=sys.stderr)
        return None, record
    how = (f"--threads {count}" if requested is not None
           else f"the default where it started; this machine's default is {default}")
    if say:
        print(f"note: resuming with {count} intra-op thread(s) ({how}), as the run started", file=sys.stderr)
    return count, record
