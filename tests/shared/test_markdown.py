"""The Markdown table writer: escaping, alignment and shape errors."""

import pytest

from shared.markdown import table


def test_table_escapes_pipes_and_aligns_columns():
    lines = table(["model", "max|Δ|", "ok"], [["resnet20", 1.5e-6, "yes"], ["a|b", None, "no"]], align="lrc")
    assert lines == ["| model | max\\|Δ\\| | ok |", "|---|---:|:-:|", "| resnet20 | 1.5e-06 | yes |",
                     "| a\\|b |  | no |"]


def test_table_refuses_ragged_rows_and_bad_alignment():
    with pytest.raises(ValueError, match="a row has 1 cells for 2 columns"):
        table(["a", "b"], [["x"]])
    with pytest.raises(ValueError, match="align 'lx'"):
        table(["a", "b"], [], align="lx")
