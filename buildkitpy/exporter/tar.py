"""The ``tar`` exporter: the result's files as one tar stream written to the client (raw
``BytesMessage`` chunks over the session's ``FileSend``)."""

from __future__ import annotations

import os
import secrets
import stat as statmod
import tarfile
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

import anyio

from buildkitpy.exporter import ExportContext
from buildkitpy.exporter.local import mounted
from buildkitpy.session import filesync

CHUNK = 1 << 20


class _ChunkWriter:
    """A write-only file object that hands full chunks to ``emit`` (called from a worker thread)."""

    def __init__(self, emit: Callable[[bytes], None]) -> None:
        self._emit = emit
        self._buf = bytearray()

    def write(self, data: bytes) -> int:
        self._buf += data
        while len(self._buf) >= CHUNK:
            self._emit(bytes(self._buf[:CHUNK]))
            del self._buf[:CHUNK]
        return len(data)

    def flush(self) -> None:
        if self._buf:
            self._emit(bytes(self._buf))
            self._buf.clear()


def write_trees(roots: list[tuple[str, Path]], out) -> None:
    """Write the trees as one tar stream: sorted, relative names (each under its prefix), owners
    and modes as stored, hardlinks kept."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        seen: dict[tuple[int, int], str] = {}

        def add(path: Path, name: str) -> None:
            st = os.lstat(path)
            info = tarfile.TarInfo(name)
            info.mode = statmod.S_IMODE(st.st_mode)
            info.uid, info.gid = st.st_uid, st.st_gid
            info.mtime = st.st_mtime
            info.uname = info.gname = ""
            if statmod.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                for child in sorted(os.listdir(path)):
                    add(path / child, f"{name}/{child}" if name else child)
                return
            if statmod.S_ISLNK(st.st_mode):
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
                tar.addfile(info)
            elif statmod.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in seen:
                    info.type, info.linkname = tarfile.LNKTYPE, seen[key]
                    tar.addfile(info)
                    return
                seen[key] = name
                info.size = st.st_size
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            elif statmod.S_ISFIFO(st.st_mode):
                info.type = tarfile.FIFOTYPE
                tar.addfile(info)
            elif statmod.S_ISCHR(st.st_mode) or statmod.S_ISBLK(st.st_mode):
                info.type = tarfile.CHRTYPE if statmod.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
                info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
                tar.addfile(info)

        for prefix, root in roots:
            if prefix:
                add(root, prefix.rstrip("/"))
                continue
            for child in sorted(os.listdir(root)):
                add(root / child, child)
    out.flush()


async def export(ctx: ExportContext) -> dict[str, str]:
    session = ctx.require_session("tar")
    vertex = "sha256:" + secrets.token_hex(32)
    ctx.progress.vertex(vertex, "sending tarball", started=True)
    send, receive = anyio.create_memory_object_stream[bytes](4)
    result = ctx.result
    refs = [(f"{k.replace('/', '_')}/", r) for k, r in sorted(result.refs.items())] \
        if result.refs is not None and len(result.refs) > 1 else \
        [("", result.ref if result.refs is None else next(iter(result.refs.values()), None))]

    def emit(chunk: bytes) -> None:
        anyio.from_thread.run(send.send, chunk)

    async def produce() -> None:
        async with send, AsyncExitStack() as stack:
            roots = [(prefix, await stack.enter_async_context(mounted(ctx, ref))) for prefix, ref in refs]
            await anyio.to_thread.run_sync(write_trees, roots, _ChunkWriter(emit))

    async def chunks():
        async with receive:
            async for chunk in receive:
                yield chunk

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            await filesync.send_bytes(session.channel, chunks(), exporter_id=str(ctx.index))
    except BaseException as exc:
        ctx.progress.vertex(vertex, error=str(exc) or type(exc).__name__, completed=True)
        raise
    ctx.progress.vertex(vertex, completed=True)
    return {}
