"""The wheel holds every module: setup.py's find_packages only sees directories with an
__init__.py, so one missing leaves that package out of a regular (non-editable) install, which
the rootless virtualenv (hack/rootless-env) and the daemon image use."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_source_directory_is_a_regular_package():
    missing = []
    for root in ("buildkitpy", "solver", "frontend"):
        for directory in sorted((REPO / root).rglob("*")):
            if not directory.is_dir() or "__pycache__" in directory.parts:
                continue
            if any(directory.glob("*.py")) and not (directory / "__init__.py").exists():
                missing.append(str(directory.relative_to(REPO)))
    assert not missing, f"directories without __init__.py (left out of the wheel): {missing}"
