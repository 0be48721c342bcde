"""Content checksums of paths inside a committed snapshot (the slow half of a cache key).

Plain selectors hash as BuildKit's ``cache/contenthash`` does, so content-based cache keys match
real BuildKit's: a file hashes its v1 tarsum header (type, permission bits, uid, gid, size, link
target, device numbers, kept xattrs; never the name or mtime) followed by its content; a
directory hashes its own header's digest and, for each child in byte order of names, the child's
name and digest. Wildcard and include/exclude selectors use a hash of our own (their keys do not
match BuildKit's). Results are memoised per (snapshot id, selector) in SQLite: snapshots never
change once committed.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import threading
from pathlib import Path

from buildkitpy.errors import SolveError
from buildkitpy.fsutil.patterns import PatternMatcher
from buildkitpy.solver.cachekey import Selector
from buildkitpy.solver.pathutil import resolve_wildcards, root_path

EMPTY_DIGEST = "sha256:" + hashlib.sha256(b"").hexdigest()
_CHUNK = 1 << 20


def _xattrs(path: str) -> list[tuple[str, bytes]]:
    """The xattrs tarsum keeps: ``security.capability`` and anything outside ``security.*`` and
    ``system.*``, sorted by name."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []
    out = []
    for name in sorted(names, key=str.encode):
        if name.startswith("system.") or (name.startswith("security.") and name != "security.capability"):
            continue
        try:
            out.append((name, os.getxattr(path, name, follow_symlinks=False)))
        except OSError:
            continue
    return out


_TYPEFLAGS = {stat.S_IFREG: b"0", stat.S_IFLNK: b"2", stat.S_IFCHR: b"3", stat.S_IFBLK: b"4",
              stat.S_IFDIR: b"5", stat.S_IFIFO: b"6"}


def _header(path: str, st: os.stat_result) -> bytes:
    """BuildKit's v1 tarsum header of a file (``contenthash.NewFileHash``): the tar header Go's
    ``tar.FileInfoHeader`` makes, with the name left empty, as ``key+value`` pairs without
    separators (name, mode, uid, gid, size, typeflag, linkname, uname, gname, devmajor, devminor,
    then the kept xattrs)."""
    mode = st.st_mode
    kind = stat.S_IFMT(mode)
    perm = 0o777 if kind == stat.S_IFLNK else stat.S_IMODE(mode)  # permission and setuid/setgid/sticky bits
    link = os.readlink(path).encode("utf-8", "surrogateescape") if kind == stat.S_IFLNK else b""
    size = st.st_size if kind == stat.S_IFREG else 0
    dev = st.st_rdev if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0
    data = b"name" + b"mode%d" % perm + b"uid%d" % st.st_uid + b"gid%d" % st.st_gid + b"size%d" % size
    data += b"typeflag" + _TYPEFLAGS.get(kind, b"0") + b"linkname" + link + b"uname" + b"gname"
    data += b"devmajor%d" % os.major(dev) + b"devminor%d" % os.minor(dev)
    for name, value in _xattrs(path):
        data += name.encode() + value
    return data


def _file_digest(path: str, st: os.stat_result) -> str:
    h = hashlib.sha256(_header(path, st))
    if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


def tree_digest(path: str) -> str:
    """Digest of a file, symlink (not followed) or whole directory tree, as BuildKit's
    ``contenthash`` computes it: a directory hashes ``"\0"`` + the digest of its own header, then
    per child in byte order of names ``"\0" + name`` + the child's digest (recursively)."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        return _file_digest(path, st)
    h = hashlib.sha256(b"\0" + ("sha256:" + hashlib.sha256(_header(path, st)).hexdigest()).encode())
    names = sorted(os.fsencode(n) for n in os.listdir(path))
    for name in names:
        h.update(b"\0" + name)
        h.update(tree_digest(os.fsdecode(os.path.join(os.fsencode(path), name))).encode())
    return "sha256:" + h.hexdigest()


def _filtered_digest(base: Path, sel: Selector) -> str:
    """Hash of (relative path, digest) for every entry the include/exclude patterns keep."""
    include = PatternMatcher(sel.include_patterns)
    exclude = PatternMatcher(sel.exclude_patterns)
    h = hashlib.sha256()

    def visit(directory: str, rel: str) -> None:
        for name in sorted(os.listdir(directory)):
            child_rel = f"{rel}/{name}" if rel else name
            full = os.path.join(directory, name)
            st = os.lstat(full)
            is_dir = stat.S_ISDIR(st.st_mode)
            excluded = bool(exclude) and exclude.matches_or_parent_matches(child_rel)
            included = (not include or include.matches_or_parent_matches(child_rel)) and not excluded
            if included:
                digest = "sha256:" + hashlib.sha256(_header(full, st)).hexdigest() if is_dir \
                    else _file_digest(full, st)
                h.update(child_rel.encode("utf-8", "surrogateescape") + b"\0" + digest.encode() + b"\0")
            if is_dir and (not excluded or exclude.exclusions) and \
                    (included or not include or include.could_match_below(child_rel)):
                visit(full, child_rel)

    if base.is_dir() and not base.is_symlink():
        visit(str(base), "")
    else:
        h.update(_file_digest(str(base), os.lstat(base)).encode())
    return "sha256:" + h.hexdigest()


def checksum(root: Path, sel: Selector) -> str:
    """Checksum of ``sel`` in the tree at ``root``; SolveError if a required path is missing."""
    if sel.wildcard:
        matches = resolve_wildcards(root, sel.path, sel.follow_links)
        if not matches:
            return EMPTY_DIGEST
        h = hashlib.sha256()
        for m in matches:
            h.update(m.encode() + b"\0" + _checksum_one(root, Selector(
                m, sel.follow_links, False, sel.include_patterns, sel.exclude_patterns,
                sel.required_paths)).encode() + b"\0")
        return "sha256:" + h.hexdigest()
    return _checksum_one(root, sel)


def _checksum_one(root: Path, sel: Selector) -> str:
    base = root_path(root, sel.path, sel.follow_links)
    if not os.path.lexists(base):
        raise SolveError(f"failed to calculate checksum of ref: \"{sel.path}\": not found")
    for req in sel.required_paths:  # full paths in the ref, like BuildKit's includedPaths
        if not os.path.lexists(root_path(root, req, False)):
            raise SolveError(f"failed to calculate checksum of ref: required path \"{req}\" not found "
                             f"(copying \"{sel.path}\")")
    if sel.include_patterns or sel.exclude_patterns:
        return _filtered_digest(base, sel)
    return tree_digest(str(base))


def combine(digests: list[str]) -> str:
    """The content digest of an input for its selectors: BuildKit hashes the per-selector
    checksums joined by NUL, even when there is one."""
    return "sha256:" + hashlib.sha256("\0".join(digests).encode()).hexdigest()


class ChecksumStore:
    """SQLite memo of checksums per (snapshot id, selector)."""

    def __init__(self, db_path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS checksums_v2 (snapshot_id TEXT NOT NULL, "
                         "selector TEXT NOT NULL, digest TEXT NOT NULL, PRIMARY KEY (snapshot_id, selector))")

    def get(self, snapshot_id: str, selector: Selector) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT digest FROM checksums_v2 WHERE snapshot_id=? AND selector=?",
                                   (snapshot_id, selector.key())).fetchone()
        return row[0] if row else None

    def put(self, snapshot_id: str, selector: Selector, digest: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO checksums_v2 VALUES (?, ?, ?)",
                             (snapshot_id, selector.key(), digest))

    def forget(self, snapshot_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM checksums_v2 WHERE snapshot_id=?", (snapshot_id,))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def snapshot_checksum(self, snapshot, selectors: list[Selector]) -> str:  # noqa: ANN001
        """Blocking: the combined checksum of ``selectors`` in a committed snapshot."""
        results: dict[Selector, str] = {}
        missing = []
        for sel in selectors:
            cached = self.get(snapshot.id, sel)
            if cached is None:
                missing.append(sel)
            else:
                results[sel] = cached
        if missing:
            with snapshot.mount() as root:
                for sel in missing:
                    results[sel] = checksum(Path(root), sel)
                    self.put(snapshot.id, sel, results[sel])
        return combine([results[s] for s in selectors])
