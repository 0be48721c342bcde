"""A snapshot layer (an overlay upper dir) as an OCI layer tar.

Overlay and OCI encode the same changes differently: a deletion is a character device 0/0 in the
upper dir and an empty ``.wh.<name>`` file in the tar; a directory hiding everything below it has
``trusted.overlay.opaque=y`` in the upper dir and a ``<dir>/.wh..wh..opq`` entry in the tar.

The tar is deterministic: entries depth-first in byte order of names, owners as stored with empty
user/group names, whole-second mtimes (as containerd writes them), no atime/ctime, PAX records only
for what ustar cannot hold (long names, xattrs), and Go's end of archive (two zero blocks, no
record padding). With ``clamp_mtime`` every later mtime becomes that time (``rewrite-timestamp``).
"""

from __future__ import annotations

import os
import stat as statmod
import tarfile
from pathlib import Path
from typing import BinaryIO

from buildkitpy.snapshot.layer import OPAQUE_XATTR, is_whiteout

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
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


class LayerTarWriter:
    """Writes one layer directory as a tar into ``out`` (anything with ``write``)."""

    def __init__(self, out: BinaryIO, clamp_mtime: int | None = None) -> None:
        self._out = out
        self._clamp = clamp_mtime
        self._written = 0
        self._tar = tarfile.TarFile(fileobj=self, mode="w", format=tarfile.PAX_FORMAT,
                                    copybufsize=_COPY_BUFFER)
        self._links: dict[tuple[int, int], str] = {}

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
        self._walk(str(root), "")
        self.write(b"\0" * (2 * tarfile.BLOCKSIZE))
        self._tar.closed = True  # the end marker is ours: tarfile would pad to a 10 KiB record

    def _walk(self, directory: str, prefix: str) -> None:
        for name in sorted(os.listdir(directory)):
            self._entry(os.path.join(directory, name), prefix + name, name)

    def _entry(self, path: str, name: str, base: str) -> None:
        st = os.lstat(path)
        mode = st.st_mode
        if is_whiteout(st):
            parent = name[: len(name) - len(base)]
            info = self._header(parent + WHITEOUT_PREFIX + base, st)
            info.mode = 0
            self._tar.addfile(info)
            return
        if statmod.S_ISSOCK(mode):
            return  # sockets do not travel in layers
        info = self._header(name, st)
        info.pax_headers = _xattrs(path)
        if statmod.S_ISDIR(mode):
            info.type = tarfile.DIRTYPE
            info.name = name + "/"
            self._tar.addfile(info)
            if _opaque(path):
                marker = self._header(name + "/" + OPAQUE_MARKER, st)
                marker.mode = 0
                self._tar.addfile(marker)
            self._walk(path, name + "/")
            return
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


def write_layer_tar(root: Path, out: BinaryIO, clamp_mtime: int | None = None) -> None:
    LayerTarWriter(out, clamp_mtime).write_layer(root)
