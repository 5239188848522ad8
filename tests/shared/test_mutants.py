"""The mutant list itself stays true to the code: every edit applies exactly once and names a real test.

Running the mutants is slow (``make test-mutants``); this fast check fails as soon as a refactor makes
a mutant's text stale, so the suite cannot silently turn into edits that no longer apply.
"""

import ast

import pytest

from tests.conftest import ROOT
from tests.mutants import MUTANTS, Mutant, check_applies, markdown


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_mutant_applies_once_and_names_a_real_test(mutant):
    mutated = check_applies(mutant)
    assert mutated != (ROOT / mutant.path).read_text()
    if mutant.path.endswith(".py"):
        ast.parse(mutated)  # the edit breaks a convention, not the syntax
    file, _, func = mutant.test.partition("::")
    assert func.split("[")[0] in defined_functions(ROOT / file)


def defined_functions(path) -> set[str]:
    """The function names a test module defines, or collects with ``from tests.x import *`` (a shared contract)."""
    tree = ast.parse(path.read_text())
    names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
            names |= defined_functions(ROOT / (node.module.replace(".", "/") + ".py"))
    return names


def test_the_list_covers_at_least_twelve_conventions():
    assert len(MUTANTS) >= 12 and len({m.name for m in MUTANTS}) == len(MUTANTS)


def test_stale_mutant_is_refused(tmp_path):
    (tmp_path / "x.py").write_text("a = 1\na = 1\n")
    with pytest.raises(ValueError, match="occurs 2 times"):
        check_applies(Mutant("dup", "", "x.py", "a = 1", "a = 2", "t.py::f"), tmp_path)
    with pytest.raises(ValueError, match="occurs 0 times"):
        check_applies(Mutant("gone", "", "x.py", "b = 1", "b = 2", "t.py::f"), tmp_path)


def test_report_marks_survivors():
    rows = [{"name": "a", "covers": "c", "path": "p.py", "test": "t::f", "killed": True, "seconds": 1.0,
             "detail": "1 failed"},
            {"name": "b", "covers": "c", "path": "p.py", "test": "t::g", "killed": False, "seconds": 2.0,
             "detail": "the test still passes"}]
    md = markdown(rows)
    assert "1 of 2 mutants killed" in md and "**survived** (the test still passes)" in md
    assert "Not run" not in md and "Not run (the run stopped before them): c, d." in markdown(rows, ["c", "d"])
