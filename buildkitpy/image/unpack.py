"""Applying an image layer tar onto a mounted snapshot.

The tar is applied to the *merged* view of a writable snapshot, so deletions become overlay
whiteouts (character device 0/0 in the upper dir) by the kernel itself, and a directory that is
removed and recreated becomes opaque (``trusted.overlay.opaque=y``); in copy mode the same calls
just edit a plain tree. OCI whiteouts in the tar:

- ``dir/.wh.name`` deletes ``dir/name`` of the lower layers;
- ``dir/.wh..wh..opq`` hides everything lower layers had in ``dir``, keeping what this layer adds.

Hostile archives: every path is resolved inside the root (``..`` is clamped, symlinks are followed
as if the root were ``/``), hard links must point inside the root, and ``trusted.overlay.*``
xattrs from the archive are dropped.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import stat
import subprocess
import tarfile
import zlib
from pathlib import Path
from typing import BinaryIO

from buildkitpy.errors import InvalidArgument
from buildkitpy.image.mediatypes import GZIP, UNCOMPRESSED, ZSTD
from buildkitpy.snapshot.fs import mkdir_all_in_root, secure_join

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_XATTR_PAX_PREFIX = "SCHILY.xattr."
_FORBIDDEN_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")


class LayerError(InvalidArgument):
    """A layer blob cannot be applied (corrupt, wrong digest or hostile)."""


class _HashingReader:
    """A read-only stream of decompressed bytes that hashes everything read through it."""

    def __init__(self, raw: BinaryIO, compression: str) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()
        self._proc: subprocess.Popen[bytes] | None = None
        self._buffer = b""
        self._pos = 0
        self._eof = False
        if compression == GZIP:
            self._zlib: zlib._Decompress | None = zlib.decompressobj(16 + zlib.MAX_WBITS)
        else:
            self._zlib = None
        if compression == ZSTD:
            # Python 3.11 has no zstd; the zstd CLI (Debian package zstd) decompresses in a process.
            try:
                self._proc = subprocess.Popen(["zstd", "-dc", "-q"], stdin=raw, stdout=subprocess.PIPE)
            except FileNotFoundError:
                raise LayerError("zstd-compressed layer, but the zstd program is not installed") from None
        elif compression not in (GZIP, UNCOMPRESSED):
            raise LayerError(f"unsupported layer compression {compression!r}")

    def _decompressed_chunk(self) -> bytes:
        if self._proc is not None:
            assert self._proc.stdout is not None
            return self._proc.stdout.read(1 << 20)
        if self._zlib is None:
            return self._raw.read(1 << 20)
        while True:
            if self._zlib.eof:
                rest = self._zlib.unused_data  # concatenated gzip members
                if not rest:
                    rest = self._raw.read(1 << 20)
                    if not rest:
                        return b""
                self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
                out = self._zlib.decompress(rest)
            else:
                compressed = self._raw.read(1 << 20)
                if not compressed:
                    out = self._zlib.flush()
                    if not self._zlib.eof:
                        raise LayerError("gzip layer is truncated")
                    return out
                out = self._zlib.decompress(compressed)
            if out:
                return out

    def read(self, size: int = -1) -> bytes:
        parts: list[bytes] = []
        wanted = size
        while wanted != 0:
            if self._pos >= len(self._buffer):
                if self._eof:
                    break
                try:
                    self._buffer, self._pos = self._decompressed_chunk(), 0
                except zlib.error as exc:
                    raise LayerError(f"corrupt gzip layer: {exc}") from None
                if not self._buffer:
                    self._eof = True
                    break
            end = len(self._buffer) if wanted < 0 else min(len(self._buffer), self._pos + wanted)
            parts.append(self._buffer[self._pos:end])
            if wanted > 0:
                wanted -= end - self._pos
            self._pos = end
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self._hash.update(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass

    def close(self) -> None:
        if self._proc is not None:
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            code = self._proc.wait()
            self._proc = None
            if code != 0:
                raise LayerError(f"zstd failed to decompress the layer (exit {code})")

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


def _remove(path: Path) -> None:
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _clean_name(name: str) -> str:
    """The member path relative to the root; ``..`` cannot climb above it."""
    return posixpath.normpath("/" + name).lstrip("/")


class _Applier:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.written: set[str] = set()  # paths this layer created, for opaque markers
        self.dir_times: list[tuple[Path, int]] = []

    def apply(self, tf: tarfile.TarFile) -> None:
        for member in tf:
            try:
                self._apply_member(tf, member)
            except (OSError, OverflowError, ValueError) as exc:  # what the tree refuses, in words
                reason = exc.strerror.lower() if isinstance(exc, OSError) and exc.strerror else str(exc)
                raise LayerError(f"layer entry {member.name!r}: {reason}") from None
        root_real = os.path.realpath(self.root)
        for path, mtime in reversed(self.dir_times):
            # a later entry of the layer may have removed the directory or put a symlink in its
            # path: then it is not the directory any more (and a time set through the symlink
            # would land outside the tree)
            if os.path.realpath(path) != os.path.join(root_real, os.path.relpath(path, self.root)):
                continue
            try:
                os.utime(path, (mtime, mtime), follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                pass
            except OSError as exc:
                raise LayerError(f"cannot set the time of {os.path.relpath(path, self.root)!r}: "
                                 f"{(exc.strerror or str(exc)).lower()}") from None

    def _apply_member(self, tf: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = _clean_name(member.name)
        if not name or name == ".":
            if member.isdir():
                self._metadata(self.root, member, defer_time=True)
            return
        parent_rel, base = posixpath.split(name)
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(parent_rel, base)
            return
        if parent_rel:
            mkdir_all_in_root(self.root, parent_rel)
        parent = secure_join(self.root, parent_rel)
        if not parent.is_dir():
            raise LayerError(f"layer entry {member.name!r}: parent is not a directory")
        self._place(tf, member, parent / base)
        self.written.add(name)

    def _whiteout(self, parent_rel: str, base: str) -> None:
        parent = secure_join(self.root, parent_rel)
        if base == OPAQUE_MARKER:
            if not parent.is_dir() or parent.is_symlink():
                return
            prefix = f"{parent_rel}/" if parent_rel else ""
            keep = {child for child in os.listdir(parent) if prefix + child in self.written}
            if not keep and parent != Path(self.root):
                # Remove and recreate: overlayfs then marks the new directory opaque.
                st = os.lstat(parent)
                shutil.rmtree(parent)
                os.mkdir(parent, stat.S_IMODE(st.st_mode))
                os.chown(parent, st.st_uid, st.st_gid)
                os.chmod(parent, stat.S_IMODE(st.st_mode))
                os.utime(parent, ns=(st.st_atime_ns, st.st_mtime_ns))
                return
            for child in os.listdir(parent):
                if child not in keep:
                    _remove(parent / child)
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # other AUFS metadata (.wh..wh.plnk etc.): not content
        victim = parent / base[len(WHITEOUT_PREFIX):]
        if victim.name in ("", ".", ".."):
            raise LayerError(f"invalid whiteout {parent_rel}/{base}")
        if os.path.lexists(victim):
            _remove(victim)

    def _place(self, tf: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
        exists = os.path.lexists(target)
        if exists:
            st = os.lstat(target)
            if not (member.isdir() and stat.S_ISDIR(st.st_mode)):
                _remove(target)
        if member.isdir():
            if not exists or not target.is_dir():
                os.mkdir(target, 0o700)
            self._metadata(target, member, defer_time=True)
            return
        if member.isreg():
            src = tf.extractfile(member)
            assert src is not None
            with src, open(target, "xb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        elif member.issym():
            os.symlink(member.linkname, target)
        elif member.islnk():
            link_name = _clean_name(member.linkname)
            source = secure_join(self.root, link_name, follow_final=False)
            is_real_dir = os.path.isdir(source) and not source.is_symlink()
            if not link_name or not os.path.lexists(source) or is_real_dir:
                raise LayerError(f"hard link {member.name!r} points to {member.linkname!r}, which is not "
                                 "a file in the layer's tree")
            os.link(source, target, follow_symlinks=False)
            return  # a hard link shares the target's metadata
        elif member.ischr() or member.isblk():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(target, kind | (member.mode & 0o7777), os.makedev(member.devmajor, member.devminor))
        elif member.isfifo():
            os.mkfifo(target, member.mode & 0o7777)
        else:
            raise LayerError(f"layer entry {member.name!r} has unsupported type {member.type!r}")
        self._metadata(target, member, defer_time=False)

    def _metadata(self, target: Path, member: tarfile.TarInfo, *, defer_time: bool) -> None:
        os.chown(target, member.uid, member.gid, follow_symlinks=False)
        if not member.issym():
            os.chmod(target, member.mode & 0o7777)
        for key, value in member.pax_headers.items():
            if not key.startswith(_XATTR_PAX_PREFIX):
                continue
            xattr = key[len(_XATTR_PAX_PREFIX):]
            if xattr.startswith(_FORBIDDEN_XATTR_PREFIXES):
                continue
            raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
            try:
                os.setxattr(target, xattr, raw, follow_symlinks=False)
            except OSError as exc:
                raise LayerError(f"cannot set xattr {xattr} on {member.name!r}: "
                                 f"{(exc.strerror or str(exc)).lower()}") from None
        mtime = int(member.mtime)
        if defer_time:
            self.dir_times.append((target, mtime))
        else:
            os.utime(target, (mtime, mtime), follow_symlinks=False)


def apply_layer_blob(blob: Path, compression: str, root: Path, expected_diff_id: str | None) -> str:
    """Apply a (compressed) layer tar at ``blob`` onto the tree at ``root``; returns the diff ID
    (sha256 of the uncompressed tar), verified against ``expected_diff_id`` when given."""
    with open(blob, "rb") as raw:
        reader = _HashingReader(raw, compression)
        try:
            try:
                with tarfile.open(fileobj=reader, mode="r|") as tf:  # type: ignore[call-overload]
                    _Applier(root).apply(tf)
            except tarfile.TarError as exc:
                raise LayerError(f"layer {blob.name[:12]} is not a valid tar: {exc}") from None
            reader.drain()
        finally:
            reader.close()
    diff_id = reader.digest()
    if expected_diff_id and diff_id != expected_diff_id:
        raise LayerError(f"layer sha256:{blob.name} unpacks to {diff_id}, but the image config says "
                         f"{expected_diff_id}")
    return diff_id
