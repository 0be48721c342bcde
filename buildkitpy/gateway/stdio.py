"""gRPC over a process's stdin/stdout, both ways, with plain grpcio on each end.

A frontend image talks LLBBridge over its stdio: it is the gRPC client, writing HTTP/2 to stdout and
reading the daemon's answers from stdin (BuildKit's grpcclient). grpcio can only listen on and dial
sockets, so each side puts a private unix socket in between and copies bytes:

- daemon: :func:`serve_over_pipes` runs an ``LLBBridge`` server on a socket and
  returns a :class:`PipeConnection` whose ``feed`` takes what the frontend wrote and whose
  ``output`` yields what goes to the frontend's stdin;
- frontend: :func:`stdio_channel` listens on a socket, accepts grpcio's one connection and copies it
  to stdout / from stdin.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import grpc
from anyio.abc import SocketStream

_CHUNK = 64 * 1024
# Frontends send big definitions and read whole files: no message size limit but memory.
GRPC_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


class PipeConnection:
    """One client connection to a private gRPC server, fed from / drained to a process's pipes.

    ``closed_by_server`` tells whether the server hung up first (it does when the bytes it got
    are not HTTP/2, i.e. the frontend wrote garbage to stdout)."""

    def __init__(self, stream: SocketStream) -> None:
        self._stream = stream
        self.closed_by_server = anyio.Event()
        self.received = 0  # bytes the frontend wrote

    async def feed(self, chunk: bytes) -> None:
        """Bytes the process wrote to stdout, for the server."""
        self.received += len(chunk)
        try:
            await self._stream.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self.closed_by_server.set()

    async def output(self) -> AsyncIterator[bytes]:
        """The server's bytes, for the process's stdin; ends when the server closes."""
        while True:
            try:
                chunk = await self._stream.receive(_CHUNK)
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                self.closed_by_server.set()
                return
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()


# gRPC refuses unix socket paths longer than this (sun_path is 108 bytes with its NUL)
_MAX_SOCKET_PATH = 107


@contextlib.asynccontextmanager
async def serve_over_pipes(add_services: Callable[[grpc.aio.Server], None],
                           socket_dir: Path) -> AsyncIterator[PipeConnection]:
    """A private gRPC server with ``add_services`` and one connection to it. Its socket goes in a
    fresh 0700 directory under ``socket_dir``, or under the system's temporary directory when that
    path would not fit a unix socket address (a deep ``--root``)."""
    socket_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if len(str(socket_dir)) + len("/fe-12345678/bridge.sock") > _MAX_SOCKET_PATH:
        socket_dir = Path(tempfile.gettempdir())
    tmp = Path(tempfile.mkdtemp(prefix="fe-", dir=socket_dir))
    path = tmp / "bridge.sock"
    server = grpc.aio.server(options=GRPC_OPTIONS)
    add_services(server)
    server.add_insecure_port(f"unix:{path}")
    await server.start()
    try:
        stream = await anyio.connect_unix(str(path))
        conn = PipeConnection(stream)
        try:
            yield conn
        finally:
            with anyio.CancelScope(shield=True):
                await conn.aclose()
    finally:
        with anyio.CancelScope(shield=True):
            await server.stop(grace=None)
            with contextlib.suppress(OSError):
                path.unlink()
            with contextlib.suppress(OSError):
                tmp.rmdir()


@contextlib.asynccontextmanager
async def stdio_channel(stdin_fd: int | None = None,
                        stdout_fd: int | None = None) -> AsyncIterator[grpc.aio.Channel]:
    """A gRPC channel whose one connection is this process's stdin (in) and stdout (out)."""
    loop = asyncio.get_running_loop()
    in_file = os.fdopen(sys.stdin.fileno() if stdin_fd is None else stdin_fd, "rb", 0, closefd=False)
    out_file = os.fdopen(sys.stdout.fileno() if stdout_fd is None else stdout_fd, "wb", 0, closefd=False)
    reader = asyncio.StreamReader(limit=_CHUNK)
    read_transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), in_file)
    write_transport, write_protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin,
                                                                    out_file)
    writer = asyncio.StreamWriter(write_transport, write_protocol, None, loop)
    connected = asyncio.Event()
    copies: set[asyncio.Task] = set()

    async def on_connection(sock_reader: asyncio.StreamReader, sock_writer: asyncio.StreamWriter) -> None:
        if connected.is_set():  # grpcio redials after a failure: there is no second stdio
            sock_writer.close()
            return
        connected.set()
        for task in (_copy(reader, sock_writer, eof=True), _copy(sock_reader, writer, eof=False)):
            t = asyncio.ensure_future(task)
            copies.add(t)

    tmp = Path(tempfile.mkdtemp(prefix="buildkitpy-frontend-"))
    path = tmp / "stdio.sock"
    server = await asyncio.start_unix_server(on_connection, str(path))
    channel = grpc.aio.insecure_channel(f"unix:{path}", options=GRPC_OPTIONS)
    try:
        yield channel
    finally:
        await channel.close()
        server.close()
        for t in copies:
            t.cancel()
        read_transport.close()
        write_transport.close()
        with contextlib.suppress(OSError):
            path.unlink()
        with contextlib.suppress(OSError):
            tmp.rmdir()


async def _copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, eof: bool) -> None:
    with contextlib.suppress(ConnectionError, asyncio.CancelledError):
        while chunk := await src.read(_CHUNK):
            dst.write(chunk)
            await dst.drain()
        if eof and dst.can_write_eof():
            dst.write_eof()
