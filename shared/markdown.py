"""The one Markdown table writer every report uses (bench, compare, parity, ablation, export, data; docs/README.md)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

ALIGN = {"l": "---", "r": "---:", "c": ":-:"}


def cell(value: object) -> str:
    """A value as a table cell: ``|`` escaped, newlines folded, None as an empty cell."""
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str | None = None) -> list[str]:
    """The lines of a GitHub Markdown table. ``align`` has one letter per column: l, r or c (default l)."""
    align = align or "l" * len(header)
    if len(align) != len(header) or set(align) - set(ALIGN):
        raise ValueError(f"align {align!r} must have one of {'/'.join(ALIGN)} per column ({len(header)} columns)")
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join(ALIGN[a] for a in align) + "|"]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a row has {len(row)} cells for {len(header)} columns: {list(row)!r}")
        lines.append("| " + " | ".join(cell(c) for c in row) + " |")
    return lines
