"""Checks every announced entry of an incoming DiffCopy stream before anything touches the disk.

A hostile or broken sender must not be able to write outside the destination, overwrite an entry it
already sent, or hang a child under a symlink or file. Paths must be clean, relative, ``..``-free,
listed depth-first with each directory immediately before its children and siblings in byte order.
"""

from __future__ import annotations

from dataclasses import dataclass

from buildkitpy.api import fsutil_stat_pb2
from buildkitpy.fsutil import modes
from buildkitpy.fsutil.errors import DiffCopyError
from buildkitpy.fsutil.patterns import go_clean

MAX_PATH_BYTES = 4096  # PATH_MAX
MAX_NAME_BYTES = 255  # NAME_MAX

_UNSUPPORTED_TYPES = modes.MODE_SOCKET | modes.MODE_IRREGULAR


def check_path(path: str) -> None:
    """Raise ``DiffCopyError`` unless ``path`` is a clean, relative, non-escaping, bounded path."""
    # Most paths at once: short and ASCII (so within both byte limits), without NUL, and without
    # an empty, "." or ".." component (so clean, relative and not escaping). Any other path is
    # checked below, which says what is wrong with it.
    if 0 < len(path) <= MAX_NAME_BYTES and path.isascii() and "\x00" not in path:
        bounded = f"/{path}/"
        if "//" not in bounded and "/./" not in bounded and "/../" not in bounded:
            return
    if not path:
        raise DiffCopyError("invalid entry: empty path")
    if "\x00" in path:
        raise DiffCopyError(f"invalid entry {path!r}: path contains a NUL byte")
    if path.startswith("/"):
        raise DiffCopyError(f"invalid entry {path!r}: absolute path")
    if path == ".":
        raise DiffCopyError("invalid entry '.': the root itself cannot be an entry")
    if path == ".." or path.startswith("../") or "/../" in path or path.endswith("/.."):
        raise DiffCopyError(f"invalid entry {path!r}: path escapes the destination ('..')")
    if go_clean(path) != path:
        raise DiffCopyError(f"invalid entry {path!r}: path is not clean (empty, '.' or trailing components)")
    encoded = path.encode("utf-8", "surrogatepass")
    if len(encoded) > MAX_PATH_BYTES:
        raise DiffCopyError(f"invalid entry {path[:64]!r}...: path is {len(encoded)} bytes, "
                            f"longer than {MAX_PATH_BYTES}")
    for name in path.split("/"):
        if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise DiffCopyError(f"invalid entry {path[:64]!r}: a path component is longer than "
                                f"{MAX_NAME_BYTES} bytes")


@dataclass(slots=True)
class _OpenDir:
    path: str  # "" for the root
    last: str | None = None  # name of the last child seen


class StreamValidator:
    """Validates STAT entries one by one, in stream order."""

    def __init__(self) -> None:
        self._dirs = [_OpenDir("")]
        self._previous: tuple[str, int] | None = None  # (path, mode) of the last entry
        self._link_targets: set[str] = set()

    def check(self, stat: fsutil_stat_pb2.Stat) -> None:
        path = stat.path
        check_path(path)
        mode = stat.mode
        if mode & _UNSUPPORTED_TYPES:
            raise DiffCopyError(f"invalid entry {path!r}: unsupported file type ({modes.describe(mode)})")
        if stat.size < 0:
            raise DiffCopyError(f"invalid entry {path!r}: negative size {stat.size}")
        parent, _, name = path.rpartition("/")
        dirs = self._dirs
        while dirs[-1].path != parent:
            top = dirs[-1].path
            if top == "" or parent.startswith(top + "/"):
                # The parent would be deeper than the directory being listed.
                prev = self._previous
                if prev is not None and prev[0] == parent and not modes.is_dir(prev[1]):
                    raise DiffCopyError(f"invalid entry {path!r}: parent {parent!r} is a "
                                        f"{modes.describe(prev[1])}, not a directory")
                raise DiffCopyError(f"invalid entry {path!r}: out of order (its parent directory "
                                    f"{parent!r} was not sent right before its children)")
            dirs.pop()
        frame = dirs[-1]
        if frame.last is not None and name <= frame.last:
            sibling = f"{parent}/{frame.last}" if parent else frame.last
            if name == frame.last:
                raise DiffCopyError(f"invalid entry {path!r}: duplicate entry")
            raise DiffCopyError(f"invalid entry {path!r}: out of order (sent after {sibling!r})")
        frame.last = name

        if mode & modes.MODE_DIR:
            dirs.append(_OpenDir(path))
        elif mode & modes.MODE_SYMLINK:
            if not stat.linkname:
                raise DiffCopyError(f"invalid entry {path!r}: symlink without a target")
        elif stat.linkname:
            if stat.linkname not in self._link_targets:
                raise DiffCopyError(f"invalid entry {path!r}: hardlink to {stat.linkname!r}, which is not "
                                    "an earlier file of this transfer")
        else:
            self._link_targets.add(path)
        self._previous = (path, mode)
