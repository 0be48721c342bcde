"""A snapshot layer (an overlay upper dir) as an OCI layer tar.

Overlay and OCI encode the same changes differently: a deletion is a character device 0/0 in the
upper dir and an empty ``.wh.<name>`` file in the tar; a directory hiding everything below it has
``trusted.overlay.opaque=y`` in the upper dir and a ``<dir>/.wh..wh..opq`` entry in the tar.

The tar is deterministic: entries depth-first in byte order of names, owners as stored with empty
user/group names, whole-second mtimes (as containerd writes them), no atime/ctime, PAX records only
for what ustar cannot hold (long names, xattrs), and Go's end of archive (two zero blocks, no
record padding). With ``clamp_mtime`` every later mtime becomes that time (``rewrite-timestamp``).

Given the layer's lower layers, the tar holds the layer's changes as BuildKit's overlay differ
reports them: upper entries equal to the lower ones (directories copied up only because something
below them changed, mount-point parents, untouched copy-ups) are left out unless they are the
parent of a change, whiteouts of paths no lower layer has are dropped, and an opaque directory
becomes one ``.wh.<name>`` per lower entry it hides. Without lower layers (a computed diff) the
upper dir is written as it is, opaque markers included.
"""

from __future__ import annotations

import os
import stat as statmod
import tarfile
from pathlib import Path
from typing import Protocol

from buildkitpy.snapshot.layer import is_opaque, is_whiteout
from buildkitpy.snapshot.lowerview import LowerView, same_entry

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_SKIPPED_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
_COPY_BUFFER = 1 << 20


def _xattrs(path: str) -> dict[str, str]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out: dict[str, str] = {}
    for name in sorted(names):
        if name.startswith(_SKIPPED_XATTR_PREFIXES):
            continue
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
        out["SCHILY.xattr." + name] = value.decode("utf-8", "surrogateescape")
    return out


def _opaque(path: str) -> bool:
    return is_opaque(path)


class _Parent:
    """A directory on the walk's current path whose header is written only if something below it
    is (BuildKit includes the parents of every change)."""

    __slots__ = ("name", "st", "written")

    def __init__(self, name: str, st: os.stat_result, written: bool) -> None:
        self.name, self.st, self.written = name, st, written


class ByteSink(Protocol):
    """Where a layer tar goes: an open binary file, or a chunk queue feeding hash/compress threads."""

    def write(self, data: bytes, /) -> object: ...


class LayerTarWriter:
    """Writes one layer directory as a tar into ``out`` (anything with ``write``)."""

    def __init__(self, out: ByteSink, clamp_mtime: int | None = None,
                 lowers: list[Path] | None = None) -> None:
        self._out = out
        self._clamp = clamp_mtime
        self._written = 0
        # typeshed's _Fileobj asks for read/seek/close too; TarFile in mode "w" only calls write
        # and tell (and never closes a fileobj it was handed)
        self._tar = tarfile.TarFile(fileobj=self, mode="w",  # type: ignore[arg-type]
                                    format=tarfile.PAX_FORMAT, copybufsize=_COPY_BUFFER)
        self._links: dict[tuple[int, int], str] = {}
        self._lower = LowerView(lowers) if lowers is not None else None
        self._root = ""

    # file-object face for tarfile
    def write(self, data: bytes) -> int:
        self._out.write(data)
        self._written += len(data)
        return len(data)

    def tell(self) -> int:
        return self._written

    def _mtime(self, st: os.stat_result) -> int:
        mtime = int(st.st_mtime)
        if self._clamp is not None and mtime > self._clamp:
            return self._clamp
        return mtime

    def _header(self, name: str, st: os.stat_result) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.mode = statmod.S_IMODE(st.st_mode)
        info.uid, info.gid = st.st_uid, st.st_gid
        info.uname = info.gname = ""
        info.mtime = self._mtime(st)
        return info

    def write_layer(self, root: Path) -> None:
        """The whole layer, then the end-of-archive marker."""
        self._root = str(root)
        self._walk(self._root, (), [], compare=self._lower is not None)
        self.write(b"\0" * (2 * tarfile.BLOCKSIZE))
        # the end marker is ours: tarfile would pad to a 10 KiB record. TarFile.closed is a plain
        # attribute set in __init__ that typeshed does not declare
        self._tar.closed = True  # type: ignore[attr-defined]

    def _parents(self, parents: list[_Parent]) -> None:
        for parent in parents:
            if not parent.written:
                self._dir_header(os.path.join(self._root, parent.name), parent.name, parent.st)
                parent.written = True

    def _dir_header(self, path: str, name: str, st: os.stat_result) -> None:
        info = self._header(name + "/", st)
        info.type = tarfile.DIRTYPE
        info.pax_headers = _xattrs(path)
        self._tar.addfile(info)

    def _whiteout(self, parts: tuple[str, ...], st: os.stat_result) -> None:
        info = self._header("/".join(parts[:-1] + (WHITEOUT_PREFIX + parts[-1],)), st)
        info.mode = info.uid = info.gid = 0
        self._tar.addfile(info)

    def _walk(self, directory: str, parts: tuple[str, ...], parents: list[_Parent], *,
              compare: bool, hidden: list[str] | None = None) -> None:
        """Entries below ``directory`` (``parts`` in the layer). ``compare``: the lower layers may
        hold these paths; ``hidden``: lower names an opaque ``directory`` hides."""
        names = sorted(os.listdir(directory))
        if hidden:
            present = set(names)
            gone = [n for n in hidden if n not in present]
            if gone:
                self._parents(parents)
                st = os.lstat(directory)
                for name in gone:
                    self._whiteout(parts + (name,), st)
        for name in names:
            self._entry(os.path.join(directory, name), parts + (name,), parents, compare)

    def _entry(self, path: str, parts: tuple[str, ...], parents: list[_Parent],
               compare: bool) -> None:
        st = os.lstat(path)
        mode = st.st_mode
        name = "/".join(parts)
        lower = self._lower.lookup(parts) if compare and self._lower is not None else None
        if is_whiteout(st):
            if self._lower is not None and lower is None:
                return  # nothing below to delete
            self._parents(parents)
            self._whiteout(parts, st)
            return
        if statmod.S_ISSOCK(mode):
            return  # sockets do not travel in layers
        if statmod.S_ISDIR(mode):
            self._directory(path, parts, st, lower, parents)
            return
        if lower is not None and same_entry(lower[0], lower[1], path, st):
            return
        self._parents(parents)
        info = self._header(name, st)
        info.pax_headers = _xattrs(path)
        if statmod.S_ISREG(mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1:
                first = self._links.get(key)
                if first is not None:
                    info.type, info.linkname = tarfile.LNKTYPE, first
                    self._tar.addfile(info)
                    return
                self._links[key] = name
            info.size = st.st_size
            with open(path, "rb") as f:
                self._tar.addfile(info, f)
        elif statmod.S_ISLNK(mode):
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
            self._tar.addfile(info)
        elif statmod.S_ISFIFO(mode):
            info.type = tarfile.FIFOTYPE
            self._tar.addfile(info)
        elif statmod.S_ISCHR(mode) or statmod.S_ISBLK(mode):
            info.type = tarfile.CHRTYPE if statmod.S_ISCHR(mode) else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
            self._tar.addfile(info)

    def _directory(self, path: str, parts: tuple[str, ...], st: os.stat_result,
                   lower: tuple[str, os.stat_result] | None, parents: list[_Parent]) -> None:
        name = "/".join(parts)
        if self._lower is None:  # no lower layers known: the upper dir as it is
            self._parents(parents)
            self._dir_header(path, name, st)
            if _opaque(path):
                marker = self._header(name + "/" + OPAQUE_MARKER, st)
                marker.mode = 0
                self._tar.addfile(marker)
            self._walk(path, parts, parents, compare=False)
            return
        in_lower = lower is not None and statmod.S_ISDIR(lower[1].st_mode)
        unchanged = in_lower and lower is not None and same_entry(lower[0], lower[1], path, st)
        if not unchanged:
            self._parents(parents)
            self._dir_header(path, name, st)
        hidden = self._lower.listdir(parts) if in_lower and _opaque(path) else None
        parents.append(_Parent(name, st, written=not unchanged))
        try:
            self._walk(path, parts, parents, compare=in_lower, hidden=hidden)
        finally:
            parents.pop()


def write_layer_tar(root: Path, out: ByteSink, clamp_mtime: int | None = None,
                    lowers: list[Path] | None = None) -> None:
    """``lowers``: the layers below this one, lowest first (None: unknown, write the dir as is)."""
    LayerTarWriter(out, clamp_mtime, lowers).write_layer(root)
