"""Go ``os.FileMode`` bits (what fsutil puts in ``Stat.mode``) and POSIX ``st_mode`` conversion.

Go keeps the file type and the setuid/setgid/sticky bits in high bits of a uint32 instead of the
POSIX ``S_IF*`` nibble, so every ``Stat.mode`` on the wire must be converted both ways.
"""

from __future__ import annotations

import stat as st

MODE_DIR = 1 << 31
MODE_APPEND = 1 << 30
MODE_EXCLUSIVE = 1 << 29
MODE_TEMPORARY = 1 << 28
MODE_SYMLINK = 1 << 27
MODE_DEVICE = 1 << 26
MODE_NAMED_PIPE = 1 << 25
MODE_SOCKET = 1 << 24
MODE_SETUID = 1 << 23
MODE_SETGID = 1 << 22
MODE_CHAR_DEVICE = 1 << 21
MODE_STICKY = 1 << 20
MODE_IRREGULAR = 1 << 19

MODE_PERM = 0o777
# Go's os.ModeType: any of these bits means "not a regular file".
MODE_TYPE = (MODE_DIR | MODE_SYMLINK | MODE_NAMED_PIPE | MODE_SOCKET | MODE_DEVICE | MODE_CHAR_DEVICE
             | MODE_IRREGULAR)


def go_mode_from_posix(st_mode: int) -> int:
    """Go ``os.FileMode`` for a POSIX ``st_mode`` (as Go's ``os.Lstat`` computes it on Linux)."""
    mode = st_mode & MODE_PERM
    fmt = st.S_IFMT(st_mode)
    if fmt == st.S_IFDIR:
        mode |= MODE_DIR
    elif fmt == st.S_IFLNK:
        mode |= MODE_SYMLINK
    elif fmt == st.S_IFBLK:
        mode |= MODE_DEVICE
    elif fmt == st.S_IFCHR:
        mode |= MODE_DEVICE | MODE_CHAR_DEVICE
    elif fmt == st.S_IFIFO:
        mode |= MODE_NAMED_PIPE
    elif fmt == st.S_IFSOCK:
        mode |= MODE_SOCKET
    if st_mode & st.S_ISUID:
        mode |= MODE_SETUID
    if st_mode & st.S_ISGID:
        mode |= MODE_SETGID
    if st_mode & st.S_ISVTX:
        mode |= MODE_STICKY
    return mode


def posix_mode_from_go(mode: int) -> int:
    """POSIX ``st_mode`` (type nibble + permission/special bits) for a Go ``os.FileMode``.

    ``ModeIrregular`` (and a mode with no type bits) maps to a regular file.
    """
    out = permission_bits_from_go(mode)
    if mode & MODE_DIR:
        out |= st.S_IFDIR
    elif mode & MODE_SYMLINK:
        out |= st.S_IFLNK
    elif mode & MODE_DEVICE:
        out |= st.S_IFCHR if mode & MODE_CHAR_DEVICE else st.S_IFBLK
    elif mode & MODE_NAMED_PIPE:
        out |= st.S_IFIFO
    elif mode & MODE_SOCKET:
        out |= st.S_IFSOCK
    else:
        out |= st.S_IFREG
    return out


def permission_bits_from_go(mode: int) -> int:
    """The ``chmod`` argument for a Go mode: rwx bits plus setuid/setgid/sticky."""
    out = mode & MODE_PERM
    if mode & MODE_SETUID:
        out |= st.S_ISUID
    if mode & MODE_SETGID:
        out |= st.S_ISGID
    if mode & MODE_STICKY:
        out |= st.S_ISVTX
    return out


def is_dir(mode: int) -> bool:
    return bool(mode & MODE_DIR)


def is_symlink(mode: int) -> bool:
    return bool(mode & MODE_SYMLINK)


def is_regular(mode: int) -> bool:
    """True when the receiver may REQ this entry's contents (fsutil's ``fileCanRequestData``)."""
    return mode & MODE_TYPE == 0


def is_device(mode: int) -> bool:
    return bool(mode & MODE_DEVICE)


def is_named_pipe(mode: int) -> bool:
    return bool(mode & MODE_NAMED_PIPE)


def describe(mode: int) -> str:
    """Short human name of an entry's type, for error messages."""
    if mode & MODE_DIR:
        return "directory"
    if mode & MODE_SYMLINK:
        return "symlink"
    if mode & MODE_DEVICE:
        return "character device" if mode & MODE_CHAR_DEVICE else "block device"
    if mode & MODE_NAMED_PIPE:
        return "fifo"
    if mode & MODE_SOCKET:
        return "socket"
    if mode & MODE_IRREGULAR:
        return "irregular file"
    return "regular file"


# Short names other packages already use.
to_go_mode = go_mode_from_posix
from_go_mode = posix_mode_from_go
