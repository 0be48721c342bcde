"""Mount targets that did not exist in the rootfs before a run (runc creates them as empty files
or dirs) are removed afterwards so they do not end up in the committed layer.

The cleanup never trusts the tree after the run: the step may have replaced any path component
with a symlink (e.g. to ``/``). Each removal walks from the rootfs with ``O_NOFOLLOW`` one component
at a time and only removes an *empty* directory or an *empty* regular file, so nothing outside the
rootfs and nothing the step wrote is ever deleted (the CVE-2024-23652 shape).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from buildkitpy.snapshot.fs import secure_join


class MountStubs:
    def __init__(self, rootfs: Path, stubs: list[tuple[str, ...]]) -> None:
        self._rootfs = rootfs
        self._stubs = stubs  # paths relative to the rootfs as components, deepest first per target

    @classmethod
    def record(cls, rootfs: Path, destinations: Iterable[str], *, recursive: bool) -> MountStubs:
        """Note which of ``destinations`` (and, if recursive, which missing parents) are absent."""
        root = Path(os.path.abspath(rootfs))
        stubs: list[tuple[str, ...]] = []
        for dest in destinations:
            try:
                real = secure_join(root, dest)
            except OSError:
                continue
            while real != root:
                try:
                    os.lstat(real)
                    break
                except (FileNotFoundError, NotADirectoryError):
                    pass
                parts = real.relative_to(root).parts
                if parts not in stubs:
                    stubs.append(parts)
                if not recursive:
                    break
                real = real.parent
        return cls(root, stubs)

    @property
    def paths(self) -> list[Path]:
        return [self._rootfs.joinpath(*parts) for parts in self._stubs]

    def cleanup(self) -> None:
        for parts in sorted(self._stubs, key=len, reverse=True):
            self._remove_one(parts)

    def _remove_one(self, parts: tuple[str, ...]) -> None:
        fds: list[int] = []
        try:
            fd = os.open(self._rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fds.append(fd)
            for name in parts[:-1]:
                try:
                    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except OSError:
                    return  # gone, or replaced by a symlink / non-directory: not ours to touch
                fds.append(fd)
            name = parts[-1]
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                return
            parent_st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                try:
                    os.rmdir(name, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EBUSY):
                        raise
                    return
            elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
                os.unlink(name, dir_fd=fd)
            else:
                return
            # keep the parent's times so the stub leaves no trace (reproducible layers)
            with contextlib.suppress(OSError):
                os.utime(fd, ns=(parent_st.st_atime_ns, parent_st.st_mtime_ns))
        finally:
            for f in fds:
                os.close(f)
