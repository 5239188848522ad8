"""Count the host synchronisations of every training step of ``pytorch_impl.train`` on CUDA (docs/gpu.md).

    python -m pytorch_impl.syncs --json-out syncs.json -- --model resnet20 --dataset synthetic_cifar --iters 200 ...

Runs the trainer's own ``main`` (its flags after ``--``) under ``torch.cuda.set_sync_debug_mode("warn")`` and
counts the warnings between consecutive optimizer steps.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from shared import errors
from shared.io import atomic_write_json

SYNC_WARNING = "synchronizing CUDA operation"  # the text of sync debug mode's warning


class SyncCounter:
    """Counts sync debug mode's warnings per optimizer step while active (``with SyncCounter() as c``).

    ``per_step[k]`` is what happened after step ``k - 1`` finished, up to the end of step ``k`` (so a read
    right after a step counts in the next one); ``after_last`` is what followed the last step. Other
    warnings pass through untouched.
    """

    def __init__(self) -> None:
        self.per_step: list[int] = []
        self.after_last = 0
        self._pending = 0

    def _step_done(self, *_args: Any) -> None:
        self.per_step.append(self._pending)
        self._pending = 0

    def __enter__(self) -> SyncCounter:
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.filterwarnings("always", message=f".*{SYNC_WARNING}")
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if SYNC_WARNING in str(message):
                self._pending += 1
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        self._hook = register_optimizer_step_post_hook(self._step_done)
        return self

    def __exit__(self, *exc: object) -> None:
        self._hook.remove()
        self._warnings.__exit__(*exc)
        self.after_last, self._pending = self._pending, 0


def count_syncs(train_argv: list[str]) -> dict[str, Any]:
    """Run ``pytorch_impl.train`` on ``train_argv`` under sync debug mode "warn"; every step's count."""
    from pytorch_impl import train

    if not torch.cuda.is_available():
        raise errors.UserError("counting host synchronisations needs CUDA (torch.cuda.set_sync_debug_mode); "
                               "torch.cuda.is_available() is False here")
    torch.cuda.init()
    with SyncCounter() as counter:
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train.main(train_argv)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return {"per_step": counter.per_step, "after_last_step": counter.after_last,
            "check_every": train.CHECK_EVERY, "train_args": train_argv}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    ours, train_argv = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = errors.ArgumentParser(prog="python -m pytorch_impl.syncs", description=__doc__.split("\n\n")[0])
    p.add_argument("--json-out", required=True, help="where to write every step's count (JSON)")
    args = p.parse_args(ours)
    atomic_write_json(args.json_out, count_syncs(train_argv))
    return 0


if __name__ == "__main__":
    sys.exit(errors.run(main))
