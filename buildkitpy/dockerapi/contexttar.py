"""The build context a ``docker build`` uploads: a tar (plain, gzip, bzip2 or xz) unpacked into a
private directory, refusing members that would land outside it."""

from __future__ import annotations

import os
import posixpath
import shutil
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import anyio

from buildkitpy.dockerapi.http import HTTPError

# A context larger than this is refused (the Engine has no limit; this daemon's disk does).
MAX_CONTEXT_BYTES = 8 << 30


class ContextError(HTTPError):
    def __init__(self, message: str) -> None:
        super().__init__(400, message)


async def spool(chunks: AsyncIterator[bytes], dest: Path, limit: int = MAX_CONTEXT_BYTES) -> int:
    """Write the request body to ``dest``; returns its size."""
    size = 0
    with open(dest, "wb") as f:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise ContextError(f"build context larger than {limit} bytes")
            await anyio.to_thread.run_sync(f.write, chunk)
    return size


def _member_path(name: str) -> str:
    """The member's path relative to the context root, or a ContextError naming it."""
    if name.startswith("/"):
        raise ContextError(f"invalid build context: tar member {name!r} has an absolute path")
    normalized = posixpath.normpath(name)
    if normalized == ".." or normalized.startswith("../"):
        raise ContextError(f"invalid build context: tar member {name!r} points outside the context")
    return normalized


def extract(archive: Path, dest: Path) -> None:
    """Unpack ``archive`` (any compression tarfile detects) into ``dest`` (blocking)."""
    dest.mkdir(parents=True, exist_ok=True)
    if archive.stat().st_size == 0:
        return  # an empty body is an empty context
    _complete_plain_tar(archive)
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            members = []
            for member in tar:
                rel = _member_path(member.name)
                if member.islnk():
                    member.linkname = _member_path(member.linkname)
                if member.ischr() or member.isblk() or member.isfifo():
                    continue  # devices have no place in a build context
                if rel == ".":
                    continue
                member.name = rel
                members.append(member)
            for member in members:
                _extract_member(tar, member, dest)
    except ContextError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise ContextError(f"invalid build context: the body is not a readable tar archive "
                           f"(plain, gzip, bzip2 or xz): {exc}") from None


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> None:
    """One member, never written through a symlink: its parents and a hard link's target must not
    be below one, and what is already at its path is replaced (kept only when both are
    directories), as moby's archive package does."""
    _refuse_symlinked_parent(dest, member.name)
    if member.islnk():
        _refuse_symlinked_parent(dest, member.linkname)
    target = dest / member.name
    try:
        if os.path.lexists(target) and not (member.isdir() and target.is_dir() and not target.is_symlink()):
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
        tar.extract(member, dest, set_attrs=True, numeric_owner=True, filter="fully_trusted")
    except KeyError:  # tarfile's lookup of a hard link's target
        raise ContextError(f"invalid build context: tar member {member.name!r} links to {member.linkname!r}, "
                           "which the archive does not hold before it") from None
    except (OSError, OverflowError, ValueError) as exc:
        reason = exc.strerror.lower() if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ContextError(f"invalid build context: cannot create tar member {member.name!r}: "
                           f"{reason}") from None


_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")


def _complete_plain_tar(archive: Path) -> None:
    """The docker CLI's context tar can end right after the last file's data, without the block
    padding and end-of-archive blocks (it rewrites the stream to add an out-of-context Dockerfile);
    Go's reader accepts that, Python's does not. Zero blocks after the data are harmless."""
    with open(archive, "rb+") as f:
        head = f.read(6)
        if any(head.startswith(magic) for magic in _COMPRESSED_MAGIC):
            return
        size = f.seek(0, os.SEEK_END)
        f.write(b"\0" * ((-size) % 512 + 1024))


def _refuse_symlinked_parent(dest: Path, rel: str) -> None:
    """A member must not be written through a symlink an earlier member created."""
    current = dest
    for part in rel.split("/")[:-1]:
        current = current / part
        if current.is_symlink():
            raise ContextError(f"invalid build context: tar member {rel!r} is below the symlink "
                               f"{os.path.relpath(current, dest)!r}")
