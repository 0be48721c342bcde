"""Content checksums of paths inside a committed snapshot (the slow half of a cache key).

Plain selectors hash as BuildKit's ``cache/contenthash`` does, so content-based cache keys match
real BuildKit's: a file hashes its v1 tarsum header (type, permission bits, uid, gid, size, link
target, device numbers, kept xattrs; never the name or mtime) followed by its content; a
directory hashes its own header's digest and, for each child in byte order of names, the child's
name and digest; wildcard and include/exclude selectors hash the files and directory headers they
include, keyed by path (BuildKit's ``includedPaths``). Results are memoised per (snapshot id,
selector) in SQLite: snapshots never change once committed.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from buildkitpy.errors import SolveError
from buildkitpy.fsutil.patterns import MatchInfo, PatternMatcher, contains_wildcards, glob_match
from buildkitpy.solver.cachekey import Selector
from buildkitpy.solver.pathutil import root_path
from buildkitpy.sqlitedb import open_db

EMPTY_DIGEST = "sha256:" + hashlib.sha256(b"").hexdigest()
_CHUNK = 1 << 20
_V = TypeVar("_V")


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
    return _pack_header(perm, st.st_uid, st.st_gid, size, _TYPEFLAGS.get(kind, b"0"), link, dev,
                        _xattrs(path))


def _pack_header(perm: int, uid: int, gid: int, size: int, typeflag: bytes, link: bytes, dev: int,
                 xattrs: list[tuple[str, bytes]]) -> bytes:
    data = b"name" + b"mode%d" % perm + b"uid%d" % uid + b"gid%d" % gid + b"size%d" % size
    data += b"typeflag" + typeflag + b"linkname" + link + b"uname" + b"gname"
    data += b"devmajor%d" % os.major(dev) + b"devminor%d" % os.minor(dev)
    for name, value in xattrs:
        data += name.encode() + value
    return data


# What a regular file's digest was computed for (``FileRecord``): its st_mode, uid, gid, size and
# mtime. A recorded digest stands for a file on disk only while these still match its lstat.
FileMeta = tuple[int, int, int, int, int]


@dataclass(frozen=True, slots=True)
class FileRecord:
    """The digest of a regular file in a snapshot, known without reading it (from the stream that
    wrote it, as BuildKit's local source fills its contenthash records during the transfer)."""

    digest: str
    meta: FileMeta


def file_meta(st: os.stat_result) -> FileMeta:
    return (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns)


def regular_file_hasher(perm: int, uid: int, gid: int, size: int,
                        xattrs: Sequence[tuple[str, bytes]] = ()) -> Any:
    """A sha256 already fed the tarsum header of a regular file with these permission bits
    (including setuid/setgid/sticky), owner, size and kept xattrs (see ``_xattrs``): feed it the
    contents for the file's digest (``"sha256:" + hexdigest()``), the one ``tree_digest`` gives."""
    return hashlib.sha256(_pack_header(perm, uid, gid, size, b"0", b"", 0, list(xattrs)))


def _file_digest(path: str, st: os.stat_result) -> str:
    h = hashlib.sha256(_header(path, st))
    if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


def tree_digest(path: str, header: str | None = None, known: Mapping[str, FileRecord] | None = None,
                rel: str = "") -> str:
    """Digest of a file, symlink (not followed) or whole directory tree, as BuildKit's
    ``contenthash`` computes it: a directory hashes a NUL + the digest of its own header (``header``
    when given), then per child in byte order of names a NUL + the name + the child's digest.
    ``known``: digests of regular files by their path under the tree's root (``rel`` is ``path``'s),
    used instead of reading a file while its lstat still matches what the digest was made for."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        if known is not None:
            record = known.get(rel)
            if record is not None and record.meta == file_meta(st):
                return record.digest
        return _file_digest(path, st)
    if header is None:
        header = "sha256:" + hashlib.sha256(_header(path, st)).hexdigest()
    h = hashlib.sha256(b"\0" + header.encode())
    names = sorted(os.fsencode(n) for n in os.listdir(path))
    bpath = os.fsencode(path)
    for name in names:
        h.update(b"\0" + name)
        child_rel = None
        if known is not None:
            child_rel = f"{rel}/{os.fsdecode(name)}" if rel else os.fsdecode(name)
        h.update(tree_digest(os.fsdecode(os.path.join(bpath, name)), None, known, child_rel or "").encode())
    return "sha256:" + h.hexdigest()


@dataclass(eq=False)
class _Included:
    """One path BuildKit's ``includedPaths`` may hash (a file, symlink or directory header)."""

    path: str
    follow: bool = False
    symlink: bool = False
    digest: str = ""
    included: bool = False
    include_info: MatchInfo = None
    exclude_info: MatchInfo = None


def _key(path: str) -> bytes:
    return os.fsencode(path).replace(b"/", b"\0")


def _records(root: Path, top: str, with_top: bool,
             descend: Callable[[str], bool] | None = None) -> list[tuple[bytes, str, str]]:
    """(key, kind, path) of the records BuildKit's contenthash tree holds for the directory at
    in-root path ``top`` ("" = the root) and below, in key order: ``dir`` (key = the path's),
    ``header`` (its own header, key + NUL) and ``file`` (files and symlinks). ``with_top``: include
    ``top``'s own ``dir`` record. ``descend``: whether a subdirectory (its in-root path) can hold
    anything wanted; those it rules out are left out with all they hold."""
    out: list[tuple[bytes, str, str]] = []

    def visit(rel: str) -> None:
        if with_top or rel != top:
            out.append((_key(rel), "dir", rel))
        out.append((_key(rel) + b"\0", "header", rel))
        full = os.path.join(root, rel.lstrip("/"))
        for name in os.listdir(full):
            child = f"{rel}/{name}"
            if stat.S_ISDIR(os.lstat(os.path.join(full, name)).st_mode):
                if descend is None or descend(child):
                    visit(child)
            else:
                out.append((_key(child), "file", child))

    visit(top)
    out.sort(key=lambda r: r[0])
    return out


def _in_root(root: Path, p: str, follow_final: bool) -> str | None:
    """``p`` with its symlinks resolved inside ``root``, as an in-root path ("" = the root), or
    None when it does not exist."""
    full = root_path(root, p, follow_final)
    if not os.path.lexists(full):
        return None
    rel = os.path.relpath(full, root)
    return "" if rel == "." else "/" + rel


def _go_split_wildcards(p: str) -> tuple[str, str]:
    """contenthash's ``splitWildcards``: the path before the first component with a wildcard, and
    the rest."""
    parts = posixpath.normpath(p).split("/") if p else ["."]
    before: list[str] = []
    after: list[str] = []
    for part in parts:
        if not after and contains_wildcards(part):
            after.append(part)
        elif after:
            after.append(part)
        else:
            before.append(part or "/")
    return posixpath.normpath(posixpath.join(*before)) if before else "", \
        posixpath.join(*after) if after else ""


def _included_digest(root: Path, sel: Selector, synced: bool) -> str:
    """BuildKit's checksum of a wildcard or include/exclude-filtered selector: the digests of the
    files, symlinks and directory headers it includes (never a directory's recursive digest),
    keyed by their path under the selector's non-wildcard prefix."""
    include = PatternMatcher(sel.include_patterns) if sel.include_patterns else None
    exclude = PatternMatcher(sel.exclude_patterns) if sel.exclude_patterns else None
    p = posixpath.normpath(posixpath.join("/", sel.path))
    # BuildKit skips the source's own header when its (joined) path ends in "/": only "/" does
    at_root = p == "/"
    p = "" if at_root else p
    if sel.wildcard:
        prefix, rest = _go_split_wildcards(p)
        prefix = "" if prefix == "/" else prefix
        follow_final = rest != ""
    else:
        prefix, follow_final = p, False
    resolved = _in_root(root, prefix, follow_final) if prefix else ""
    descend = None
    if sel.wildcard and p:
        pattern = p.split("/")[1:]

        def descend(child: str) -> bool:  # a directory the pattern cannot reach holds nothing wanted
            parts = (prefix + child[len(resolved or ""):]).split("/")[1:]
            n = min(len(parts), len(pattern))
            return glob_match("/" + "/".join(pattern[:n]), "/" + "/".join(parts[:n]))

    if not prefix:
        records = _records(root, "", True, descend)
    elif resolved is not None and os.path.isdir(os.path.join(root, resolved.lstrip("/"))):
        records = _records(root, resolved, False, descend)
    else:
        records = []
    included: list[_Included] = []
    parents: list[_Included] = []
    last_matched = ""
    for _, kind, path in records:
        fn = path
        if resolved is not None and fn.startswith(resolved):
            fn = prefix + fn[len(resolved):]
        while parents and not fn.startswith(parents[-1].path + "/"):
            parents.pop()
        parent = parents[-1] if parents else None
        header = kind == "header"
        if header and fn == p and at_root:
            continue
        entry = _Included(fn, follow=parent is None and sel.follow_links)
        if sel.wildcard:
            if p and (not last_matched or not fn.startswith(last_matched + "/")):
                if not glob_match(p, fn):
                    continue
                last_matched = fn
            candidate = _trim_prefix(fn + "/", last_matched + "/").removesuffix("/")
        else:
            if not (fn + "/").startswith(p + "/"):
                break
            candidate = _trim_prefix(fn + "/", p + "/").removesuffix("/")
        ok = _should_include(candidate, include, exclude, entry, parent)
        if not ok and not header:
            continue
        if kind == "dir":
            ok = False  # directory contents are hashed file by file, never as one digest
        else:
            full = os.path.join(root, path.lstrip("/"))
            st = os.lstat(full)
            entry.symlink = stat.S_ISLNK(st.st_mode)
            if header:
                entry.digest = EMPTY_DIGEST if synced and path == "" else \
                    "sha256:" + hashlib.sha256(_header(full, st)).hexdigest()
            else:
                entry.digest = _file_digest(full, st)
        if ok:
            for pd in parents:
                if not pd.included:
                    included.append(pd)
                    pd.included = True
            included.append(entry)
            entry.included = True
        if header:
            parents.append(entry)
    for req in sel.required_paths:
        if not any(e.path.startswith(req) for e in included):
            raise SolveError(f"failed to calculate checksum of ref: required path \"{req}\" not found "
                             f"(copying \"{sel.path}\")")
    for e in included:
        if e.follow and e.symlink:
            e.digest = tree_digest(str(root_path(root, e.path, True)))
    if not included:
        return EMPTY_DIGEST
    if len(included) == 1 and _go_base(posixpath.normpath(posixpath.join("/", sel.path))) == \
            _go_base(included[0].path):
        return included[0].digest
    h = hashlib.sha256()
    for e in included:
        h.update(_key(_trim_prefix(e.path, prefix)) or b"\0")
        h.update(e.digest.encode())
    return "sha256:" + h.hexdigest()


def _trim_prefix(s: str, prefix: str) -> str:
    return s[len(prefix):] if s.startswith(prefix) else s


def _go_base(p: str) -> str:
    if not p:
        return "."
    p = p.rstrip("/")
    return posixpath.basename(p) if p else "/"


def _should_include(candidate: str, include: PatternMatcher | None, exclude: PatternMatcher | None,
                    entry: _Included, parent: _Included | None) -> bool:
    if include is not None:
        m, entry.include_info = include.matches_using_parent_results(
            candidate, parent.include_info if parent is not None else [])
        if not m:
            return False
    if exclude is not None:
        m, entry.exclude_info = exclude.matches_using_parent_results(
            candidate, parent.exclude_info if parent is not None else [])
        if m:
            return False
    return True


def checksum(root: Path, sel: Selector, synced: bool = False,
             known: Mapping[str, FileRecord] | None = None) -> str:
    """Checksum of ``sel`` in the tree at ``root``; SolveError if a required path is missing.
    ``synced``: the tree is a local source's (BuildKit fills those checksums from the client's
    file stream, which never sends the root: its header hashes as the empty digest). ``known``:
    digests of its regular files by path (``tree_digest``)."""
    if sel.wildcard or sel.include_patterns or sel.exclude_patterns:
        return _included_digest(root, sel, synced)
    return _checksum_one(root, sel, synced, known)


def _checksum_one(root: Path, sel: Selector, synced: bool = False,
                  known: Mapping[str, FileRecord] | None = None) -> str:
    base = root_path(root, sel.path, sel.follow_links)
    if not os.path.lexists(base):
        raise SolveError(f"failed to calculate checksum of ref: \"{sel.path}\": not found")
    for req in sel.required_paths:  # full paths in the ref, like BuildKit's includedPaths
        if not os.path.lexists(root_path(root, req, False)):
            raise SolveError(f"failed to calculate checksum of ref: required path \"{req}\" not found "
                             f"(copying \"{sel.path}\")")
    at_root = os.path.realpath(base) == os.path.realpath(root)
    rel = ""
    if known is not None and not at_root:
        rel = os.path.relpath(os.path.realpath(base), os.path.realpath(root))
        if rel.startswith("../"):
            known = None
    return tree_digest(str(base), EMPTY_DIGEST if synced and at_root else None, known, rel)


def combine(digests: list[str]) -> str:
    """The content digest of an input for its selectors: BuildKit hashes the per-selector
    checksums joined by NUL, even when there is one."""
    return "sha256:" + hashlib.sha256("\0".join(digests).encode()).hexdigest()


class ChecksumStore:
    """SQLite memo of checksums per (snapshot id, selector), and in memory the digests of the files
    the last few local source transfers wrote (``remember_files``), so that the first checksum of
    such a snapshot does not read the files back."""

    MAX_REMEMBERED = 4  # snapshots whose file records are kept (a 10,000-file context: ~2 MB)

    def __init__(self, db_path: Path) -> None:
        self._lock = threading.Lock()
        self._files: OrderedDict[str, dict[str, FileRecord]] = OrderedDict()
        self._metas: OrderedDict[str, dict[str, FileMeta]] = OrderedDict()
        self._db = open_db(db_path, "CREATE TABLE IF NOT EXISTS checksums_v2 (snapshot_id TEXT NOT NULL, "
                           "selector TEXT NOT NULL, digest TEXT NOT NULL, "
                           "PRIMARY KEY (snapshot_id, selector))")

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
            self._files.pop(snapshot_id, None)
            self._metas.pop(snapshot_id, None)

    def remember_files(self, snapshot_id: str, files: dict[str, FileRecord]) -> None:
        """The digests of regular files in a committed snapshot, by path under its root."""
        self._keep(self._files, snapshot_id, files)

    def files_of(self, snapshot_id: str) -> dict[str, FileRecord] | None:
        with self._lock:
            return self._files.get(snapshot_id)

    def remember_file_metas(self, snapshot_id: str, metas: dict[str, FileMeta]) -> None:
        """The ``file_meta`` of regular files in a committed snapshot, by path under its root, as a
        local source transfer saw them on disk (``DiskWriter.files_as_stated``): the next transfer
        onto it compares with them instead of an lstat of each file."""
        self._keep(self._metas, snapshot_id, metas)

    def file_metas_of(self, snapshot_id: str) -> dict[str, FileMeta] | None:
        with self._lock:
            return self._metas.get(snapshot_id)

    def _keep(self, table: OrderedDict[str, _V], snapshot_id: str, value: _V) -> None:
        """``table[snapshot_id] = value``, keeping the newest ``MAX_REMEMBERED`` snapshots."""
        with self._lock:
            table[snapshot_id] = value
            table.move_to_end(snapshot_id)
            while len(table) > self.MAX_REMEMBERED:
                table.popitem(last=False)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def snapshot_checksum(self, snapshot, selectors: list[Selector],  # noqa: ANN001
                          synced: bool = False) -> str:
        """Blocking: the combined checksum of ``selectors`` in a committed snapshot (``synced``:
        a local source's, see ``checksum``)."""
        results: dict[Selector, str] = {}
        missing = []
        for sel in selectors:
            cached = self.get(snapshot.id, sel)
            if cached is None:
                missing.append(sel)
            else:
                results[sel] = cached
        if missing:
            known = self.files_of(snapshot.id)
            with snapshot.mount() as root:
                for sel in missing:
                    results[sel] = checksum(Path(root), sel, synced, known)
                    self.put(snapshot.id, sel, results[sel])
        return combine([results[s] for s in selectors])
