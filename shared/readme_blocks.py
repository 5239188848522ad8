"""The README's generated blocks: each is the text a make target wrote (a results file, or ``make help``), copied
between ``<!-- begin NAME -->`` and ``<!-- end NAME -->`` by ``make readme``; a test fails when one is stale.

    python -m shared.readme_blocks [--check]
"""

from __future__ import annotations

import re
import subprocess
import sys

from shared import errors
from shared.io import atomic_write_text
from shared.process import ROOT

README = ROOT / "README.md"


def make_help() -> str:
    """``make help``'s list of targets, as a fenced block."""
    out = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return "```\n" + out.rstrip("\n") + "\n```"


def results_file(relative: str):
    """The text of a results file that a make target writes (its first line, a title, is left out)."""
    def read() -> str:
        path = ROOT / relative
        if not path.is_file():
            raise errors.UserError(f"{relative} is missing: the make target that writes it has not run")
        return "\n".join(path.read_text(encoding="utf-8").rstrip("\n").splitlines()[1:]).strip("\n")
    return read


# Each block and where its text comes from.
BLOCKS = {
    "make-help": make_help,
    "deploy-matrix": results_file("results/deploy/matrix.md"),
}


def blocks_in(text: str) -> list[str]:
    return re.findall(r"<!-- begin ([\w-]+) -->", text)


def filled(text: str) -> str:
    """``text`` with every generated block replaced by its source's text."""
    for name in blocks_in(text):
        if name not in BLOCKS:
            raise errors.UserError(f"README block {name!r} has no source; valid choices: {', '.join(BLOCKS)}")
        body = BLOCKS[name]()
        text = re.sub(rf"(<!-- begin {name} -->\n).*?(<!-- end {name} -->)",
                      lambda m, body=body: m.group(1) + body + "\n" + m.group(2), text, flags=re.S)
    return text


def main(argv: list[str] | None = None) -> int:
    p = errors.ArgumentParser(prog="python -m shared.readme_blocks", description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 when a block is stale, writing nothing")
    args = p.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    new = filled(text)
    if args.check:
        stale = [n for n in blocks_in(text) if filled_block(text, n) != filled_block(new, n)]
        print("README blocks: " + (f"stale: {', '.join(stale)}" if stale else "all current"))
        return 1 if stale else 0
    if new != text:
        atomic_write_text(README, new)
    print(f"README blocks {', '.join(blocks_in(text))}: {'rewritten' if new != text else 'already current'}")
    return 0


def filled_block(text: str, name: str) -> str:
    """The text between the markers of block ``name``."""
    match = re.search(rf"<!-- begin {name} -->\n(.*?)<!-- end {name} -->", text, flags=re.S)
    return match.group(1) if match else ""


if __name__ == "__main__":
    sys.exit(errors.run(main))
