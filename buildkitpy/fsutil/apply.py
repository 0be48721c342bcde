"""Writes validated DiffCopy entries into a destination directory without ever leaving it.

Every path is resolved from an fd of the destination, one component at a time, with
``O_NOFOLLOW | O_DIRECTORY``; entries are created relative to their parent's fd (``*at`` calls). A
symlink in the destination, whether sent earlier or already there, is therefore never followed.
File contents are written with ``os.write`` as chunks arrive; metadata (owner, mode, xattrs, mtime)
is applied when a file is complete, and to directories at the very end (so a read-only directory
can still be filled, and child creation does not disturb its mtime).

``mode="sync"`` makes the destination equal to the stream, like fsutil's receiver over a previous
copy: entries of each directory that the stream does not list are deleted when the stream leaves
that directory, and with ``differ="metadata"`` an existing entry whose type, permissions, owner,
size, mtime and link target match its Stat is kept as it is (its contents are not requested).
Replacing an entry always unlinks it first, so files are never modified in place: a previous
copy shared as an overlay lower layer is never touched.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat as st
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from buildkitpy.api import fsutil_stat_pb2
from buildkitpy.fsutil import modes
from buildkitpy.fsutil.errors import ApplyError

ApplyMode = Literal["fresh", "merge", "sync"]
# "metadata": keep existing entries whose metadata matches (fsutil's DiffMetadata); "none": rewrite all.
Differ = Literal["none", "metadata"]
# Called once per applied entry: its Stat and, for regular files written in this transfer, the hex
# digest of the data (sha256, or the ``content_hasher``'s), for files kept unchanged from a previous
# copy their ``previous_digests`` entry; None for other entries and files without a digest.
EntryCallback = Callable[[fsutil_stat_pb2.Stat, str | None], None]


class Hasher(Protocol):
    """What a file's contents are fed to as they are written: a ``hashlib`` hash (sha256 or the
    ``ContentHasher``'s)."""

    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


# fsutil's ContentHasher: the hash a regular file's contents are fed to as they are written, given
# its Stat (None: no digest for this file). It may hash the Stat's owner, permissions and size too:
# the digest is reported only if the file ends up with exactly those on disk.
ContentHasher = Callable[[fsutil_stat_pb2.Stat], Hasher | None]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_CACHED_DIR_FDS = 128
_MAX_OPEN_FILES = 128
# Go mode bits a Stat may carry that we reproduce on disk (and so can compare).
_COMPARED_MODE_BITS = (modes.MODE_TYPE | modes.MODE_PERM | modes.MODE_SETUID | modes.MODE_SETGID
                       | modes.MODE_STICKY)


@dataclass(slots=True)
class _PendingFile:
    stat: fsutil_stat_pb2.Stat
    fd: int | None
    hasher: Hasher | None  # when a callback wants digests
    written: int = 0


# What a directory listing tells of an existing entry without a stat (the d_type of readdir).
_OTHER, _DIR, _FILE = 0, 1, 2


@dataclass(slots=True)
class _Listing:
    """Sync mode: a directory the stream is inside of, with its existing entries not yet streamed
    (by name: _DIR, _FILE or _OTHER)."""

    path: str
    leftover: dict[str, int]


class _Recorded:
    """The fields of an ``os.stat_result`` that the differ compares, from a record of the file
    (``previous_files``) instead of an lstat."""

    __slots__ = ("st_mode", "st_uid", "st_gid", "st_size", "st_mtime_ns")

    def __init__(self, meta: tuple[int, int, int, int, int]) -> None:
        self.st_mode, self.st_uid, self.st_gid, self.st_size, self.st_mtime_ns = meta


class DiskWriter:
    """Applies entries under ``dest``.

    ``mode="fresh"``: ``dest`` must be empty (created if missing); the daemon receives contexts so.
    ``mode="merge"``: existing entries that are not in the stream are kept; a streamed entry
    replaces what is at its path (a directory over a directory keeps its contents).
    ``mode="sync"``: like merge, but existing entries the stream does not list are deleted.
    ``differ="metadata"`` (merge and sync): an existing entry whose metadata matches is kept and its
    contents are not requested. ``fine_mtimes_only`` narrows that for regular files to those whose
    mtime has sub-second digits: a whole-second mtime (archives, ``touch -d``, normalised build
    dates) says too little about the contents of a copy whose origin is unknown.
    ``owner``: force this uid/gid on everything (the client side writes files as its own user);
    otherwise the uid/gid from the stream are applied.
    ``on_entry``, ``content_hasher``, ``previous_digests``: see ``EntryCallback`` and
    ``ContentHasher``; ``previous_digests`` are the digests of the files of the previous copy in
    ``dest`` by path, reported for those kept as they were.
    ``previous_files`` (sync mode): the ``(st_mode, st_uid, st_gid, st_size, st_mtime_ns)`` of
    regular files of ``dest`` by path, known to be exactly so on disk (the records of a committed
    snapshot that ``dest`` is mounted on, made when its files were written or kept): the differ
    compares a listed regular file with its record instead of an lstat of it. Directories, other
    entries, files without a record and hardlinks are lstat'ed as without it.
    ``collect_files``: fill ``files_as_stated`` with the ``(st_mode, st_uid, st_gid, st_size,
    st_mtime_ns)`` of the regular files (not hardlinks) that end up on disk exactly as their Stat
    says: those kept (as compared) and those written whose fstat matches it. What a later sync
    onto a snapshot of ``dest`` can be given as ``previous_files``.
    ``make_writable`` (sync mode): ``dest`` is only a view of the previous copy, never written;
    before the first change the writer calls ``make_writable()`` for a writable directory holding
    the same tree and carries on there. An unchanged sync so never needs one (the local source's
    new snapshot and its overlay mount, ~4 ms, for every unchanged context).
    """

    def __init__(self, dest: str | os.PathLike[str], *, mode: ApplyMode = "fresh",
                 owner: tuple[int, int] | None = None, on_entry: EntryCallback | None = None,
                 differ: Differ = "none", fine_mtimes_only: bool = False,
                 content_hasher: ContentHasher | None = None,
                 previous_digests: Mapping[str, str] | None = None,
                 previous_files: Mapping[str, tuple[int, int, int, int, int]] | None = None,
                 collect_files: bool = False, make_writable: Callable[[], Path] | None = None) -> None:
        if mode not in ("fresh", "merge", "sync"):
            raise ValueError(f"unknown apply mode {mode!r}")
        if make_writable is not None and mode != "sync":
            raise ValueError("make_writable needs sync mode (a view of a previous copy)")
        if differ not in ("none", "metadata"):
            raise ValueError(f"unknown differ {differ!r}")
        self.dest = Path(dest)
        self.mode = mode
        self.differ = differ
        self.fine_mtimes_only = fine_mtimes_only
        self.owner = owner
        self.on_entry = on_entry
        self.content_hasher = content_hasher
        self.previous_digests = previous_digests or {}
        self.previous_files = previous_files or {}
        # entry() compares regular files with their records at once (see _existing)
        self._compare_records = differ == "metadata" and mode == "sync" and bool(self.previous_files)
        self._go_modes: dict[int, int] = {}  # go_mode_from_posix of the records' modes
        self.files_as_stated: dict[str, tuple[int, int, int, int, int]] | None = {} if collect_files else None
        self._is_root = os.geteuid() == 0
        self._my_ids = (os.geteuid(), os.getegid())
        self._make_writable = make_writable
        try:
            if make_writable is None:
                self.dest.mkdir(parents=True, exist_ok=True)
            self._root_fd = os.open(self.dest, _DIR_FLAGS)
        except OSError as e:
            raise ApplyError(f"cannot open destination {str(self.dest)!r}: {e.strerror}") from None
        if mode == "fresh" and os.listdir(self._root_fd):
            os.close(self._root_fd)
            raise ApplyError(f"destination {str(self.dest)!r} is not empty")
        self._dir_fds: OrderedDict[str, int] = OrderedDict()
        self._pending: dict[int, _PendingFile] = {}
        self._open_files = 0
        self._dirs: list[fsutil_stat_pb2.Stat] = []
        self._listings: list[_Listing] = []
        if mode == "sync":
            self._listings.append(_Listing("", self._list(self._root_fd)))
        self.files_written = 0
        self.bytes_written = 0
        self.entries_kept = 0  # existing entries left as they were (differ="metadata")
        self.entries_deleted = 0  # existing entries the stream did not list (sync mode)
        self.modified = False  # anything under dest created, removed or given new metadata

    # -- entries ---------------------------------------------------------------------------------

    def entry(self, entry_id: int, stat: fsutil_stat_pb2.Stat) -> bool:
        """Create one (validated) entry. Returns True when its contents must be requested."""
        path = stat.path
        parent, _, name = path.rpartition("/")
        mode = stat.mode
        listings = self._listings
        if (self._compare_records and listings and listings[-1].path == parent
                and not mode & modes.MODE_TYPE and not stat.linkname):
            # The common entry of an unchanged context: a regular file of the directory being
            # synced that is kept as its record says, with no work but the comparison.
            leftover = listings[-1].leftover
            if leftover.get(name) == _FILE:
                meta = self.previous_files.get(path)
                if meta is not None and self._record_matches(meta, stat):
                    del leftover[name]
                    self.entries_kept += 1
                    if self.files_as_stated is not None:
                        self.files_as_stated[path] = meta
                    if self.on_entry is not None:
                        self.on_entry(stat, self.previous_digests.get(path))
                    return False
        self._trim_dir_fds()
        try:
            if self._listings:
                self._leave_listings_until(parent)
            pfd = self._dir_fd(parent)
            existing = self._existing(pfd, name, stat)
            if modes.is_dir(mode):
                self._directory(pfd, name, stat, existing)
                return False
            if existing is not None:
                if self.differ == "metadata" and self._unchanged(pfd, name, stat, existing):
                    self.entries_kept += 1
                    if (self.files_as_stated is not None and st.S_ISREG(existing.st_mode)
                            and not stat.linkname):
                        self.files_as_stated[path] = (existing.st_mode, existing.st_uid, existing.st_gid,
                                                      existing.st_size, existing.st_mtime_ns)
                    kept_digest = self.previous_digests.get(path) if st.S_ISREG(existing.st_mode) else None
                    self._notify(stat, kept_digest)
                    return False
            self._change()
            pfd = self._dir_fd(parent)
            if existing is not None:
                self._remove(pfd, name, st.S_ISDIR(existing.st_mode))
            if modes.is_symlink(mode):
                os.symlink(stat.linkname, name, dir_fd=pfd)
                self._finish_special(pfd, name, stat, chmod=False)
                return False
            if stat.linkname:  # hardlink to an earlier entry
                lparent, _, lname = stat.linkname.rpartition("/")
                os.link(lname, name, src_dir_fd=self._dir_fd(lparent), dst_dir_fd=pfd, follow_symlinks=False)
                self._notify(stat, None)
                return False
            if modes.is_named_pipe(mode):
                os.mkfifo(name, 0o600, dir_fd=pfd)
                self._finish_special(pfd, name, stat, chmod=True)
                return False
            if modes.is_device(mode):
                if not self._is_root:
                    raise ApplyError(f"cannot create {modes.describe(mode)} {path!r}: "
                                     "creating device nodes needs root")
                kind = st.S_IFCHR if mode & modes.MODE_CHAR_DEVICE else st.S_IFBLK
                os.mknod(name, 0o600 | kind, os.makedev(stat.devmajor, stat.devminor), dir_fd=pfd)
                self._finish_special(pfd, name, stat, chmod=True)
                return False
            fd = os.open(name, _NEW_FILE_FLAGS, 0o600, dir_fd=pfd)
        except ApplyError:
            raise
        except OSError as e:
            raise ApplyError(f"cannot create {modes.describe(mode)} {path!r}: {e.strerror}") from None
        hasher = None
        if self.on_entry is not None:
            hasher = hashlib.sha256() if self.content_hasher is None else self.content_hasher(stat)
        kept: int | None = fd
        if self._open_files >= _MAX_OPEN_FILES:
            os.close(fd)
            kept = None  # reopened when its data arrives
        else:
            self._open_files += 1
        self._pending[entry_id] = _PendingFile(stat, kept, hasher)
        return True

    def data(self, entry_id: int, chunk: bytes) -> None:
        """Append a chunk to a requested file."""
        pf = self._pending[entry_id]
        fd = pf.fd
        if fd is None:
            fd = pf.fd = self._reopen(pf.stat)
            self._open_files += 1
        try:
            view = memoryview(chunk)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        except OSError as e:
            raise ApplyError(f"cannot write {pf.stat.path!r}: {e.strerror}") from None
        if pf.hasher is not None:
            pf.hasher.update(chunk)
        pf.written += len(chunk)
        self.bytes_written += len(chunk)

    def file_done(self, entry_id: int) -> None:
        """The last chunk arrived: apply metadata and close."""
        pf = self._pending.pop(entry_id)
        stat = pf.stat
        fd = pf.fd
        if fd is None:
            fd = self._reopen(stat)
        else:
            self._open_files -= 1
        try:
            self._set_xattrs_fd(fd, stat)
            self._set_owner_fd(fd, stat)
            os.chmod(fd, modes.permission_bits_from_go(stat.mode))
            os.utime(fd, ns=(stat.modTime, stat.modTime))
            digest = pf.hasher.hexdigest() if pf.hasher is not None else None
            if self.files_as_stated is not None or (digest is not None and self.content_hasher is not None):
                current = os.fstat(fd)
                if self._as_stated(current, pf):
                    if self.files_as_stated is not None and current.st_mtime_ns == stat.modTime:
                        self.files_as_stated[stat.path] = (current.st_mode, current.st_uid, current.st_gid,
                                                           current.st_size, current.st_mtime_ns)
                elif self.content_hasher is not None:
                    digest = None
        except ApplyError:
            raise
        except OSError as e:
            raise ApplyError(f"cannot set metadata of {stat.path!r}: {e.strerror}") from None
        finally:
            os.close(fd)
        self.files_written += 1
        self._notify(stat, digest)

    @staticmethod
    def _as_stated(current: os.stat_result, pf: _PendingFile) -> bool:
        """Whether the file has exactly the size, permissions and owner of its Stat (what a content
        hasher may have hashed): the kernel may drop a setgid bit, a sender may send fewer bytes."""
        stat = pf.stat
        return (pf.written == stat.size == current.st_size
                and st.S_IMODE(current.st_mode) == modes.permission_bits_from_go(stat.mode)
                and (current.st_uid, current.st_gid) == (stat.uid, stat.gid))

    def finish(self) -> None:
        """Everything arrived: delete what the stream left out (sync), then give directories their
        final mode and mtime (only where they differ, so unchanged directories are not touched)."""
        if self._pending:
            raise ApplyError(f"{len(self._pending)} files still incomplete")
        try:
            while self._listings:
                self._leave_listing()
        except OSError as e:
            raise ApplyError(f"cannot remove entries the client no longer has: {e.strerror}") from None
        for stat in reversed(self._dirs):
            try:
                fd = self._dir_fd(stat.path)
                current = os.fstat(fd)
                perm = modes.permission_bits_from_go(stat.mode)
                new_perm = st.S_IMODE(current.st_mode) != perm
                new_mtime = current.st_mtime_ns != stat.modTime
                if new_perm or new_mtime:
                    self._change()
                    fd = self._dir_fd(stat.path)
                if new_perm:
                    os.chmod(fd, perm)
                if new_mtime:
                    os.utime(fd, ns=(stat.modTime, stat.modTime))
            except OSError as e:
                raise ApplyError(f"cannot set metadata of directory {stat.path!r}: {e.strerror}") from None
            self._trim_dir_fds()
        self.close()

    def close(self) -> None:
        """Release every fd (also after a failed transfer)."""
        for pf in self._pending.values():
            if pf.fd is not None:
                os.close(pf.fd)
        self._pending.clear()
        self._open_files = 0
        for fd in self._dir_fds.values():
            os.close(fd)
        self._dir_fds.clear()
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    # -- helpers ---------------------------------------------------------------------------------

    def _change(self) -> None:
        """Something under dest is about to change. The first change of a sync onto a view moves
        the writer to the writable copy ``make_writable`` gives: every fd it had is closed, and
        callers take their directory fds again after this."""
        self.modified = True
        make_writable, self._make_writable = self._make_writable, None
        if make_writable is None:
            return
        self.close()
        try:
            self.dest = Path(make_writable())
            self._root_fd = os.open(self.dest, _DIR_FLAGS)
        except OSError as e:
            raise ApplyError(f"cannot make a writable copy of the previous transfer: {e.strerror}") from None

    def _dir_fd(self, path: str) -> int:
        """fd of a directory below dest, resolved without following symlinks (cached)."""
        if not path:
            return self._root_fd
        fd = self._dir_fds.get(path)
        if fd is not None:
            self._dir_fds.move_to_end(path)
            return fd
        parent, _, name = path.rpartition("/")
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=self._dir_fd(parent))
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise ApplyError(f"refusing to write through {path!r}: not a directory "
                                 "(symlinks are never followed)") from None
            raise
        self._dir_fds[path] = fd
        return fd

    def _trim_dir_fds(self) -> None:
        # Only called between operations, so an fd in use is never closed under a caller.
        while len(self._dir_fds) > _MAX_CACHED_DIR_FDS:
            _, fd = self._dir_fds.popitem(last=False)
            os.close(fd)

    def _reopen(self, stat: fsutil_stat_pb2.Stat) -> int:
        parent, _, name = stat.path.rpartition("/")
        try:
            return os.open(name, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
                           dir_fd=self._dir_fd(parent))
        except OSError as e:
            raise ApplyError(f"cannot reopen {stat.path!r}: {e.strerror}") from None

    # -- existing entries (merge and sync) -------------------------------------------------------

    @staticmethod
    def _list(fd: int) -> dict[str, int]:
        """The entries of a directory and their kinds, from readdir's d_type (lstat only where the
        filesystem does not give it)."""
        with os.scandir(fd) as it:
            return {e.name: _DIR if e.is_dir(follow_symlinks=False)
                    else _FILE if e.is_file(follow_symlinks=False) else _OTHER for e in it}

    def _existing(self, pfd: int, name: str, stat: fsutil_stat_pb2.Stat) -> os.stat_result | _Recorded | None:
        """What is at ``name`` in the parent now (never followed), or None; from its record when
        ``stat`` is a plain regular file and the listing says a regular file is there."""
        if self._listings:
            kind = self._listings[-1].leftover.pop(name, None)
            if kind is None:
                return None
            if kind == _FILE and not stat.linkname and modes.is_regular(stat.mode):
                meta = self.previous_files.get(stat.path)
                if meta is not None:
                    return _Recorded(meta)
        elif self.mode == "fresh":
            return None
        try:
            return os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def _leave_listings_until(self, parent: str) -> None:
        """The stream moved on to a child of ``parent``: every deeper directory is complete."""
        while self._listings[-1].path != parent:
            if len(self._listings) == 1:
                raise ApplyError(f"internal: entry under {parent!r} arrived outside its directory")
            self._leave_listing()

    def _leave_listing(self) -> None:
        listing = self._listings.pop()
        if listing.leftover:
            self._change()
            fd = self._dir_fd(listing.path)
            for name, kind in listing.leftover.items():
                self._remove(fd, name, kind == _DIR)
                self.entries_deleted += 1

    @staticmethod
    def _remove(pfd: int, name: str, is_dir: bool) -> None:
        if is_dir:
            shutil.rmtree(name, dir_fd=pfd)  # fd-based: never follows a symlink inside
        else:
            os.unlink(name, dir_fd=pfd)

    def _directory(self, pfd: int, name: str, stat: fsutil_stat_pb2.Stat,
                   existing: os.stat_result | _Recorded | None) -> None:
        reuse = existing is not None and st.S_ISDIR(existing.st_mode)
        if not reuse:
            self._change()
            pfd = self._dir_fd(stat.path.rpartition("/")[0])
            if existing is not None:
                self._remove(pfd, name, False)
            os.mkdir(name, 0o700, dir_fd=pfd)
        fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
        self._dir_fds[stat.path] = fd
        new_owner = new_xattrs = True
        if reuse and self.differ == "metadata":
            new_owner = (existing.st_uid, existing.st_gid) != self._ids(stat)  # type: ignore[union-attr]
            new_xattrs = bool(stat.xattrs) and any(_xattr_or_none(fd, k) != v for k, v in stat.xattrs.items())
        if new_owner or new_xattrs:
            self._change()
            fd = self._dir_fd(stat.path)
        if new_owner:
            self._set_owner_fd(fd, stat)
        if new_xattrs:
            self._set_xattrs_fd(fd, stat)
        if self._listings:
            self._listings.append(_Listing(stat.path, self._list(fd) if reuse else {}))
        self._dirs.append(stat)
        self._notify(stat, None)

    def _record_matches(self, meta: tuple[int, int, int, int, int], stat: fsutil_stat_pb2.Stat) -> bool:
        """``_unchanged`` of a regular file (no hardlink) whose record is ``meta``."""
        go_mode = self._go_modes.get(meta[0])
        if go_mode is None:
            go_mode = self._go_modes[meta[0]] = modes.go_mode_from_posix(meta[0])
        if go_mode != stat.mode & _COMPARED_MODE_BITS or meta[4] != stat.modTime or meta[3] != stat.size:
            return False
        if self.fine_mtimes_only and stat.modTime % 1_000_000_000 == 0:
            return False
        return (meta[1], meta[2]) == self._ids(stat)

    def _unchanged(self, pfd: int, name: str, stat: fsutil_stat_pb2.Stat,
                   existing: os.stat_result | _Recorded) -> bool:
        """fsutil's metadata differ: same type and permissions, owner, mtime, and by type the size,
        link target (symlinks), inode (hardlinks) or device numbers. Contents are not compared."""
        mode = stat.mode
        if stat.linkname and not modes.is_symlink(mode):  # hardlink: already the same inode?
            assert isinstance(existing, os.stat_result)  # a hardlink is never taken from a record
            if not st.S_ISREG(existing.st_mode):
                return False
            lparent, _, lname = stat.linkname.rpartition("/")
            try:
                target = os.stat(lname, dir_fd=self._dir_fd(lparent), follow_symlinks=False)
            except FileNotFoundError:
                return False
            return (target.st_dev, target.st_ino) == (existing.st_dev, existing.st_ino)
        if modes.go_mode_from_posix(existing.st_mode) != mode & _COMPARED_MODE_BITS:
            return False
        if self.fine_mtimes_only and modes.is_regular(mode) and stat.modTime % 1_000_000_000 == 0:
            return False
        if (existing.st_uid, existing.st_gid) != self._ids(stat) or existing.st_mtime_ns != stat.modTime:
            return False
        if modes.is_symlink(mode):
            return os.readlink(name, dir_fd=pfd) == stat.linkname
        if modes.is_device(mode):
            assert isinstance(existing, os.stat_result)  # only regular files are
            return (os.major(existing.st_rdev), os.minor(existing.st_rdev)) == (stat.devmajor, stat.devminor)
        return existing.st_size == stat.size

    def _finish_special(self, pfd: int, name: str, stat: fsutil_stat_pb2.Stat, *, chmod: bool) -> None:
        uid, gid = self._ids(stat)
        if (uid, gid) != self._my_ids or self._is_root:
            try:
                os.chown(name, uid, gid, dir_fd=pfd, follow_symlinks=False)
            except PermissionError:
                raise ApplyError(f"cannot chown {stat.path!r} to {uid}:{gid}: permission denied") from None
        if chmod:
            os.chmod(name, modes.permission_bits_from_go(stat.mode), dir_fd=pfd)
        if stat.xattrs:
            target = f"/proc/self/fd/{pfd}/{name}"
            for key, value in stat.xattrs.items():
                try:
                    os.setxattr(target, key, value, follow_symlinks=False)
                except OSError:
                    pass  # best effort, like fsutil
        os.utime(name, ns=(stat.modTime, stat.modTime), dir_fd=pfd, follow_symlinks=False)
        self._notify(stat, None)

    def _ids(self, stat: fsutil_stat_pb2.Stat) -> tuple[int, int]:
        return self.owner if self.owner is not None else (stat.uid, stat.gid)

    def _set_owner_fd(self, fd: int, stat: fsutil_stat_pb2.Stat) -> None:
        uid, gid = self._ids(stat)
        if (uid, gid) == self._my_ids and not self._is_root:
            return  # already ours
        try:
            os.chown(fd, uid, gid)
        except PermissionError:
            raise ApplyError(f"cannot chown {stat.path!r} to {uid}:{gid}: permission denied") from None

    @staticmethod
    def _set_xattrs_fd(fd: int, stat: fsutil_stat_pb2.Stat) -> None:
        for key, value in stat.xattrs.items():
            try:
                os.setxattr(fd, key, value)
            except OSError:
                pass  # best effort, like fsutil

    def _notify(self, stat: fsutil_stat_pb2.Stat, digest: str | None) -> None:
        if self.on_entry is not None:
            self.on_entry(stat, digest)


def _xattr_or_none(fd: int, key: str) -> bytes | None:
    try:
        return os.getxattr(fd, key)
    except OSError:
        return None
