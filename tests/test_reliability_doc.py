"""docs/reliability.md names, in every row of its guarantee tables, the tests that hold the
guarantee (tests/<path>.py::<test function>); each named test must exist, read from the test
file with `ast` (a module-level function or a method of a class in it)."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from tests.paths import REPO

DOC = REPO / "docs" / "reliability.md"
HEADER = "| Guarantee | Held by |"
REFERENCE = re.compile(r"(tests/[\w/]+\.py)::(\w+)")


def guarantee_rows(text: str) -> Iterator[tuple[int, str, str]]:
    """(line number, guarantee, held-by cell) of every body row of every guarantee table."""
    in_table = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip() == HEADER:
            in_table = True
            continue
        if not line.startswith("|"):
            in_table = False
            continue
        if in_table and not re.fullmatch(r"\|(-+\|)+", line.strip()):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            assert len(cells) == 2, f"{DOC.name}:{number}: a row of two cells, got {cells}"
            yield number, cells[0], cells[1]


def defined_tests(path: Path) -> set[str]:
    """The test functions a test file defines, at module level and in its classes."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in tree.body:
        bodies = node.body if isinstance(node, ast.ClassDef) else [node]
        found |= {
            f.name
            for f in bodies
            if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef) and f.name.startswith("test")
        }
    return found


def missing_tests(text: str, root: Path) -> list[str]:
    """One line per row without a named test and per named test that does not exist."""
    problems = []
    for number, guarantee, held_by in guarantee_rows(text):
        refs = REFERENCE.findall(held_by)
        if not guarantee or not refs:
            problems.append(
                f"line {number}: a guarantee and at least one test::name, got {held_by!r}"
            )
        # every entry of the cell is a full reference, not a bare file or a test id with params
        leftover = REFERENCE.sub("", held_by).replace(",", "").strip()
        if leftover:
            problems.append(f"line {number}: not a tests/...py::test_name reference: {leftover!r}")
        for file, name in refs:
            path = root / file
            if not path.is_file():
                problems.append(f"line {number}: {file} does not exist")
            elif name not in defined_tests(path):
                problems.append(f"line {number}: {file} has no test {name}")
    return problems


def test_every_guarantee_names_tests_that_exist():
    text = DOC.read_text()
    rows = list(guarantee_rows(text))
    assert len(rows) >= 40, f"only {len(rows)} guarantee rows parsed from {DOC}"
    problems = missing_tests(text, REPO)
    assert not problems, "\n".join(problems)


def test_the_check_fails_on_a_renamed_test_and_a_row_without_one(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text("def test_kept():\n    pass\n")
    doc = "\n".join([
        HEADER, "|---|---|",
        "| kept | tests/test_a.py::test_kept |",
        "| renamed | tests/test_a.py::test_gone |",
        "| no file | tests/test_b.py::test_kept |",
        "| bare file | tests/test_a.py |",
        "",
        "| Other | table |", "|---|---|", "| not | checked |",
    ])  # fmt: skip
    assert missing_tests(doc, tmp_path) == [
        "line 4: tests/test_a.py has no test test_gone",
        "line 5: tests/test_b.py does not exist",
        "line 6: a guarantee and at least one test::name, got 'tests/test_a.py'",
        "line 6: not a tests/...py::test_name reference: 'tests/test_a.py'",
    ]
