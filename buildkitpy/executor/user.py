"""Resolving a Dockerfile ``USER`` string to uid, gid and supplementary gids inside a rootfs.

Accepted forms: ``""`` (root), ``name``, ``uid``, ``uid:gid``, ``name:group``, ``uid:group``,
``name:gid``. ``uid:gid`` with both numeric never reads any file. Names come from the rootfs's own
``/etc/passwd`` and ``/etc/group`` (opened through ``secure_join``). A numeric uid that has no
passwd entry is still valid (gid 0). Supplementary groups are the groups listing the user by name,
unless a group was given explicitly; the primary gid always comes first in the returned list.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from buildkitpy.errors import InvalidArgument
from buildkitpy.snapshot.fs import secure_join

MAX_USER_FILE_BYTES = 10 << 20


class UserNotFound(InvalidArgument):
    pass


@dataclass(frozen=True)
class ResolvedUser:
    uid: int
    gid: int
    additional_gids: tuple[int, ...]


def _parse_id(value: str) -> int | None:
    if value == "root":
        return 0
    if value.isdigit():
        number = int(value)
        if number < 2**32:
            return number
    return None


def _read_db(rootfs: Path, name: str) -> list[list[str]]:
    """Colon-separated entries of ``/etc/<name>``; missing file = no entries."""
    path = secure_join(rootfs, f"/etc/{name}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return []
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise InvalidArgument(f"/etc/{name} in the container is not a regular file")
        data = f.read(MAX_USER_FILE_BYTES + 1)
    if len(data) > MAX_USER_FILE_BYTES:
        raise InvalidArgument(f"/etc/{name} in the container exceeds {MAX_USER_FILE_BYTES} bytes")
    entries = []
    for line in data.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            entries.append(line.split(":"))
    return entries


def resolve_user(rootfs: Path, user: str) -> ResolvedUser:
    is_default = user == ""
    spec = user or "0"
    user_part, sep, group_part = spec.partition(":")
    if sep and (uid := _parse_id(user_part)) is not None and (gid := _parse_id(group_part)) is not None:
        return ResolvedUser(uid, gid, (gid,))

    uid, gid = 0, 0
    matched_name: str | None = None
    passwd = _read_db(rootfs, "passwd")
    wanted_uid = _parse_id(user_part)
    for entry in passwd:
        if len(entry) < 4 or not entry[2].isdigit() or not entry[3].isdigit():
            continue
        if entry[0] == user_part or (wanted_uid is not None and int(entry[2]) == wanted_uid):
            matched_name, uid, gid = entry[0], int(entry[2]), int(entry[3])
            break
    else:
        if wanted_uid is None:
            if is_default:
                return ResolvedUser(0, 0, (0,))
            raise UserNotFound(f"unable to find user {user_part}: no matching entries in passwd file")
        uid = wanted_uid

    supplementary: list[int] = []
    if group_part or matched_name is not None:
        wanted_gid = _parse_id(group_part) if group_part else None
        groups = []
        for entry in _read_db(rootfs, "group"):
            if len(entry) < 3 or not entry[2].isdigit():
                continue
            members = entry[3].split(",") if len(entry) > 3 and entry[3] else []
            if group_part:
                if entry[0] == group_part or (wanted_gid is not None and int(entry[2]) == wanted_gid):
                    groups.append(int(entry[2]))
            elif matched_name in members:
                groups.append(int(entry[2]))
        if group_part:
            if groups:
                gid = groups[0]
            elif wanted_gid is not None:
                gid = wanted_gid
            else:
                raise UserNotFound(f"unable to find group {group_part}: no matching entries in group file")
        else:
            supplementary = groups

    ordered = [gid] + [g for g in supplementary if g != gid]
    return ResolvedUser(uid, gid, tuple(dict.fromkeys(ordered)))
