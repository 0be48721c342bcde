"""The daemon's listening sockets: an HTTP/2 server of our own in front of the grpc.aio server.

A build client's ``Control.Session`` stream carries a whole HTTP/2 connection (the session's
attachables) as a stream of ``BytesMessage``s, and a BuildKit client writes each of that inner
connection's frames as one message: ~10,000 of ~46 bytes for an unchanged 10,000-file context and
one per window update while an export streams back. grpc.aio spends ~30 us on every message it
hands to Python (a completion on its poller thread, a future, a task wake-up) — more than the
daemon's own work on them. So the front server answers ``Control.Session`` itself: a socket read
of many frames becomes one chunk for the session (:meth:`SessionManager.attach
<buildkitpy.session.manager.SessionManager.attach>`), pushed to it and answered within that
read's callback (``_Inbox``; ``_SessionCall`` is the session's sink), with flow control and gRPC's
framing done here. The calls whose request is one message are served here too, with the
servicers' own handlers (:mod:`buildkitpy.daemon.frontcalls`). Every other stream is relayed,
frames in and out, to the grpc.aio server that serves the services, listening on a private unix
socket (one link per client connection, opened on its first relayed stream).

The HTTP/2 itself is :class:`~buildkitpy.daemon.h2peer.H2Peer` (sans-I/O) in both roles; this
module is the asyncio driver: listeners (unix, TCP, TLS with ALPN ``h2`` and optional client
certificates), one :class:`_Connection` per client, :class:`_SessionCall` and :class:`_Relay` per
stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import struct
import tempfile
from collections import deque
from collections.abc import Callable
from pathlib import Path

import anyio
import grpc

from buildkitpy import errors
from buildkitpy.daemon.frontcalls import (
    RESPONSE_HEADERS,
    SEND_HIGH_WATER,
    MethodTable,
    NativeCall,
    status_trailers,
)
from buildkitpy.daemon.h2peer import CANCEL, NO_ERROR, REFUSED_STREAM, Fields, H2Peer, H2ProtocolError
from buildkitpy.session.bridge import bytes_message_data, bytes_message_prefix
from buildkitpy.session.h2 import INTERNAL_ERROR, MAX_MESSAGE_SIZE
from buildkitpy.session.manager import SessionHeader, SessionManager
from buildkitpy.session.pipechannel import PushTarget

log = logging.getLogger(__name__)

SESSION_PATH = b"/moby.buildkit.v1.Control/Session"
# A client connection's socket send buffer (the kernel caps it at net.core.wmem_max, 4 MiB by
# default). With the default ~208 KiB, a session's 256 KiB chunks went out in pieces, the rest of
# each copied into the transport's buffer and sent on a later writable event: a 200 MB tar export
# to buildctl took 0.59 s, 0.545 s with this (medians of 6, alternating).
_SEND_BUFFER = 4 << 20
_U32 = struct.Struct(">L")


def status_fields(err: BaseException) -> list[tuple[str | bytes, str | bytes]]:
    """gRPC trailers for an error: code, percent-encoded message and the rich status as
    ``grpc-status-details-bin`` (BuildKit's clients read errdefs details from it)."""
    status = errors.to_rpc_status(err)
    return status_trailers(status.code, status.message,
                           (("grpc-status-details-bin", status.SerializeToString()),))


_OK_TRAILERS: list[tuple[str | bytes, str | bytes]] = [(b"grpc-status", b"0")]


class FrontServer:
    """The listeners and their connections (module docstring). ``backend`` is the unix socket
    path of the grpc.aio server; ``methods`` the handlers of the calls served here
    (:mod:`buildkitpy.daemon.frontcalls`), the others are relayed to it."""

    def __init__(self, sessions: SessionManager, backend: str, methods: MethodTable | None = None) -> None:
        self.sessions = sessions
        self.backend = backend
        self.methods = methods or MethodTable()
        self.connections: set[_Connection] = set()
        self._servers: list[asyncio.base_events.Server] = []

    async def listen_unix(self, path: str) -> None:
        loop = asyncio.get_running_loop()
        self._servers.append(await loop.create_unix_server(lambda: _Connection(self), path))

    async def listen_tcp(self, host: str, port: int, tls: ssl.SSLContext | None) -> int:
        """Listen on ``host:port`` (port 0: any); returns the port."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Connection(self), host or None, port, ssl=tls,
                                          reuse_address=True)
        self._servers.append(server)
        return server.sockets[0].getsockname()[1]

    def stop_listening(self) -> None:
        """No new connections; clients are told (GOAWAY) to open no new streams."""
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.goaway()

    async def finish_calls(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for the calls served here to end (at shutdown, as grpc.aio's
        ``stop(grace)`` waits for its own)."""
        tasks = [route.task for conn in self.connections for route in conn.routes.values()
                 if isinstance(route, NativeCall) and route.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)

    async def close(self) -> None:
        """End every connection: calls and sessions cancelled, sockets closed."""
        self.stop_listening()
        tasks = [task for conn in list(self.connections) for task in conn.abort()]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        for server in self._servers:
            await server.wait_closed()


def tls_context(cert: str, key: str, ca: str | None) -> ssl.SSLContext:
    """A server TLS context as buildkitd's: our certificate, client certificates required when a
    CA is given, ALPN ``h2`` (gRPC clients insist on it)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if ca:
        ctx.load_verify_locations(ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(["h2"])
    return ctx


class _Connection(asyncio.Protocol):
    """One client connection: the server end of its HTTP/2 and the routes of its streams."""

    def __init__(self, server: FrontServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.peer = H2Peer(self, client=False)
        self.routes: dict[int, _SessionCall | _Relay | NativeCall] = {}
        self.link: _BackendLink | None = None
        self.draining_links: list[_BackendLink] = []  # earlier links, with calls still on them
        self.paused = False
        self.closed = False
        self._touched: list[_SessionCall | _Closer] = []
        self._resumed: list[Callable[[], None]] = []

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # a smaller buffer only means more sends
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER)
        self.write()

    def data_received(self, data: bytes) -> None:
        try:
            self.peer.receive(data)
        except H2ProtocolError as err:
            log.info("closing a client connection: %s", err)
            self.write()
            self._close(f"HTTP/2 protocol error: {err}")
            return
        except Exception:  # noqa: BLE001 - a bug here ends this connection, never the daemon
            log.exception("closing a client connection after an unexpected error")
            self._close("internal error")
            return
        touched = self._touched
        if touched:
            self._touched = []
            for call in touched:
                call.deliver()
        self.write()
        if self.link is not None:
            self.link.write()
        for link in self.draining_links:
            link.write()

    def connection_lost(self, exc: Exception | None) -> None:
        self._close("the client closed the connection" if exc is None else f"the connection failed: {exc}")

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        resumed, self._resumed = self._resumed, []
        for wake in resumed:
            wake()

    # -- ours ------------------------------------------------------------------------------------

    def write(self) -> None:
        data = self.peer.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def when_writable(self, wake: Callable[[], None]) -> None:
        self._resumed.append(wake)

    def goaway(self) -> None:
        self.peer.goaway()
        self.write()

    def abort(self) -> list[asyncio.Task[None]]:
        """The daemon is going away: its sessions and the calls served here end with UNAVAILABLE (as
        grpc.aio ends the calls it cancels at shutdown), then the connection closes."""
        calls = [route for route in self.routes.values() if isinstance(route, _SessionCall | NativeCall)]
        for call in calls:
            call.shut_down()
        self._close("the daemon is shutting down")
        return [call.task for call in calls if call.task is not None]

    def _close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.server.connections.discard(self)
        self.peer.connection_lost(reason)
        for route in list(self.routes.values()):
            route.lost(reason)
        self.routes.clear()
        if self.link is not None:
            self.link.close()
        for link in list(self.draining_links):
            link.close()
        if self.transport is not None:
            self.transport.close()

    def _backend(self) -> _BackendLink:
        if self.link is None or self.link.draining:
            if self.link is not None:
                self.draining_links.append(self.link)
                self.link.close_when_idle()
            self.link = _BackendLink(self)
        return self.link

    def forget(self, sid: int) -> None:
        self.routes.pop(sid, None)

    def owns(self, sid: int, call: object) -> bool:
        """Whether ``call`` is still the route of stream ``sid``."""
        return self.routes.get(sid) is call

    # -- PeerHandler (the client's side) ---------------------------------------------------------

    def on_headers(self, sid: int, fields: Fields, end_stream: bool) -> None:
        route = self.routes.get(sid)
        if route is not None:
            route.client_headers(fields, end_stream)
            return
        path = next((v for k, v in fields if k == b":path"), b"")
        if path == SESSION_PATH:
            call = self.routes[sid] = _SessionCall(self, sid)
            call.start(fields, end_stream)
        elif (handler := self.server.methods.native(path, fields)) is not None:
            native = self.routes[sid] = NativeCall(self, sid, path, handler)
            native.begin(fields, end_stream)
        else:
            self.routes[sid] = _Relay(self, sid, fields, end_stream)

    def on_data(self, sid: int, data: memoryview, end_stream: bool) -> None:
        route = self.routes.get(sid)
        if route is not None:
            route.client_data(data, end_stream)
        elif data:
            self.peer.consumed(sid, len(data))

    def on_reset(self, sid: int, code: int) -> None:
        route = self.routes.pop(sid, None)
        if route is not None:
            route.client_reset(code)

    def on_sent(self, sid: int, nbytes: int) -> None:
        route = self.routes.get(sid)
        if route is not None:
            route.sent_to_client(nbytes)

    def on_goaway(self, last_sid: int, code: int) -> None:
        pass  # the client opens no more streams; those open go on


class _Inbox:
    """The session's incoming bytes for :meth:`SessionManager.attach`, pushed (a
    :class:`~buildkitpy.session.pipechannel.PushSource`): one chunk per socket read (all the
    messages it held), handed to the session's pipe in that read's callback and credited back to
    the stream's window once taken. Chunks wait here only before the pipe starts, or while it has
    answers the client does not read (their credit waits with them)."""

    __slots__ = ("_chunks", "_waiter", "_eof", "_credit", "_target", "_failure")

    def __init__(self, credit: Callable[[int], None]) -> None:
        self._chunks: deque[tuple[bytes, int]] = deque()  # (data, or b"" once pushed; wire size)
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._credit = credit
        self._target: PushTarget | None = None
        self._failure: Exception | None = None

    def put(self, data: bytes, wire: int) -> None:
        if self._failure is not None:
            return
        target = self._target
        if target is None or self._chunks or target.backlogged():
            self._chunks.append((data, wire))
            self._wake()
            return
        # The credit first: the client's next messages need not wait behind our answers to this.
        self._credit(wire)
        try:
            target.push(data)
        except Exception as exc:  # noqa: BLE001 - raised by push_into, in the session's task
            self._failure = exc
            self._wake()

    def close(self) -> None:
        self._eof = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def push_into(self, target: PushTarget) -> None:
        chunks = self._chunks
        self._target = target
        try:
            while True:
                while chunks and self._failure is None:
                    data, wire = chunks[0]
                    if data:
                        chunks[0] = (b"", wire)
                        target.push(data)
                    if target.backlogged():
                        await target.drained()
                        if target.backlogged():
                            return  # the pipe is gone
                        continue
                    chunks.popleft()
                    self._credit(wire)
                if self._failure is not None:
                    raise self._failure
                if self._eof:
                    return
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
        finally:
            self._target = None


class _SessionCall:
    """``Control.Session`` served here: gRPC framing of ``BytesMessage``s both ways around
    :meth:`SessionManager.attach`, the call's status in the trailers."""

    def __init__(self, conn: _Connection, sid: int) -> None:
        self.conn = conn
        self.sid = sid
        self._buf = bytearray()  # the start of a message split across frames
        self._parts: list[bytes | bytearray | memoryview] = []
        self._wire = 0  # bytes received and not yet delivered (for the window credit)
        self._queued = False
        self._room: asyncio.Event = asyncio.Event()
        self._room.set()
        self._ended = False  # the trailers are sent: the session's output goes nowhere
        self.inbox = _Inbox(self._credit)
        self.task: asyncio.Task[None] | None = None

    def start(self, fields: Fields, end_stream: bool) -> None:
        conn, sid = self.conn, self.sid
        if end_stream:
            self.inbox.close()
        try:
            header = SessionHeader.from_metadata(_metadata(fields))
        except errors.BuildkitpyError as err:
            self._end(status_fields(err), trailers_only=True)
            return
        conn.peer.send_headers(sid, RESPONSE_HEADERS)
        self.task = asyncio.get_running_loop().create_task(self._serve(header),
                                                            name=f"Control.Session {header.id}")

    # -- from the client ---------------------------------------------------------------------------

    def client_headers(self, fields: Fields, end_stream: bool) -> None:
        if end_stream:
            self.inbox.close()

    def client_data(self, data: memoryview, end_stream: bool) -> None:
        self._wire += len(data)
        buf = self._buf
        view: memoryview | bytearray
        if buf:
            buf += data
            view = buf
        else:
            view = data
        n = len(view)
        pos = 0
        parts = self._parts
        while n - pos >= 5:
            if view[pos]:
                self._fail(grpc.StatusCode.INTERNAL, "a compressed message, although none was offered")
                return
            size = _U32.unpack_from(view, pos + 1)[0]
            if size > MAX_MESSAGE_SIZE:
                self._fail(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"received message larger than max ({size} vs. {MAX_MESSAGE_SIZE})")
                return
            if n - pos - 5 < size:
                break
            start = pos + 5
            pos = start + size
            payload_at = _field1_payload(view, start, pos)
            if payload_at:
                parts.append(view[payload_at:pos])  # the common case: field 1 alone
            elif size:
                try:
                    payload = bytes_message_data(bytes(view[start:pos]))
                except Exception:  # noqa: BLE001 - any decode failure is the client's
                    self._fail(grpc.StatusCode.INTERNAL, "a Control.Session message that is no BytesMessage")
                    return
                if payload:
                    parts.append(payload)
        if view is buf:
            del buf[:pos]  # (slices of a bytearray are copies: `parts` holds no view of it)
        elif pos < n:
            self._buf = bytearray(view[pos:])
        if not self._queued:
            self._queued = True
            self.conn._touched.append(self)
        if end_stream:
            self.conn._touched.append(_Closer(self.inbox))

    def deliver(self) -> None:
        """After a socket read: everything it held for the session as one chunk."""
        self._queued = False
        parts, wire = self._parts, self._wire
        self._parts, self._wire = [], 0
        if parts:
            self.inbox.put(b"".join(parts), wire)
        elif wire:
            self._credit(wire)

    def client_reset(self, code: int) -> None:
        if self.task is not None:
            self.task.cancel()

    def lost(self, reason: str) -> None:
        if self.task is not None:
            self.task.cancel()

    def shut_down(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self._end(status_trailers(grpc.StatusCode.UNAVAILABLE, "the daemon is shutting down"))

    def _credit(self, wire: int) -> None:
        conn = self.conn
        if not conn.closed:
            conn.peer.consumed(self.sid, wire)
            conn.write()

    def _fail(self, code: grpc.StatusCode, message: str) -> None:
        """The client broke gRPC on this stream: end the call with ``code`` and stop its sender."""
        if self.task is not None:
            self.task.cancel()
        self._end(status_trailers(code, message))
        self.conn.forget(self.sid)

    # -- to the client -----------------------------------------------------------------------------

    def sent_to_client(self, nbytes: int) -> None:
        peer = self.conn.peer
        if peer.pending(self.sid) <= SEND_HIGH_WATER:
            self._room.set()
        if self.sid not in peer.streams and self.conn.routes.get(self.sid) is self:
            self.conn.forget(self.sid)

    async def _serve(self, header: SessionHeader) -> None:
        trailers = _OK_TRAILERS
        try:
            await self.conn.server.sessions.attach(header, self.inbox, self)
        except errors.BuildkitpyError as err:
            trailers = status_fields(err)
        except Exception as exc:  # noqa: BLE001 - the boundary: logged, reported, the daemon goes on
            failure = errors.unwrap(exc) if isinstance(exc, BaseExceptionGroup) else exc
            if isinstance(failure, errors.BuildkitpyError):
                trailers = status_fields(failure)
            else:
                log.error("session %s failed", header.id, exc_info=exc)
                trailers = status_fields(errors.BuildkitpyError(f"session {header.id} failed: {failure}"))
        self._end(trailers)

    # The session's outgoing chunks (a pipechannel ChunkSink): each becomes a BytesMessage on the
    # stream at once, no task in between; the caller waits while the client's windows hold back
    # more than SEND_HIGH_WATER.

    def send_nowait(self, chunk: bytes) -> None:
        conn, sid = self.conn, self.sid
        if conn.closed or self._ended or sid not in conn.peer.streams:
            raise anyio.BrokenResourceError
        if conn.paused or conn.peer.pending(sid) > SEND_HIGH_WATER:
            raise anyio.WouldBlock
        self._send(chunk)

    async def send(self, chunk: bytes) -> None:
        while True:
            try:
                self.send_nowait(chunk)
                return
            except anyio.WouldBlock:
                self._room.clear()
                if self.conn.paused:
                    self.conn.when_writable(self._room.set)
                await self._room.wait()

    def close(self) -> None:
        """(The trailers end the stream once the session's task is over: :meth:`_serve`.)"""

    def _send(self, chunk: bytes) -> None:
        conn, sid, peer = self.conn, self.sid, self.conn.peer
        n = len(chunk)
        prefix = bytes_message_prefix(n) if n else b""
        peer.send_data(sid, b"\0" + _U32.pack(n + len(prefix)) + prefix, more=bool(n))
        if n:
            peer.send_data(sid, chunk)
        conn.write()

    def _end(self, trailers: list[tuple[str | bytes, str | bytes]], trailers_only: bool = False) -> None:
        conn = self.conn
        if conn.closed or conn.routes.get(self.sid) is not self:
            return
        self._ended = True
        fields = [*RESPONSE_HEADERS, *trailers] if trailers_only else trailers
        peer = conn.peer
        peer.send_headers(self.sid, fields, end_stream=True)
        stream = peer.streams.get(self.sid)
        if stream is not None and stream.local_closed and not stream.remote_closed:
            peer.reset(self.sid, NO_ERROR)  # the call is over: the client stops sending (as grpc-go)
        conn.write()
        if self.sid not in peer.streams:
            conn.forget(self.sid)


class _Closer:
    """Ends an inbox after what the same socket read delivered before it."""

    __slots__ = ("inbox",)

    def __init__(self, inbox: _Inbox) -> None:
        self.inbox = inbox

    def deliver(self) -> None:
        self.inbox.close()


def _field1_payload(view: memoryview | bytearray, start: int, end: int) -> int:
    """Where the payload of a ``BytesMessage`` at ``view[start:end]`` starts when it is field 1
    alone (as clients send it), else 0."""
    if end - start < 2 or view[start] != 0x0A:
        return 0
    size = shift = 0
    pos = start + 1
    while pos < end and pos <= start + 5:
        byte = view[pos]
        size |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return pos if pos + size == end else 0
        shift += 7
    return 0


def _metadata(fields: Fields) -> list[tuple[str, str | bytes]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in fields if k[:1] != b":"]


class _Relay:
    """A stream passed to the grpc.aio server as it is: headers re-encoded for the other
    connection's HPACK table, data forwarded as it comes, each side's window credited when the
    other side has sent it on."""

    __slots__ = ("conn", "sid", "link", "bsid", "answered", "reset_when_sent")

    def __init__(self, conn: _Connection, sid: int, fields: Fields, end_stream: bool) -> None:
        self.conn = conn
        self.sid = sid
        self.answered = False
        self.reset_when_sent = False
        self.link = conn._backend()
        try:
            self.bsid = self.link.peer.open_stream()
        except ConnectionError as exc:
            self.bsid = 0
            self._unavailable(f"the daemon's gRPC server is unavailable: {exc}")
            return
        self.link.relays[self.bsid] = self
        self.link.peer.send_headers(self.bsid, list(fields), end_stream)

    def _unavailable(self, message: str) -> None:
        conn = self.conn
        conn.forget(self.sid)
        if self.answered:
            conn.peer.reset(self.sid, INTERNAL_ERROR)
        else:
            fields = [*RESPONSE_HEADERS, *status_trailers(grpc.StatusCode.UNAVAILABLE, message)]
            conn.peer.send_headers(self.sid, fields, end_stream=True)
            stream = conn.peer.streams.get(self.sid)
            if stream is not None and not stream.remote_closed:
                conn.peer.reset(self.sid, NO_ERROR)
        conn.write()

    # client -> backend
    def client_headers(self, fields: Fields, end_stream: bool) -> None:
        self.link.peer.send_headers(self.bsid, list(fields), end_stream)
        self._check_done()

    def client_data(self, data: memoryview, end_stream: bool) -> None:
        self.link.peer.send_data(self.bsid, data, end_stream)
        if end_stream:
            self._check_done()

    def client_reset(self, code: int) -> None:
        self.link.relays.pop(self.bsid, None)
        self.link.peer.reset(self.bsid, CANCEL)

    def sent_to_client(self, nbytes: int) -> None:
        self.link.peer.consumed(self.bsid, nbytes)
        if self.reset_when_sent:
            stream = self.conn.peer.streams.get(self.sid)
            if stream is None or stream.local_closed:  # the whole answer is out
                self.conn.forget(self.sid)
                self.conn.peer.reset(self.sid, NO_ERROR)
                return
        self._check_done()

    def lost(self, reason: str) -> None:
        self.link.relays.pop(self.bsid, None)
        self.link.peer.reset(self.bsid, CANCEL)

    # backend -> client
    def backend_headers(self, fields: Fields, end_stream: bool) -> None:
        self.answered = True
        self.conn.peer.send_headers(self.sid, list(fields), end_stream)
        self._check_done()

    def backend_data(self, data: memoryview, end_stream: bool) -> None:
        self.conn.peer.send_data(self.sid, data, end_stream)
        self._check_done()

    def backend_reset(self, code: int) -> None:
        stream = self.conn.peer.streams.get(self.sid)
        if code == NO_ERROR and stream is not None and (stream.trailers is not None or stream.end_pending):
            # The server answered in full and asks the client to stop sending (RFC 9113 8.1, as
            # grpc servers do when a call ends before the client half-closed): the answer still
            # queued for the client's window goes out first, then that reset.
            self.reset_when_sent = True
            return
        self.conn.forget(self.sid)
        self.conn.peer.reset(self.sid, code)

    def sent_to_backend(self, nbytes: int) -> None:
        self.conn.peer.consumed(self.sid, nbytes)

    def _check_done(self) -> None:
        if self.sid not in self.conn.peer.streams and self.conn.routes.get(self.sid) is self:
            self.conn.forget(self.sid)
        if self.bsid not in self.link.peer.streams:
            self.link.relays.pop(self.bsid, None)


class _BackendLink(asyncio.Protocol):
    """The connection to the grpc.aio server for one client connection's relayed streams."""

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn
        self.peer = H2Peer(self, client=True)
        self.relays: dict[int, _Relay] = {}
        self.transport: asyncio.Transport | None = None
        self.draining = False
        self.closed = False
        self._idle_close = False
        self._connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_unix_connection(lambda: self, self.conn.server.backend)
        except OSError as exc:
            self._lost(f"the daemon's gRPC server is unavailable: {exc}")

    def write(self) -> None:
        if self.transport is not None and not self.closed:
            data = self.peer.data_to_send()
            if data:
                self.transport.write(data)

    def close_when_idle(self) -> None:
        self._idle_close = True
        if not self.relays:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._left()
        self._connecting.cancel()
        self.peer.connection_lost("closed")
        if self.transport is not None:
            self.transport.close()

    def _lost(self, reason: str) -> None:
        self.closed = True
        self._left()
        self.peer.connection_lost(reason)
        relays, self.relays = self.relays, {}
        for relay in relays.values():
            relay._unavailable(reason)

    def _left(self) -> None:
        """This link is over: no longer one of its connection's."""
        if self.conn.link is self:
            self.conn.link = None
        elif self in self.conn.draining_links:
            self.conn.draining_links.remove(self)

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.closed:
            transport.close()
            return
        self.write()

    def data_received(self, data: bytes) -> None:
        try:
            self.peer.receive(data)
        except H2ProtocolError as err:
            log.error("the daemon's gRPC server broke HTTP/2: %s", err)
            self.write()
            self._lost(f"the daemon's gRPC server broke HTTP/2: {err}")
            if self.transport is not None:
                self.transport.close()
        except Exception:  # noqa: BLE001 - a bug here ends this link, never the daemon
            log.exception("closing a link to the daemon's gRPC server after an unexpected error")
            self._lost("internal error")
            if self.transport is not None:
                self.transport.close()
        self.write()
        self.conn.write()
        if self._idle_close and not self.relays:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self._lost("the daemon's gRPC server closed the connection")
            self.conn.write()

    # -- PeerHandler (the grpc.aio server's side) ------------------------------------------------

    def on_headers(self, sid: int, fields: Fields, end_stream: bool) -> None:
        relay = self.relays.get(sid)
        if relay is not None:
            relay.backend_headers(fields, end_stream)

    def on_data(self, sid: int, data: memoryview, end_stream: bool) -> None:
        relay = self.relays.get(sid)
        if relay is not None:
            relay.backend_data(data, end_stream)
        elif data:
            self.peer.consumed(sid, len(data))

    def on_reset(self, sid: int, code: int) -> None:
        relay = self.relays.pop(sid, None)
        if relay is not None:
            relay.backend_reset(code)

    def on_sent(self, sid: int, nbytes: int) -> None:
        relay = self.relays.get(sid)
        if relay is not None:
            relay.sent_to_backend(nbytes)

    def on_goaway(self, last_sid: int, code: int) -> None:
        self.draining = True
        for sid in [s for s in self.relays if s > last_sid]:
            relay = self.relays.pop(sid)
            self.conn.forget(relay.sid)
            self.conn.peer.reset(relay.sid, REFUSED_STREAM)  # never seen by the server: retry is safe


# Room for a unix socket's path (108 bytes with the terminating NUL), with a margin.
_MAX_SOCKET_PATH = 100


def backend_path(root: Path) -> tuple[str, Path | None]:
    """Where the grpc.aio server behind the front listens, private to the daemon: ``<root>/grpc.sock``,
    or, when that is too long for a unix socket, ``grpc.sock`` in a new directory of its own (mode
    0700), returned second for the caller to remove at shutdown."""
    path = root / "grpc.sock"
    if len(os.fsencode(path)) <= _MAX_SOCKET_PATH:
        return str(path), None
    private = Path(tempfile.mkdtemp(prefix="buildkitpyd-"))
    return str(private / "grpc.sock"), private


__all__ = ["FrontServer", "tls_context", "backend_path", "status_fields"]
