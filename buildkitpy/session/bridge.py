"""A grpcio server over a byte pipe: the ``Control.Session`` BytesMessage stream carries a whole
HTTP/2 connection, and grpcio can only speak HTTP/2 over sockets it opens itself.

So our client (:func:`serve_over_pipe`) binds its ``grpc.aio`` server to a private unix socket
(in a fresh 0700 temp dir), dials it once itself, deletes the socket file and the dir right away,
and splices bytes between that connection and the pipe. (The daemon's side, the gRPC client of the
session, needs no socket: :mod:`buildkitpy.session.pipechannel` runs HTTP/2 on the chunks.)

The pipe is given as an async iterable of incoming chunks and a memory stream for outgoing chunks
(each socket read becomes one outgoing chunk). Incoming chunks are written to the socket at once
when they come alone, and coalesced when they come in a burst (a chunk within ``COALESCE_IDLE``
of the last write waits up to ``COALESCE_DELAY`` for others): a peer may put each HTTP/2 frame
in a message of its own (BuildKit's clients do), and one socket write (and one wake-up and read
of grpc's connection) per message of ~70 bytes costs more than the frame's own work.

When either direction ends or fails, both stop, the socket and the outgoing stream are closed, and
:attr:`Pipe.closed` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field

import anyio
import grpc
from anyio.streams.memory import MemoryObjectSendStream

from buildkitpy.api.filesync_pb2 import BytesMessage as _BytesMessage

# BuildKit's limit (containerd defaults) in both directions.
MAX_MESSAGE_SIZE = 16 << 20
# One socket read becomes one BytesMessage; large reads keep per-message overhead low.
READ_CHUNK_SIZE = 256 << 10
# Coalescing of incoming chunks (see the module docstring): a chunk this soon after the last write
# waits this long for others, unless this many bytes are waiting.
COALESCE_IDLE = 0.001
COALESCE_DELAY = 0.0003
COALESCE_MAX = 64 << 10

SERVER_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_SIZE),
    ("grpc.max_send_message_length", MAX_MESSAGE_SIZE),
    ("grpc.so_reuseport", 0),
]


def bytes_message_prefix(size: int) -> bytes:
    """What precedes ``size`` payload bytes in an encoded ``BytesMessage``: field 1's tag
    (length-delimited) and the length as a varint."""
    prefix = bytearray(b"\n")
    while size >= 0x80:
        prefix.append(size & 0x7F | 0x80)
        size >>= 7
    prefix.append(size)
    return bytes(prefix)


def encode_bytes_message(data: bytes) -> bytes:
    """The encoding of ``BytesMessage{data}`` (field 1, length-delimited; every BytesMessage of the
    protos is this one), built directly: protobuf's constructor and serializer copy a large payload
    several times, 0.15 s per 200 MB here against 0.01 s for the join."""
    if not data:
        return b""  # proto3 leaves an empty field out
    return b"".join((bytes_message_prefix(len(data)), data))


def bytes_message_data(message: bytes) -> bytes:
    """The payload of an encoded ``BytesMessage`` (the inverse of :func:`encode_bytes_message`):
    read directly when the message is field 1 alone, as every client sends it, and by protobuf
    otherwise (fields repeated or unknown: the last field 1 wins). Raises protobuf's
    ``DecodeError`` for bytes that are no BytesMessage."""
    n = len(message)
    if n > 1 and message[0] == 0x0A:
        size = shift = 0
        pos = 1
        while pos < n and pos <= 5:
            byte = message[pos]
            size |= (byte & 0x7F) << shift
            pos += 1
            if byte < 0x80:
                if pos + size == n:
                    return message[pos:]
                break
            shift += 7
    return _BytesMessage.FromString(message).data


@dataclass
class Pipe:
    """State of one spliced connection. ``closed`` is set once both directions have stopped;
    ``error`` is what stopped them if it was not a clean end of stream."""

    closed: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None


class SocketConnection:
    """Our end of the private unix socket.

    asyncio's transport-based streams, not anyio's unix streams: anyio waits for readability with
    a bare future that the selector may still try to resolve after a cancelled read (an
    ``InvalidStateError`` in the loop), and re-registers the fd on every read.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, sock: socket.socket) -> SocketConnection:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=4 * READ_CHUNK_SIZE)
        return cls(reader, writer)

    async def receive(self) -> bytes:
        """Up to ``READ_CHUNK_SIZE`` bytes; ``b""`` at end of stream."""
        return await self.reader.read(READ_CHUNK_SIZE)

    async def aclose(self) -> None:
        if self.writer.is_closing():
            return
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


class _CoalescingWriter:
    """Writes chunks to a ``SocketConnection``, a burst of them in one write (module docstring)."""

    def __init__(self, sock: SocketConnection) -> None:
        self._writer = sock.writer
        self._loop = asyncio.get_running_loop()
        self._pending: list[bytes] = []
        self._size = 0
        self._last_write = -math.inf
        self._timer: asyncio.TimerHandle | None = None

    async def send(self, data: bytes) -> None:
        self._pending.append(data)
        self._size += len(data)
        if self._size < COALESCE_MAX:
            if self._timer is not None:
                return  # a flush is due soon
            if self._loop.time() - self._last_write < COALESCE_IDLE:
                self._timer = self._loop.call_later(COALESCE_DELAY, self.flush)
                return
        self.flush()
        await self._writer.drain()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending:
            data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
            self._pending.clear()
            self._size = 0
            self._last_write = self._loop.time()
            self._writer.write(data)


@contextlib.contextmanager
def private_socket_path(prefix: str) -> Iterator[str]:
    """A unix socket path in a fresh directory only we can enter; the directory is removed on exit."""
    directory = tempfile.mkdtemp(prefix=prefix)  # mkdtemp creates it 0700
    try:
        yield os.path.join(directory, "grpc.sock")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def splice(sock: SocketConnection, incoming: AsyncIterable[bytes],
                 outgoing: MemoryObjectSendStream[bytes], pipe: Pipe) -> None:
    """Copy ``incoming`` into ``sock`` and ``sock`` into ``outgoing`` until either side ends.

    Neither ``sock`` nor ``outgoing`` is closed here. Never raises for pipe
    failures: they end the splice and are recorded in ``pipe.error``.
    """

    async def pipe_to_socket(scope: anyio.CancelScope) -> None:
        writer = _CoalescingWriter(sock)
        try:
            async for data in incoming:
                if data:
                    await writer.send(data)
        except OSError:
            pass  # the local gRPC end went away
        except Exception as exc:  # noqa: BLE001 - a failing pipe ends the session, never the process
            pipe.error = pipe.error or exc
        finally:
            with contextlib.suppress(Exception):  # best effort: what came last still reaches grpc
                writer.flush()
            scope.cancel()

    async def socket_to_pipe(scope: anyio.CancelScope) -> None:
        try:
            while data := await sock.receive():
                await outgoing.send(data)
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # our socket or the consumer of `outgoing` went away
        except Exception as exc:  # noqa: BLE001
            pipe.error = pipe.error or exc
        finally:
            scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(pipe_to_socket, tg.cancel_scope)
        tg.start_soon(socket_to_pipe, tg.cancel_scope)


@contextlib.asynccontextmanager
async def serve_over_pipe(server: grpc.aio.Server, incoming: AsyncIterable[bytes],
                          outgoing: MemoryObjectSendStream[bytes]) -> AsyncIterator[Pipe]:
    """Client side: start ``server`` (not yet started, services added) with the pipe as its only
    connection. Yields the :class:`Pipe`; on exit the splice stops and the server is stopped."""
    pipe = Pipe()
    sock: SocketConnection | None = None
    started = False
    try:
        with private_socket_path("buildkitpy-attach-") as path:
            if server.add_insecure_port(f"unix:{path}") == 0:
                raise OSError(f"grpc could not bind the session socket {path}")
            await server.start()
            started = True
            connecting = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                connecting.setblocking(False)
                await asyncio.get_running_loop().sock_connect(connecting, path)
                sock = await SocketConnection.open(connecting)
            except BaseException:
                connecting.close()
                raise
        async with in_background(_splice_then_mark_closed, sock, incoming, outgoing, pipe):
            yield pipe
    finally:
        pipe.closed.set()
        outgoing.close()
        with anyio.CancelScope(shield=True):
            if sock is not None:
                await sock.aclose()
            if started:
                await server.stop(grace=None)


@contextlib.asynccontextmanager
async def in_background(func: Callable[..., Coroutine[object, object, object]],
                        *args: object) -> AsyncIterator[None]:
    """Run ``func(*args)`` in a task while the body runs; cancel it when the body exits.

    An error raised by the body comes out as itself, not wrapped in an exception group (callers
    give tasks that end quietly when cancelled: pipes and splices).
    """
    body_error: Exception | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(func, *args)
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - re-raised below, outside the task group
            body_error = exc
        finally:
            tg.cancel_scope.cancel()
    if body_error is not None:
        raise body_error


async def _splice_then_mark_closed(sock: SocketConnection, incoming: AsyncIterable[bytes],
                                   outgoing: MemoryObjectSendStream[bytes], pipe: Pipe) -> None:
    try:
        await splice(sock, incoming, outgoing, pipe)
    finally:
        pipe.closed.set()
        outgoing.close()  # ends the consumer of the outgoing chunks
        # Closing our end makes grpc notice at once (EOF) instead of at its next write.
        with anyio.CancelScope(shield=True):
            await sock.aclose()
