"""Writes validated DiffCopy entries into a destination directory without ever leaving it.

Every path is resolved from an fd of the destination, one component at a time, with
``O_NOFOLLOW | O_DIRECTORY``; entries are created relative to their parent's fd (``*at`` calls). A
symlink in the destination, whether sent earlier or already there, is therefore never followed.
File contents are written with ``os.write`` as chunks arrive; metadata (owner, mode, xattrs, mtime)
is applied when a file is complete, and to directories at the very end (so a read-only directory
can still be filled, and child creation does not disturb its mtime).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat as st
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from buildkitpy.api import fsutil_stat_pb2
from buildkitpy.fsutil import modes
from buildkitpy.fsutil.errors import ApplyError

ApplyMode = Literal["fresh", "merge"]
# Called once per applied entry: its Stat and, for regular files, the sha256 hex digest of the data.
EntryCallback = Callable[[fsutil_stat_pb2.Stat, str | None], None]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_CACHED_DIR_FDS = 128
_MAX_OPEN_FILES = 128


@dataclass(slots=True)
class _PendingFile:
    stat: fsutil_stat_pb2.Stat
    fd: int | None
    hasher: object | None  # hashlib sha256 when a callback wants digests


class DiskWriter:
    """Applies entries under ``dest``.

    ``mode="fresh"``: ``dest`` must be empty (created if missing); the daemon receives contexts so.
    ``mode="merge"``: existing entries that are not in the stream are kept; a streamed entry
    replaces what is at its path (a directory over a directory keeps its contents).
    ``owner``: force this uid/gid on everything (the client side writes files as its own user);
    otherwise the uid/gid from the stream are applied.
    """

    def __init__(self, dest: str | os.PathLike[str], *, mode: ApplyMode = "fresh",
                 owner: tuple[int, int] | None = None, on_entry: EntryCallback | None = None) -> None:
        if mode not in ("fresh", "merge"):
            raise ValueError(f"unknown apply mode {mode!r}")
        self.dest = Path(dest)
        self.mode = mode
        self.owner = owner
        self.on_entry = on_entry
        self._is_root = os.geteuid() == 0
        self._my_ids = (os.geteuid(), os.getegid())
        try:
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
        self.files_written = 0
        self.bytes_written = 0

    # -- entries ---------------------------------------------------------------------------------

    def entry(self, entry_id: int, stat: fsutil_stat_pb2.Stat) -> bool:
        """Create one (validated) entry. Returns True when its contents must be requested."""
        self._trim_dir_fds()
        path = stat.path
        parent, _, name = path.rpartition("/")
        mode = stat.mode
        try:
            pfd = self._dir_fd(parent)
            reuse_dir = self.mode == "merge" and self._prepare_merge(pfd, name, mode)
            if modes.is_dir(mode):
                if not reuse_dir:
                    os.mkdir(name, 0o700, dir_fd=pfd)
                fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
                self._dir_fds[path] = fd
                self._set_owner_fd(fd, stat)
                self._set_xattrs_fd(fd, stat)
                self._dirs.append(stat)
                self._notify(stat, None)
                return False
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
        hasher = hashlib.sha256() if self.on_entry is not None else None
        if self._open_files >= _MAX_OPEN_FILES:
            os.close(fd)
            fd = None
        else:
            self._open_files += 1
        self._pending[entry_id] = _PendingFile(stat, fd, hasher)
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
            pf.hasher.update(chunk)  # type: ignore[attr-defined]
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
        except ApplyError:
            raise
        except OSError as e:
            raise ApplyError(f"cannot set metadata of {stat.path!r}: {e.strerror}") from None
        finally:
            os.close(fd)
        self.files_written += 1
        self._notify(stat, pf.hasher.hexdigest() if pf.hasher is not None else None)  # type: ignore

    def finish(self) -> None:
        """Everything arrived: give directories their final mode and mtime."""
        if self._pending:
            raise ApplyError(f"{len(self._pending)} files still incomplete")
        for stat in reversed(self._dirs):
            try:
                fd = self._dir_fd(stat.path)
                os.chmod(fd, modes.permission_bits_from_go(stat.mode))
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

    def _prepare_merge(self, pfd: int, name: str, mode: int) -> bool:
        """Clear the way for an entry in merge mode; True if an existing directory is reused."""
        try:
            existing = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if st.S_ISDIR(existing.st_mode):
            if modes.is_dir(mode):
                return True
            shutil.rmtree(name, dir_fd=pfd)
        else:
            os.unlink(name, dir_fd=pfd)
        return False

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
