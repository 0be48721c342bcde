"""What a layer's lower layers show at a path, read from the layer directories without mounting.

An overlay upper dir holds more than the layer's changes: a directory is copied up whenever
anything below it changes (or a mount point is created and removed in it), and a file is copied up
on a metadata-only touch. BuildKit's overlay differ therefore compares each upper entry with the
lower view and leaves out what is unchanged (``sameDirent``: same type, mode, owner, device and
``security.capability``; for non-directories also the same size and mtime, and the same content
or link target when both mtimes are whole seconds). ``LowerView`` answers the lookups that needs:
the entry a path resolves to through the lower layers (top first, honouring whiteouts, opaque
directories and non-directories that hide everything below them) and the merged listing of a
lower directory.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from buildkitpy.snapshot.layer import is_opaque, is_whiteout

CAPABILITY_XATTR = "security.capability"
_CHUNK = 1 << 16


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _opaque(path: str) -> bool:
    return is_opaque(path)


def _capability(path: str) -> bytes | None:
    try:
        return os.getxattr(path, CAPABILITY_XATTR, follow_symlinks=False)
    except OSError:
        return None


def _same_content(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            ca, cb = fa.read(_CHUNK), fb.read(_CHUNK)
            if ca != cb:
                return False
            if not ca:
                return True


def same_entry(lower_path: str, lower: os.stat_result, upper_path: str, upper: os.stat_result) -> bool:
    """True when the upper entry records no change over the lower one (BuildKit's sameDirent)."""
    if (lower.st_mode, lower.st_uid, lower.st_gid, lower.st_rdev) != (
            upper.st_mode, upper.st_uid, upper.st_gid, upper.st_rdev):
        return False
    if _capability(lower_path) != _capability(upper_path):
        return False
    if stat.S_ISDIR(lower.st_mode):
        return True
    if lower.st_size != upper.st_size:
        return False
    lower_s, lower_ns = divmod(lower.st_mtime_ns, 1_000_000_000)
    upper_s, upper_ns = divmod(upper.st_mtime_ns, 1_000_000_000)
    if lower_s != upper_s:
        return False
    if lower_ns == 0 and upper_ns == 0:
        if stat.S_ISLNK(lower.st_mode):
            return os.readlink(lower_path) == os.readlink(upper_path)
        if lower.st_size == 0 or not stat.S_ISREG(lower.st_mode):
            return True
        return _same_content(lower_path, upper_path)
    return lower_ns == upper_ns


class LowerView:
    """The merged view of ``layers`` (lowest first), answered from the layer directories."""

    def __init__(self, layers: list[Path]) -> None:
        self._top_first = [str(p) for p in reversed(layers)]
        self._stops: dict[tuple[int, tuple[str, ...]], bool] = {}

    def _stops_below(self, index: int, parts: tuple[str, ...]) -> bool:
        """Whether layer ``index`` hides what the lower layers hold below the directory ``parts``:
        it or an ancestor is opaque, a whiteout or not a directory there."""
        if not parts:
            return False
        key = (index, parts)
        known = self._stops.get(key)
        if known is None:
            path = os.path.join(self._top_first[index], *parts)
            st = _lstat(path)
            known = st is not None and (not stat.S_ISDIR(st.st_mode) or _opaque(path))
            known = known or self._stops_below(index, parts[:-1])
            self._stops[key] = known
        return known

    def lookup(self, parts: tuple[str, ...]) -> tuple[str, os.stat_result] | None:
        """The lower entry at ``parts`` (its path in the layer that provides it, and its stat)."""
        for index, layer in enumerate(self._top_first):
            path = os.path.join(layer, *parts)
            st = _lstat(path)
            if st is None:
                if self._stops_below(index, parts[:-1]):
                    return None
                continue
            if is_whiteout(st):
                return None
            return path, st
        return None

    def listdir(self, parts: tuple[str, ...]) -> list[str]:
        """Names in the merged lower directory at ``parts`` (empty if it is not a directory)."""
        seen: dict[str, bool] = {}
        for index, layer in enumerate(self._top_first):
            path = os.path.join(layer, *parts)
            st = _lstat(path)
            if st is None:
                if self._stops_below(index, parts[:-1]):
                    break
                continue
            if not stat.S_ISDIR(st.st_mode):
                break
            for name in os.listdir(path):
                if name not in seen:
                    seen[name] = not is_whiteout(os.lstat(os.path.join(path, name)))
            if _opaque(path):
                break
        return sorted(name for name, present in seen.items() if present)
