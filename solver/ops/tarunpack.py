"""ADD's archive auto-extraction: a local tar (optionally gzip/bzip2/xz) is unpacked, not copied.

Every member is placed with its path resolved inside the destination (symlinks in the tree
included), so a hostile archive cannot write outside it.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import stat
import tarfile
from pathlib import Path

from buildkitpy.errors import SolveError
from buildkitpy.solver.pathutil import secure_join


def is_archive(path: Path) -> bool:
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        with tarfile.open(path, "r:*") as tf:
            return tf.next() is not None
    except (OSError, tarfile.TarError, EOFError):
        return False


def unpack(archive: Path, dest: Path, owner: tuple[int, int] | None) -> None:
    try:
        with tarfile.open(archive, "r:*") as tf:
            dirs: list[tuple[Path, tarfile.TarInfo]] = []
            for member in tf:
                name = posixpath.normpath("/" + member.name).lstrip("/")
                if not name or name == ".":
                    continue
                try:
                    _extract(tf, member, name, dest, owner, dirs)
                except (OSError, OverflowError, ValueError) as exc:
                    raise SolveError(f"failed to extract {archive.name}: {_member_kind(member)} "
                                     f"{member.name!r}: {_reason(exc, member)}") from exc
            for target, member in reversed(dirs):  # after their children changed them
                try:
                    _apply_meta(target, member, owner)
                except (OSError, OverflowError, ValueError) as exc:
                    raise SolveError(f"failed to extract {archive.name}: directory {member.name!r}: "
                                     f"{_reason(exc, member)}") from exc
    except (tarfile.TarError, EOFError) as exc:
        raise SolveError(f"failed to extract {archive.name}: {exc}") from exc


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.ischr() or member.isblk():
        return "device node"
    if member.isfifo():
        return "fifo"
    if member.issym() or member.islnk():
        return "link"
    return "directory" if member.isdir() else "file"


def _reason(exc: BaseException, member: tarfile.TarInfo) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        hint = ""
        if exc.errno == errno.EPERM and (member.ischr() or member.isblk()):
            hint = " (creating device nodes needs CAP_MKNOD outside a user namespace)"
        return exc.strerror.lower() + hint
    return str(exc)


def _extract(tf: tarfile.TarFile, member: tarfile.TarInfo, name: str, dest: Path,
             owner: tuple[int, int] | None, dirs: list[tuple[Path, tarfile.TarInfo]]) -> None:
    """Place one member at ``name`` inside ``dest`` (directories get their metadata at the end)."""
    target = secure_join(dest, posixpath.dirname(name)) / posixpath.basename(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    # what is there is replaced, unless both are directories: a symlink to a directory is not one
    # (metadata applied through it would change whatever it points at, outside ``dest`` too)
    if os.path.lexists(target) and not (member.isdir() and target.is_dir() and not target.is_symlink()):
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
    if member.isdir():
        target.mkdir(exist_ok=True)
        dirs.append((target, member))
    elif member.isreg():
        with tf.extractfile(member) as fi, open(target, "wb") as fo:  # type: ignore[union-attr]
            shutil.copyfileobj(fi, fo, 1 << 20)
    elif member.issym():
        os.symlink(member.linkname, target)
    elif member.islnk():
        link_src = secure_join(dest, posixpath.normpath("/" + member.linkname),
                               follow_final=False)
        os.link(link_src, target)
    elif member.ischr() or member.isblk():
        kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
        os.mknod(target, kind | member.mode, os.makedev(member.devmajor, member.devminor))
    elif member.isfifo():
        os.mkfifo(target, member.mode)
    else:
        return
    _apply_meta(target, member, owner)


def _apply_meta(target: Path, member: tarfile.TarInfo, owner: tuple[int, int] | None) -> None:
    uid, gid = owner if owner is not None else (member.uid, member.gid)
    os.lchown(target, uid, gid)
    if not member.issym():
        os.chmod(target, member.mode & 0o7777)
    os.utime(target, (member.mtime, member.mtime), follow_symlinks=False)
