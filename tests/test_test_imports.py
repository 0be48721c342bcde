"""Test modules import shared fixtures as ``tests.conftest``: pytest puts every test directory that
has a conftest.py on sys.path, so a bare ``from conftest import`` gets whichever directory came
first in the collection order (CI once failed so: another directory's conftest had no such name)."""

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
BARE = re.compile(r"^\s*(from conftest import|import conftest\b)", re.MULTILINE)


def test_no_bare_conftest_imports():
    offenders = [str(path.relative_to(TESTS)) for path in sorted(TESTS.rglob("*.py"))
                 if "node_modules" not in path.parts and BARE.search(path.read_text(errors="replace"))]
    assert not offenders, f"use 'from tests.conftest import …' in: {offenders}"
