"""One daemon per state root: an exclusive ``flock`` on ``<root>/buildkitd.lock`` (as buildkitd).

A second daemon started on the same root must fail before it touches anything there: recovery
unmounts, deletes bundles and kills leftover containers, which would wreck the first daemon's
running builds. The lock is held on an open file description, so the kernel drops it when the
process dies (even by SIGKILL) and a restart never finds a stale lock. The descriptor is not
inherited by children (runc, helpers), or a container outliving a crashed daemon would keep the
root locked.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "buildkitd.lock"


class RootLockedError(Exception):
    """Another process holds the root's lock."""


class RootLock:
    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor releases the flock
            self._fd = None


def acquire_root_lock(root: Path) -> RootLock:
    """Lock ``root`` for this process, or raise :class:`RootLockedError` naming the holder."""
    path = Path(root).absolute() / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        who = f" (pid {holder})" if holder.isdigit() else ""
        raise RootLockedError(f"could not lock {path}, another instance running{who}?") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return RootLock(path, fd)
