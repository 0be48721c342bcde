"""Path and tree helpers every filesystem op needs.

``secure_join`` resolves a path *inside* a root the way the root's own processes would see it
(symlinks are read relative to the root, ``..`` stops at the root), so code running on the host
never follows a container-controlled symlink out of the container's tree.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
from pathlib import Path

MAX_SYMLINKS = 255


class PathEscapeError(OSError):
    """A path could not be resolved safely inside its root (e.g. a symlink loop)."""


def _split(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


def secure_join(root: str | os.PathLike[str], path: str | os.PathLike[str], *,
                follow_final: bool = True) -> Path:
    """``root/path`` with every symlink resolved as if ``root`` were ``/``.

    Missing components are kept as they are (so the result can be created). ``..`` never climbs
    above ``root``; absolute symlink targets restart at ``root``. With ``follow_final=False`` a
    symlink in the last component is returned itself rather than followed (for lstat/unlink).
    """
    root_s = os.path.abspath(os.fspath(root))
    pending = _split(os.fspath(path))
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root_s, *resolved, part)
        if not pending and not follow_final:
            resolved.append(part)
            break
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            resolved.append(part)
            continue
        except NotADirectoryError:
            resolved.append(part)
            continue
        if not stat.S_ISLNK(st.st_mode):
            resolved.append(part)
            continue
        links += 1
        if links > MAX_SYMLINKS:
            raise PathEscapeError(errno.ELOOP, f"too many symlinks resolving {os.fspath(path)!r} in {root_s}")
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = []
        pending = _split(target) + pending
    return Path(root_s, *resolved)


def mkdir_all_in_root(root: str | os.PathLike[str], path: str, mode: int = 0o755,
                      uid: int | None = None, gid: int | None = None) -> list[Path]:
    """Create ``path`` (resolved inside ``root``) and any missing parents; return those created,
    outermost first. Each component is re-resolved, so a symlink planted mid-way is followed
    inside the root only."""
    created: list[Path] = []
    root_s = os.path.abspath(os.fspath(root))
    parts = secure_join(root_s, path).relative_to(root_s).parts
    for i in range(1, len(parts) + 1):
        target = secure_join(root, "/".join(parts[:i]))
        try:
            os.mkdir(target, mode)
        except FileExistsError:
            if not target.is_dir():
                where = "/".join(parts[:i])
                raise NotADirectoryError(errno.ENOTDIR, f"{where} exists and is not a directory") from None
            continue
        if uid is not None and gid is not None:
            os.chown(target, uid, gid)
        created.append(target)
    return created


def disk_usage(path: Path) -> int:
    """Bytes allocated under ``path`` (hard links counted once), like ``du -s``."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (*dirnames, *filenames):
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1:
                if key in seen:
                    continue
                seen.add(key)
            total += st.st_blocks * 512
    return total


def copy_tree(src: Path, dst: Path) -> None:
    """A full copy of ``src``'s contents into ``dst`` (created if missing) preserving modes,
    owners, times, xattrs, hard links, devices and sockets (GNU ``cp -a``)."""
    dst.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", "--no-target-directory", "--reflink=auto", f"{src}/.", str(dst)],
                   check=True, capture_output=True)


def remove_tree(path: Path) -> None:
    """Remove a directory tree, including read-only dirs (e.g. a busybox install without +w)."""
    if not os.path.lexists(path):
        return

    def make_writable_and_retry(func, failed_path, _exc_info):  # noqa: ANN001
        os.chmod(os.path.dirname(failed_path), 0o700)
        func(failed_path)

    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, onerror=make_writable_and_retry)
    else:
        os.unlink(path)
