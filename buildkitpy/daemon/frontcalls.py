"""Calls the front server answers itself: every method whose request is one message.

A call relayed to the grpc.aio server behind the front cost the daemon ~700 us of CPU (a health
check: ~290 us of relaying in the front, headers decoded and encoded twice, and ~400 us in grpc.aio
and its threads; buildkitd spends ~120 us) and a build makes seven (ListWorkers, Solve, Status,
the gateway's Ping, Solve and Return, the client's trace export). So the servicers' own method
handlers, as the generated ``add_*_to_server`` functions register them (:class:`MethodTable`), are
called here for unary and server-streaming methods, with a :class:`CallContext` standing in for
grpc.aio's servicer context. Methods that stream requests (``LLBBridge.ExecProcess``, and
``Control.Session``, which the front serves on its own) are still relayed.

What grpc.aio did for these calls is done here: one request message (uncompressed, at most
``MAX_MESSAGE_SIZE``), ``grpc-timeout`` as a deadline (DEADLINE_EXCEEDED), a client's reset cancels
the handler, ``context.abort`` ends the call with its status and trailing metadata, an answer over
``MAX_MESSAGE_SIZE`` ends it with RESOURCE_EXHAUSTED, an unexpected exception is logged with its
traceback and reported as UNKNOWN, and at shutdown running calls get a grace period
(``FrontServer.finish_calls``) and then end with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import logging
import re
import struct
from collections.abc import Callable, Iterable
from typing import Any, Protocol, cast
from urllib.parse import quote

import grpc

from buildkitpy.daemon.h2peer import NO_ERROR, Fields, H2Peer
from buildkitpy.session.h2 import MAX_MESSAGE_SIZE

log = logging.getLogger(__name__)

# A call's answers queued beyond what the client's windows let out: its sender waits above this.
SEND_HIGH_WATER = 1 << 20
_U32 = struct.Struct(">L")
_HeaderList = list[tuple[str | bytes, str | bytes]]
RESPONSE_HEADERS: _HeaderList = [
    (b":status", b"200"), (b"content-type", b"application/grpc")]
# grpc-message: printable ASCII but '%' as it is, everything else percent-encoded (UTF-8).
_MESSAGE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if c != 0x25)
# Request headers that are the transport's, not the call's metadata (grpc.aio hides them too).
_TRANSPORT_HEADERS = frozenset((b"te", b"content-type", b"grpc-timeout", b"grpc-encoding",
                                b"grpc-accept-encoding"))
_TIMEOUT = re.compile(rb"([0-9]{1,8})([HMSmun])")
_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


class MethodTable:
    """The method handlers of the services registered on the grpc.aio server, by path.

    :meth:`recording` wraps the server for the generated ``add_*_to_server`` functions: what they
    register goes to the server as before and is remembered here."""

    def __init__(self) -> None:
        self._handlers: dict[bytes, grpc.RpcMethodHandler] = {}

    def recording(self, server: grpc.aio.Server) -> grpc.aio.Server:
        # (only the two registration methods of the API are used by that code)
        return cast(grpc.aio.Server, _Recorder(server, self))

    def add(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        for name, handler in handlers.items():
            self._handlers[f"/{service}/{name}".encode()] = handler

    def native(self, path: bytes, fields: Fields) -> grpc.RpcMethodHandler | None:
        """The handler of ``path`` when the front serves the call: its request is one message, not
        compressed (a compressed one goes to grpc.aio, which can read it)."""
        handler = self._handlers.get(path)
        if handler is None or handler.request_streaming:
            return None
        if any(k == b"grpc-encoding" and v != b"identity" for k, v in fields):
            return None
        return handler


class _Recorder:
    """The grpc.aio server as the generated registration code sees it (see MethodTable)."""

    def __init__(self, server: grpc.aio.Server, table: MethodTable) -> None:
        self._server = server
        self._table = table

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str,
                                       handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self._table.add(service, handlers)
        self._server.add_registered_method_handlers(service, handlers)


class CallOwner(Protocol):
    """What a call needs of the client connection it came on (``front._Connection``)."""

    peer: H2Peer
    closed: bool
    paused: bool

    def write(self) -> None: ...

    def forget(self, sid: int) -> None: ...

    def owns(self, sid: int, call: object) -> bool: ...

    def when_writable(self, wake: Callable[[], None]) -> None: ...


class CallContext:
    """The part of ``grpc.aio.ServicerContext`` the daemon's servicers use, for a native call."""

    def __init__(self, call: NativeCall, metadata: tuple[tuple[str, str | bytes], ...]) -> None:
        self._call = call
        self._metadata = metadata
        self.code: grpc.StatusCode = grpc.StatusCode.OK
        self.details = ""
        self.trailing_metadata: tuple[tuple[str, str | bytes], ...] = ()

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata

    async def send_initial_metadata(self, metadata: Iterable[tuple[str, str | bytes]]) -> None:
        self._call.send_headers(tuple(metadata))

    async def write(self, message: Any) -> None:
        await self._call.send_message(message)

    async def abort(self, code: grpc.StatusCode, details: str = "",
                    trailing_metadata: Iterable[tuple[str, str | bytes]] = ()) -> None:
        if code == grpc.StatusCode.OK:
            raise ValueError("abort with an OK status")
        self.code, self.details, self.trailing_metadata = code, details, tuple(trailing_metadata)
        raise grpc.aio.AbortError()

    async def abort_with_status(self, status: grpc.Status) -> None:
        await self.abort(status.code, status.details, status.trailing_metadata)


class _CallEnded(Exception):
    """The call's status is sent already (an answer over the size limit): its handler stops."""


class NativeCall:
    """One call the front serves itself (module docstring): the request's frames are collected, the
    handler runs in a task of its own once the request message is complete (half-closed or not),
    its answers go out as they come (the handler waits while the client's windows hold back more
    than ``SEND_HIGH_WATER``)."""

    def __init__(self, conn: CallOwner, sid: int, path: bytes, handler: grpc.RpcMethodHandler) -> None:
        self.conn = conn
        self.sid = sid
        self.method = path.decode("latin-1")
        self.handler = handler
        self.context = CallContext(self, ())
        self.task: asyncio.Task[None] | None = None
        self.deadline: float | None = None
        self.cancelled = False
        self._request = bytearray()
        self._headers_sent = False
        self._ended = False
        self._room = asyncio.Event()
        self._room.set()

    def begin(self, fields: Fields, end_stream: bool) -> None:
        """The request's headers (the call is the stream's route already: it may end at once)."""
        metadata: list[tuple[str, str | bytes]] = []
        for key, value in fields:
            if key[:1] == b":" or key in _TRANSPORT_HEADERS:
                continue
            name = key.decode("latin-1")
            if name.endswith("-bin"):
                try:
                    metadata.append((name, base64.b64decode(value + b"=" * (-len(value) % 4))))
                except ValueError:
                    self._fail(grpc.StatusCode.INTERNAL, f"metadata {name}: invalid base64")
                    return
            else:
                metadata.append((name, value.decode("latin-1")))
        self.context = CallContext(self, tuple(metadata))
        timeout = next((v for k, v in fields if k == b"grpc-timeout"), None)
        if timeout is not None:
            match = _TIMEOUT.fullmatch(timeout)
            if match is None:
                self._fail(grpc.StatusCode.INTERNAL, f"invalid grpc-timeout {timeout.decode('latin-1')!r}")
                return
            seconds = int(match[1]) * _TIMEOUT_UNITS[match[2]]
            self.deadline = asyncio.get_running_loop().time() + seconds
        if end_stream:
            self._take_request(end_stream)

    # -- from the client ---------------------------------------------------------------------------

    def client_headers(self, fields: Fields, end_stream: bool) -> None:
        if end_stream:
            self._take_request(end_stream)

    def client_data(self, data: memoryview, end_stream: bool) -> None:
        if self._ended:
            return
        conn = self.conn
        conn.peer.consumed(self.sid, len(data))
        if self.task is not None:
            return  # after the request message: whatever else the client sends is not read
        if len(self._request) + len(data) > MAX_MESSAGE_SIZE + 5:
            self._fail(grpc.StatusCode.RESOURCE_EXHAUSTED,
                       f"received message larger than max ({len(self._request) + len(data) - 5} vs. "
                       f"{MAX_MESSAGE_SIZE})")
            return
        self._request += data
        self._take_request(end_stream)

    def client_reset(self, code: int) -> None:
        self.cancelled = True
        if self.task is not None:
            self.task.cancel()

    def lost(self, reason: str) -> None:
        self.cancelled = True
        if self.task is not None:
            self.task.cancel()

    def shut_down(self) -> None:
        """The daemon is going away: the call ends with UNAVAILABLE (as grpc.aio ends the calls it
        cancels at shutdown) and its handler is cancelled."""
        self._end(status_trailers(grpc.StatusCode.UNAVAILABLE, "the daemon is shutting down"))
        self.cancelled = True
        if self.task is not None:
            self.task.cancel()

    def sent_to_client(self, nbytes: int) -> None:
        peer = self.conn.peer
        if peer.pending(self.sid) <= SEND_HIGH_WATER:
            self._room.set()
        if self._ended:
            self._reset_if_answered()
        if self.sid not in peer.streams and self.conn.owns(self.sid, self):
            self.conn.forget(self.sid)

    def _reset_if_answered(self) -> None:
        """Once the whole answer is out and the client still has not half-closed: RST_STREAM
        (NO_ERROR), it need not send more (RFC 9113 8.1, as grpc servers do)."""
        stream = self.conn.peer.streams.get(self.sid)
        if stream is not None and stream.local_closed and not stream.remote_closed:
            self.conn.peer.reset(self.sid, NO_ERROR)

    # -- the handler -------------------------------------------------------------------------------

    def _take_request(self, end_stream: bool) -> None:
        """Start the handler once the request message is complete (the client need not half-close
        first, as with grpc.aio); at the end of the stream without one, the call fails."""
        if self.task is not None or self._ended:
            return
        request = self._request
        if len(request) >= 5:
            if request[0]:
                self._fail(grpc.StatusCode.INTERNAL, "a compressed message, although none was offered")
                return
            size = _U32.unpack_from(request, 1)[0]
            if size > MAX_MESSAGE_SIZE:
                self._fail(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"received message larger than max ({size} vs. {MAX_MESSAGE_SIZE})")
                return
            if len(request) >= 5 + size:
                self._request = bytearray()
                message = bytes(request[5:5 + size])
                self.task = asyncio.get_running_loop().create_task(self._serve(message), name=self.method)
                return
        if end_stream:
            self._fail(grpc.StatusCode.INTERNAL, "a truncated request" if request else "no request message")

    async def _serve(self, request_bytes: bytes) -> None:
        handler, context = self.handler, self.context
        deadline = asyncio.timeout_at(self.deadline)
        try:
            try:
                deserialize = handler.request_deserializer
                request = deserialize(request_bytes) if deserialize is not None else request_bytes
            except Exception as exc:  # noqa: BLE001 - a message the client got wrong
                self._end(status_trailers(grpc.StatusCode.INTERNAL, f"cannot decode the request: {exc}"))
                return
            async with deadline:
                if handler.response_streaming:
                    answers = handler.unary_stream(request, context)
                    if inspect.isasyncgen(answers):
                        async for answer in answers:
                            await self.send_message(answer)
                    else:
                        await answers
                else:
                    await self.send_message(await handler.unary_unary(request, context))
        except _CallEnded:
            return
        except grpc.aio.AbortError:
            trailers = status_trailers(context.code, context.details, context.trailing_metadata)
        except TimeoutError as exc:
            if not deadline.expired():
                log.error("%s failed", self.method, exc_info=exc)
                trailers = status_trailers(grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc).__name__}: {exc}")
            else:
                trailers = status_trailers(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        except asyncio.CancelledError:
            if not self.cancelled:
                raise
            return
        except Exception as exc:  # noqa: BLE001 - the boundary: logged, reported, the daemon goes on
            log.error("%s failed", self.method, exc_info=exc)
            trailers = status_trailers(grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc).__name__}: {exc}")
        else:
            trailers = status_trailers(context.code, context.details, context.trailing_metadata)
        self._end(trailers)

    def send_headers(self, metadata: tuple[tuple[str, str | bytes], ...] = ()) -> None:
        if self._headers_sent or self._ended:
            return
        self._headers_sent = True
        self.conn.peer.send_headers(self.sid, [*RESPONSE_HEADERS, *_metadata_fields(metadata)])
        self.conn.write()

    async def send_message(self, message: Any) -> None:
        if self._ended or self.sid not in self.conn.peer.streams:
            self.cancelled = True  # the call is over (the client reset it): the handler stops
            raise asyncio.CancelledError()
        serialize = self.handler.response_serializer
        data = serialize(message) if serialize is not None else message
        if len(data) > MAX_MESSAGE_SIZE:
            # a limit the answer met, not a bug: the status gRPC's own servers give
            self._end(status_trailers(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                      f"grpc: trying to send message larger than max ({len(data)} vs. "
                                      f"{MAX_MESSAGE_SIZE})"))
            raise _CallEnded
        conn, peer = self.conn, self.conn.peer
        if not self._headers_sent:
            self._headers_sent = True
            peer.send_headers(self.sid, RESPONSE_HEADERS)
        peer.send_data(self.sid, b"\0" + _U32.pack(len(data)), more=bool(data))
        if data:
            peer.send_data(self.sid, data)
        conn.write()
        while not self._ended and (conn.paused or peer.pending(self.sid) > SEND_HIGH_WATER):
            self._room.clear()
            if conn.paused:
                conn.when_writable(self._room.set)
            await self._room.wait()

    # -- the end -----------------------------------------------------------------------------------

    def _fail(self, code: grpc.StatusCode, message: str) -> None:
        if self.task is not None:
            self.task.cancel()
        self._end(status_trailers(code, message))

    def _end(self, trailers: _HeaderList) -> None:
        conn = self.conn
        if self._ended or conn.closed or not conn.owns(self.sid, self):
            return
        self._ended = True
        self._room.set()
        fields = trailers if self._headers_sent else [*RESPONSE_HEADERS, *trailers]
        peer = conn.peer
        peer.send_headers(self.sid, fields, end_stream=True)
        self._reset_if_answered()  # (or once what waits for the client's window is out)
        conn.write()
        if self.sid not in peer.streams:
            conn.forget(self.sid)


def _metadata_fields(metadata: Iterable[tuple[str, str | bytes]]) -> _HeaderList:
    fields: _HeaderList = []
    for key, value in metadata:
        name = key.lower()
        if name.endswith("-bin"):
            raw = value if isinstance(value, bytes) else value.encode()
            fields.append((name.encode("latin-1"), base64.b64encode(raw).rstrip(b"=")))
        else:
            fields.append((name.encode("latin-1"), value if isinstance(value, bytes) else value.encode()))
    return fields


def status_trailers(code: grpc.StatusCode | int, details: str = "",
                    trailing_metadata: Iterable[tuple[str, str | bytes]] = ()) -> _HeaderList:
    """gRPC trailers: the status (a code or its number), its percent-encoded message, the trailing
    metadata (``-bin`` values base64-encoded)."""
    number = code if isinstance(code, int) else code.value[0]
    fields: _HeaderList = [(b"grpc-status", str(number).encode()),
                           (b"grpc-message", quote(details, safe=_MESSAGE_SAFE).encode())]
    return fields + _metadata_fields(trailing_metadata)


__all__ = ["MethodTable", "NativeCall", "CallContext", "status_trailers", "RESPONSE_HEADERS",
           "SEND_HIGH_WATER"]
