"""The ``tar`` exporter: the result's files as one tar stream written to the client (raw
``BytesMessage`` chunks over the session's ``FileSend``).

The stream is laid out like BuildKit's (Go's ``archive/tar`` defaults, as fsutil's ``WriteTar``
writes it): sorted paths, directories with a trailing ``/``, mtimes rounded to the second, plain
ustar headers and a PAX header only for what ustar cannot hold (long or non-ASCII names, large
numbers). Headers are packed here rather than through ``tarfile`` and file contents are read
straight into the outgoing messages, which keeps the per-file cost of a 10,000-file context low.
"""

from __future__ import annotations

import os
import secrets
import stat as statmod
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import anyio

from buildkitpy.exporter import ExportContext
from buildkitpy.exporter.handoff import Handoff, HandoffClosed
from buildkitpy.exporter.local import mounted
from buildkitpy.session import filesync

# Outgoing message payload. Go's gRPC receives messages of up to 1 MiB into pooled buffers and
# larger ones into fresh allocations: context-again (a 200 MB tar to buildctl) took 0.85 s with
# 2 MiB messages, 0.73-0.77 s with 512 KiB ones, 0.73-0.82 s with 1 MiB ones and 0.86 s with
# 256 KiB ones (medians of 6, in three alternating runs).
CHUNK = 512 << 10
# Chunks the tar thread may have ready before it waits for the session to take one.
HANDOFF_DEPTH = 4
BLOCK = 512
_ZEROS = bytes(BLOCK)
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


class TarError(OSError):
    """The tree changed under the exporter (a file shorter than its size when listed)."""


class _Chunker:
    """Lays the stream out in one reused buffer and hands ``emit`` each ``CHUNK`` of it already
    encoded as a ``BytesMessage``: file contents are read straight into the buffer (``readv``), a
    few bytes of room before the payload take the message's tag and length, so every byte is
    copied once from the page cache and once into the message, with no per-file allocation."""

    def __init__(self, emit: Callable[[bytes], None]) -> None:
        self._emit = emit
        self._buf = bytearray(filesync.MESSAGE_HEADROOM + CHUNK)
        self._view = memoryview(self._buf)
        self._pos = filesync.MESSAGE_HEADROOM  # where the next byte of the stream goes
        self._end = len(self._buf)
        self.total = 0

    def put(self, data: bytes) -> None:
        pos = self._pos
        end = pos + len(data)
        if end <= self._end:  # a header or padding: mostly fits
            self._buf[pos:end] = data
            self._pos = end
            return
        view = memoryview(data)
        while view:
            room = self._end - self._pos
            if not room:
                self.flush()
                continue
            n = min(room, len(view))
            self._view[self._pos:self._pos + n] = view[:n]
            self._pos += n
            view = view[n:]

    def read_file(self, fd: int, size: int, path: str) -> None:
        """Append exactly ``size`` bytes of the open file ``fd``."""
        left = size
        while left:
            room = self._end - self._pos
            if not room:
                self.flush()
                continue
            n = os.readv(fd, (self._view[self._pos:self._pos + min(room, left)],))
            if not n:
                raise TarError(f"{path}: file shrank while being exported ({size} bytes listed)")
            self._pos += n
            left -= n

    def flush(self) -> None:
        size = self._pos - filesync.MESSAGE_HEADROOM
        if size:
            self.total += size
            self._emit(filesync.frame_bytes_message(self._view, size))
            self._pos = filesync.MESSAGE_HEADROOM


_MAGIC = b"ustar\x0000"
_FIXED_SUM = sum(b" " * 8) + sum(_MAGIC)


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _ustar_header(name: str, mode: int, uid: int, gid: int, size: int, mtime: int, typeflag: bytes,
                  linkname: str = "", devmajor: int = 0, devminor: int = 0) -> bytes | None:
    """A 512-byte ustar header, or None when a field does not fit (then PAX is needed)."""
    try:
        bname, blink = name.encode("ascii"), linkname.encode("ascii")
    except UnicodeEncodeError:
        return None
    if len(blink) > 100:
        return None
    prefix = b""
    if len(bname) > 100:  # split at a slash: prefix (up to 155) / name (up to 100)
        cut = bname.find(b"/", len(bname) - 101)
        if cut <= 0 or cut > 155 or cut == len(bname) - 1:
            return None
        prefix, bname = bname[:cut], bname[cut + 1:]
    if not (mode < 0o10000000 and 0 <= uid < 0o10000000 and 0 <= gid < 0o10000000
            and size < 0o100000000000 and 0 <= mtime < 0o100000000000
            and devmajor < 0o10000000 and devminor < 0o10000000):
        return None
    numbers = (_octal(mode, 8), _octal(uid, 8), _octal(gid, 8), _octal(size, 12), _octal(mtime, 12))
    devices = (_octal(devmajor, 8), _octal(devminor, 8))
    # the checksum counts every header byte (itself as spaces); only these fields are not zero
    checksum = _FIXED_SUM + sum(map(sum, numbers)) + sum(map(sum, devices)) + sum(bname) + sum(blink) \
        + sum(prefix) + typeflag[0]
    return b"".join((bname.ljust(100, b"\0"), *numbers, b"%06o\0 " % checksum, typeflag,
                     blink.ljust(100, b"\0"), _MAGIC, bytes(64), *devices, prefix.ljust(155, b"\0"),
                     bytes(12)))


# The header of most entries (short ASCII name, no link, no device, small numbers), in two
# formats: the fields before the checksum, then the checksum and the rest, which is the same for
# every such entry of a type (its checksum share precomputed, with the checksum field as spaces).
_PLAIN_HEAD = b"%s%07o\0%07o\0%07o\0%011o\0%011o\0"
_PLAIN_TAILS = {kind: kind + bytes(100) + _MAGIC + bytes(64) + _octal(0, 8) * 2 + bytes(167)
                for kind in (tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE)}
_PLAIN_TAIL_SUMS = {kind: sum(b" " * 8) + sum(tail) for kind, tail in _PLAIN_TAILS.items()}


def _plain_header(name: str, mode: int, uid: int, gid: int, size: int, mtime: int,
                  typeflag: bytes) -> bytes | None:
    """``_ustar_header`` of an entry without link or device numbers, made at once, or None when
    it needs more than that (a long or non-ASCII name, a number too large for its field)."""
    if not (len(name) <= 100 and name.isascii() and mode < 0o10000000 and 0 <= uid < 0o10000000
            and 0 <= gid < 0o10000000 and size < 0o100000000000 and 0 <= mtime < 0o100000000000):
        return None
    head = _PLAIN_HEAD % (name.encode("ascii").ljust(100, b"\0"), mode, uid, gid, size, mtime)
    return b"%s%06o\0 %s" % (head, sum(head) + _PLAIN_TAIL_SUMS[typeflag], _PLAIN_TAILS[typeflag])


def _header(name: str, st: os.stat_result, typeflag: bytes, size: int = 0, linkname: str = "",
            devmajor: int = 0, devminor: int = 0) -> bytes:
    mode = statmod.S_IMODE(st.st_mode)
    mtime = (st.st_mtime_ns + 500_000_000) // 1_000_000_000  # Go rounds to the nearest second
    if typeflag in _PLAIN_TAILS and not (linkname or devmajor or devminor):
        plain = _plain_header(name, mode, st.st_uid, st.st_gid, size, mtime, typeflag)
        if plain is not None:
            return plain
    header = _ustar_header(name, mode, st.st_uid, st.st_gid, size, mtime, typeflag, linkname,
                           devmajor, devminor)
    if header is not None:
        return header
    info = tarfile.TarInfo(name)
    info.mode, info.uid, info.gid, info.size, info.mtime = mode, st.st_uid, st.st_gid, size, mtime
    info.type, info.linkname, info.devmajor, info.devminor = typeflag, linkname, devmajor, devminor
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _copy_file(path: str, size: int, out: _Chunker) -> None:
    fd = os.open(path, _READ_FLAGS)
    try:
        out.read_file(fd, size, path)
    finally:
        os.close(fd)
    if size % BLOCK:
        out.put(_ZEROS[size % BLOCK:])


def _entries(root: str, name: str) -> Iterator[tuple[str, str, os.stat_result]]:
    """(path, tar name, lstat) for ``root`` (unless ``name`` is empty) and everything below,
    sorted, depth first, without recursion (no depth limit)."""

    def children(path: str, prefix: str) -> Iterator[tuple[str, str]]:
        return iter([(os.path.join(path, c), f"{prefix}/{c}" if prefix else c)
                     for c in sorted(os.listdir(path))])

    if name:
        yield root, name, os.lstat(root)
    stack = [children(root, name)]
    while stack:
        for path, child_name in stack[-1]:
            st = os.lstat(path)
            yield path, child_name, st
            if statmod.S_ISDIR(st.st_mode):
                stack.append(children(path, child_name))
                break
        else:
            stack.pop()


def write_trees(roots: list[tuple[str, Path]], emit: Callable[[bytes], None],
                extra: list[tuple[str, bytes]] | None = None) -> int:
    """Write the trees as one tar stream through ``emit``, in ``BytesMessage`` encodings of up to
    ``CHUNK`` payload bytes (``filesync.send_messages`` sends them as they are): sorted, relative
    names (each under its prefix), owners and modes as stored, hardlinks kept; then the ``extra``
    (name, content) files (0600, root, now: the provenance statement). Returns the bytes written."""
    out = _Chunker(emit)
    for prefix, root in roots:
        # hard links are found per tree, as fsutil's SubDirFS walks each platform's dir on its
        # own: two platforms' trees may be one snapshot, or share inodes (solver.ops.fscopy)
        seen: dict[tuple[int, int], str] = {}
        for path, name, st in _entries(str(root), prefix.rstrip("/")):
            fmt = statmod.S_IFMT(st.st_mode)
            if fmt == statmod.S_IFREG:
                if st.st_nlink > 1:
                    key = (st.st_dev, st.st_ino)
                    first = seen.get(key)
                    if first is not None:
                        out.put(_header(name, st, tarfile.LNKTYPE, linkname=first))
                        continue
                    seen[key] = name
                out.put(_header(name, st, tarfile.REGTYPE, st.st_size))
                _copy_file(path, st.st_size, out)
            elif fmt == statmod.S_IFDIR:
                out.put(_header(name + "/", st, tarfile.DIRTYPE))
            elif fmt == statmod.S_IFLNK:
                out.put(_header(name, st, tarfile.SYMTYPE, linkname=os.readlink(path)))
            elif fmt == statmod.S_IFIFO:
                out.put(_header(name, st, tarfile.FIFOTYPE))
            elif fmt in (statmod.S_IFCHR, statmod.S_IFBLK):
                kind = tarfile.CHRTYPE if fmt == statmod.S_IFCHR else tarfile.BLKTYPE
                out.put(_header(name, st, kind, devmajor=os.major(st.st_rdev),
                                devminor=os.minor(st.st_rdev)))
    for name, data in extra or []:
        header = _ustar_header(name, 0o600, 0, 0, len(data), int(time.time()), tarfile.REGTYPE, "", 0, 0)
        if header is None:
            info = tarfile.TarInfo(name)
            info.mode, info.size, info.mtime = 0o600, len(data), int(time.time())
            header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        out.put(header)
        out.put(data)
        if len(data) % BLOCK:
            out.put(_ZEROS[len(data) % BLOCK:])
    out.put(_ZEROS * 2)
    out.flush()
    return out.total


async def export(ctx: ExportContext) -> dict[str, str]:
    session = ctx.require_session("tar")
    vertex = "sha256:" + secrets.token_hex(32)
    # As BuildKit shows it: the exporter's vertex, and "sending tarball" as its status.
    ctx.progress.vertex(vertex, "exporting to client tarball", started=True)
    ctx.progress.status(vertex, "sending tarball", name="sending tarball")
    handoff = Handoff[bytes](HANDOFF_DEPTH)
    result = ctx.result
    refs = [(f"{k.replace('/', '_')}/", r) for k, r in sorted(result.refs.items())] \
        if result.refs is not None and len(result.refs) > 1 else \
        [("", result.ref if result.refs is None else next(iter(result.refs.values()), None))]
    keys = [k for k, _ in sorted(result.refs.items())] if result.refs is not None and len(result.refs) > 1 \
        else [None if result.refs is None else next(iter(result.refs), None)]

    async def produce() -> None:
        # Only a complete stream is finished: on a failure the task group cancels the sending
        # task, so the client's call fails instead of ending with a tar cut short.
        async with AsyncExitStack() as stack:
            roots = [(prefix, await stack.enter_async_context(mounted(ctx, ref))) for prefix, ref in refs]
            extra = []  # the attestation statements next to the files (buildkitpy.attest.files)
            if ctx.provenance is not None and ctx.provenance.files_wanted():
                for (prefix, root), key in zip(roots, keys, strict=True):
                    statements = await anyio.to_thread.run_sync(ctx.provenance.statement_files, key,
                                                                root, ctx.attrs)
                    extra += [(prefix + name, data) for name, data in statements]
            try:
                await anyio.to_thread.run_sync(write_trees, roots, handoff.put, extra)
            except HandoffClosed:
                return  # the sending task stopped: its failure is the one reported
            handoff.finish()  # the stream ends while the trees are let go

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            async with handoff:  # leaving it stops the thread's put()s
                await filesync.send_messages(session.channel, handoff, exporter_id=str(ctx.index))
    except BaseException as exc:
        ctx.progress.vertex(vertex, error=str(exc) or type(exc).__name__, completed=True)
        raise
    ctx.progress.status(vertex, "sending tarball", name="sending tarball", completed=True)
    ctx.progress.vertex(vertex, completed=True)
    return {}
