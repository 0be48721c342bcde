"""Resolving ``--chown=name:group`` against a tree's own /etc/passwd and /etc/group."""

from __future__ import annotations

from pathlib import Path

from buildkitpy.errors import SolveError
from buildkitpy.solver.pathutil import secure_join


def _read_db(root: Path, name: str) -> list[list[str]]:
    try:
        text = secure_join(root, name).read_text(errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def lookup_user(root: Path | None, name: str) -> tuple[int, int]:
    """(uid, primary gid) of ``name`` in ``root``'s /etc/passwd; numeric names are ids. A name the
    file does not hold is root (0, 0), as BuildKit's file op resolves it (``COPY --chown=ghost``
    builds); only a missing tree to look in is an error."""
    if name.isdigit():
        return int(name), int(name)
    if root is None:
        raise SolveError(f"unable to find user {name}: no mount to read /etc/passwd from")
    for fields in _read_db(root, "/etc/passwd"):
        if len(fields) >= 4 and fields[0] == name and fields[2].isdigit() and fields[3].isdigit():
            return int(fields[2]), int(fields[3])
    return 0, 0


def lookup_group(root: Path | None, name: str) -> int:
    """gid of ``name`` in ``root``'s /etc/group; an unknown name is 0, as for users."""
    if name.isdigit():
        return int(name)
    if root is None:
        raise SolveError(f"unable to find group {name}: no mount to read /etc/group from")
    for fields in _read_db(root, "/etc/group"):
        if len(fields) >= 3 and fields[0] == name and fields[2].isdigit():
            return int(fields[2])
    return 0
