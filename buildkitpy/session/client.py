"""Client side of a session: serve attachables to the daemon over ``Control.Session``.

Usage::

    session = ClientSession([SecretsAttachable({"token": b"..."}), AuthAttachable()])
    async with session.run(control_stub):
        await control_stub.Solve(SolveRequest(Session=session.session_id, ...))

Inside ``run`` a private ``grpc.aio`` server holds the attachables plus ``grpc.health.v1.Health``;
its only connection is the session stream (see :mod:`buildkitpy.session.bridge`).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Protocol, runtime_checkable

import anyio
import grpc
from anyio.streams.memory import MemoryObjectReceiveStream
from grpc_health.v1 import health, health_pb2_grpc

from buildkitpy import errors
from buildkitpy.api import control_pb2, control_pb2_grpc
from buildkitpy.session.bridge import SERVER_OPTIONS, Pipe, in_background, serve_over_pipe
from buildkitpy.session.manager import (
    HEADER_HEALTH_CUSTOM_TIMEOUT,
    HEADER_SESSION_ID,
    HEADER_SESSION_METHOD,
    HEADER_SESSION_NAME,
    HEADER_SESSION_SHARED_KEY,
    HEALTH_CHECK_METHOD,
    HEALTH_WATCH_METHOD,
)

_METHOD_NAME = re.compile(r"^/[^/\s]+/[^/\s]+$")
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


@runtime_checkable
class Attachable(Protocol):
    """A service the client offers the daemon through a session."""

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Register the service's handlers on ``server``."""

    def method_names(self) -> list[str]:
        """Full names of the methods served, e.g. ``/moby.filesync.v1.FileSync/DiffCopy``."""


def new_session_id() -> str:
    """A random 25-character base36 id, the shape of BuildKit's ``identity.NewID``."""
    value = secrets.randbits(128)
    digits = []
    while value:
        value, digit = divmod(value, 36)
        digits.append(_BASE36[digit])
    return "".join(reversed(digits)).rjust(25, "0")


# Opens a connection for a session given its headers: (reader, writer) positioned at the
# start of the session's HTTP/2 bytes.
SessionDialer = Callable[[list[tuple[str, str]]],
                         Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


async def read_chunks(reader: asyncio.StreamReader, size: int = 256 << 10) -> AsyncIterator[bytes]:
    """A connection's incoming bytes, until it ends or breaks."""
    while True:
        try:
            data = await reader.read(size)
        except (ConnectionError, OSError):
            return
        if not data:
            return
        yield data


async def write_chunks(chunks: MemoryObjectReceiveStream[bytes], writer: asyncio.StreamWriter) -> None:
    """Write ``chunks`` to a connection until they end or the connection breaks; then half-close it."""
    async with chunks:
        try:
            async for chunk in chunks:
                writer.write(chunk)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            return


class SessionRejected(errors.BuildkitpyError):
    """The daemon ended ``Control.Session`` with an error before the session started."""


class ClientSession:
    """A session to offer to a daemon.

    ``health_servicer`` replaces the standard ``grpc.health.v1.Health`` implementation (an object
    for ``add_HealthServicer_to_server``); ``health_custom_timeout_ms`` asks the daemon for a
    different health-check timeout (``x-buildkit-session-health-custom-timeout``).
    """

    def __init__(self, attachables: Iterable[Attachable] = (), shared_key: str = "", *,
                 name: str = "", health_servicer: Any = None,
                 health_custom_timeout_ms: int | None = None) -> None:
        self.attachables = list(attachables)
        for attachable in self.attachables:
            if not isinstance(attachable, Attachable):
                raise TypeError(f"{attachable!r} is not an attachable: it needs add_to_server(server) "
                                "and method_names()")
        self.session_id = new_session_id()
        self.shared_key = shared_key
        self.name = name
        self.health_servicer = health_servicer
        self.health_custom_timeout_ms = health_custom_timeout_ms
        self._pipe: Pipe | None = None  # of the current (or last) run
        self._running = False
        self._methods = self._collect_method_names()

    def _collect_method_names(self) -> list[str]:
        names: list[str] = []
        for attachable in self.attachables:
            for name in attachable.method_names():
                if not _METHOD_NAME.match(name):
                    raise ValueError(f"{attachable!r} names an invalid gRPC method {name!r} "
                                     "(expected /package.Service/Method)")
                names.append(name)
        names += [HEALTH_CHECK_METHOD, HEALTH_WATCH_METHOD]
        return list(dict.fromkeys(names))

    def method_names(self) -> list[str]:
        """Every method the session serves, as announced to the daemon."""
        return list(self._methods)

    def metadata(self) -> list[tuple[str, str]]:
        """The ``Control.Session`` call metadata."""
        md = [(HEADER_SESSION_ID, self.session_id), (HEADER_SESSION_SHARED_KEY, self.shared_key)]
        if self.name:
            md.append((HEADER_SESSION_NAME, self.name))
        if self.health_custom_timeout_ms is not None:
            md.append((HEADER_HEALTH_CUSTOM_TIMEOUT, str(self.health_custom_timeout_ms)))
        md += [(HEADER_SESSION_METHOD, m) for m in self._methods]
        return md

    @property
    def closed(self) -> anyio.Event:
        """Set once the daemon side of a running session went away (or ``run`` exited)."""
        if self._pipe is None:
            raise RuntimeError("the session has not been started")
        return self._pipe.closed

    @property
    def error(self) -> BaseException | None:
        """Why the session stream broke, if it did not end cleanly."""
        return self._pipe.error if self._pipe else None

    @contextlib.asynccontextmanager
    async def run(self, control_stub: control_pb2_grpc.ControlStub, *,
                  ready_timeout: float = 10.0) -> AsyncIterator[ClientSession]:
        """Open ``Control.Session`` on ``control_stub`` and serve until the block exits.

        Entering waits (up to ``ready_timeout`` s) until the daemon answers the stream, and raises
        :class:`SessionRejected` if it refused it. If the daemon goes away later, the block is not
        interrupted: serving stops and :attr:`closed` is set.
        """
        if self._running:
            raise RuntimeError(f"session {self.session_id} is already running")
        self._running = True
        call: grpc.aio.StreamStreamCall | None = None
        to_daemon, to_daemon_queue = anyio.create_memory_object_stream[bytes](16)
        try:
            server = self._server()

            async def requests() -> AsyncIterator[control_pb2.BytesMessage]:
                async with to_daemon_queue:
                    # Write nothing before the daemon has answered: a write racing a refusal
                    # makes grpc.aio report INTERNAL instead of the daemon's status.
                    assert call is not None  # assigned below, before grpc iterates requests()
                    await call.initial_metadata()
                    if call.done():
                        return
                    async for chunk in to_daemon_queue:
                        yield control_pb2.BytesMessage(data=chunk)

            call = control_stub.Session(requests(), metadata=self.metadata())

            async def from_daemon() -> AsyncIterator[bytes]:
                async for message in call:
                    yield message.data

            async with serve_over_pipe(server, from_daemon(), to_daemon) as pipe:
                self._pipe = pipe
                await self._wait_accepted(call, ready_timeout)
                yield self
        finally:
            self._running = False
            if call is not None:
                call.cancel()
            to_daemon.close()
            with anyio.CancelScope(shield=True):
                await to_daemon_queue.aclose()

    @contextlib.asynccontextmanager
    async def run_dialed(self, dial: SessionDialer) -> AsyncIterator[ClientSession]:
        """Serve over a connection ``dial`` opens with the session's headers (BuildKit's session
        dialer: buildx's docker driver dials the Docker Engine's ``POST /session``) instead of
        ``Control.Session``. The connection carries the session's HTTP/2 as it is."""
        if self._running:
            raise RuntimeError(f"session {self.session_id} is already running")
        self._running = True
        to_daemon, to_daemon_queue = anyio.create_memory_object_stream[bytes](16)
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await dial(self.metadata())
            async with in_background(write_chunks, to_daemon_queue, writer):
                async with serve_over_pipe(self._server(), read_chunks(reader), to_daemon) as pipe:
                    self._pipe = pipe
                    yield self
        finally:
            self._running = False
            to_daemon.close()
            if writer is not None:
                writer.close()

    def _server(self) -> grpc.aio.Server:
        server = grpc.aio.server(options=SERVER_OPTIONS)
        health_pb2_grpc.add_HealthServicer_to_server(
            self.health_servicer or health.aio.HealthServicer(), server)
        for attachable in self.attachables:
            attachable.add_to_server(server)
        return server

    async def _wait_accepted(self, call: grpc.aio.StreamStreamCall, timeout: float) -> None:
        try:
            with anyio.fail_after(timeout):
                await call.initial_metadata()
        except TimeoutError:
            raise SessionRejected(f"session {self.session_id}: the daemon did not answer "
                                  f"Control.Session within {timeout:g}s") from None
        if call.done():
            code = await call.code()
            if code != grpc.StatusCode.OK:
                err = SessionRejected(f"the daemon refused session {self.session_id}: {code.name}: "
                                      f"{await call.details()}")
                err.grpc_code = code
                raise err
