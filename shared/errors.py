"""The one user-error path: raise :class:`UserError` anywhere, and the entry point prints it as one
``error:`` line and exits 2, as argparse does (docs/README.md, "Errors").

Every ``python -m`` command ends in ``sys.exit(errors.run(main))``; argument errors reach the same line
through :class:`ArgumentParser`. This module imports neither torch nor tensorflow.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

USER_ERROR = 2  # the exit status of every user error (argparse's own)


class UserError(Exception):
    """Bad input, or the machine saying no (an unwritable path, a full disk): one line for the user."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are :class:`UserError`: one line, exit 2, no usage block."""

    def error(self, message: str):
        raise UserError(message)


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """``main(argv)``'s exit status; a :class:`UserError` becomes one ``error:`` line on stderr and 2."""
    try:
        return main(argv) or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return USER_ERROR
