"""The README is the user's page: its generated blocks are current (they come from files make targets write), it
stays within 250 lines, and every file it links exists."""

from __future__ import annotations

import re

from shared import readme_blocks
from shared.process import ROOT


def test_the_generated_blocks_are_current():
    text = readme_blocks.README.read_text(encoding="utf-8")
    assert {"make-help"} <= set(readme_blocks.blocks_in(text))
    for name in readme_blocks.blocks_in(text):
        assert readme_blocks.filled_block(text, name) == readme_blocks.filled_block(readme_blocks.filled(text), name), (
            f"README block {name} is stale: run make readme")


def test_a_stale_block_is_found():
    stale = "x\n<!-- begin make-help -->\nold\n<!-- end make-help -->\n"
    assert readme_blocks.filled_block(readme_blocks.filled(stale), "make-help").startswith("```\n  make help")


def test_the_readme_is_short_and_its_links_resolve():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    links = re.findall(r"\]\(((?!https?://|#)[^)#\s]+)", text)
    assert links and all((ROOT / link).exists() for link in links), [x for x in links if not (ROOT / x).exists()]
