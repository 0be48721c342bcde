"""A sans-I/O HTTP/2 gRPC client connection: bytes in, state changes and bytes out.

The daemon is the gRPC *client* of a build client's session (module docstring of
:mod:`buildkitpy.session.manager`), and the session's HTTP/2 connection arrives as the chunks of a
``Control.Session`` stream. :class:`H2Connection` runs that connection without a socket: the driver
(:mod:`buildkitpy.session.pipechannel`) feeds it the chunks (:meth:`H2Connection.receive_data`),
sends what :meth:`H2Connection.data_to_send` returns, and wakes the calls of the streams
:meth:`H2Connection.take_changed` names.

It does what a gRPC client needs and no more (RFC 9113, gRPC's PROTOCOL-HTTP2.md):

* preface, SETTINGS (push off, a 16 MiB initial stream window) and a connection WINDOW_UPDATE to
  the same size; the peer's SETTINGS, windows and maximum frame size are honoured when sending;
  PINGs are answered (Go's gRPC server sends them to estimate the bandwidth-delay product);
* received data is credited back to the connection as it arrives and to a stream as the
  application consumes its messages (a stream that is not read stops its sender, the others go on);
* HEADERS/CONTINUATION through HPACK (the ``hpack`` package), gRPC's 5-byte message prefix
  (identity only: a compressed message fails its call with INTERNAL, as we never offer an
  encoding), trailers (``grpc-status``, percent-decoded ``grpc-message``), RST_STREAM and GOAWAY
  mapped to status codes as grpc-core maps them, ``grpc-timeout``;
* a peer that breaks the protocol gets a GOAWAY with the error and :class:`H2ProtocolError` is
  raised: every call fails with UNAVAILABLE and the caller closes the connection.

Per-frame work is one loop over all frames of a chunk with no object per frame; messages are kept
as ``bytes`` for the caller's deserializer.
"""

from __future__ import annotations

import base64
import struct
from collections import deque
from collections.abc import Iterable
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import unquote

import grpc
import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
FLAG_PRIORITY = 0x20

NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, SETTINGS_TIMEOUT, STREAM_CLOSED, \
    FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, CONNECT_ERROR, ENHANCE_YOUR_CALM, \
    INADEQUATE_SECURITY, HTTP_1_1_REQUIRED = range(14)

SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5

MAX_WINDOW = (1 << 31) - 1
DEFAULT_WINDOW = 65535
DEFAULT_FRAME_SIZE = 16384
# What we let the peer send ahead, per stream and on the connection (BuildKit's own session
# connection advertises the same order of magnitude through grpc-go's dynamic windows).
RECEIVE_WINDOW = 16 << 20
# Credit is given back once this much is owed (fewer WINDOW_UPDATEs than one per frame).
WINDOW_UPDATE_THRESHOLD = RECEIVE_WINDOW // 4
# BuildKit's limit (containerd defaults).
MAX_MESSAGE_SIZE = 16 << 20
# A header block (HEADERS + CONTINUATIONs) larger than this ends the connection.
MAX_HEADER_BLOCK = 1 << 20
MAX_HEADER_LIST_SIZE = 1 << 20

_FRAME_HEADER = struct.Struct(">HBBBL")  # 24-bit length as 16+8 bits, type, flags, stream id
_U32 = struct.Struct(">L")
_SETTING = struct.Struct(">HL")
_GOAWAY = struct.Struct(">LL")

_HTTP_TO_GRPC = {400: grpc.StatusCode.INTERNAL, 401: grpc.StatusCode.UNAUTHENTICATED,
                 403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.UNIMPLEMENTED,
                 429: grpc.StatusCode.UNAVAILABLE, 502: grpc.StatusCode.UNAVAILABLE,
                 503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.UNAVAILABLE}
_CODES = {code.value[0]: code for code in grpc.StatusCode}

Metadata = tuple[tuple[str, str | bytes], ...]


class H2ProtocolError(Exception):
    """The peer broke HTTP/2 (or gRPC's framing of it) badly enough to end the connection."""

    def __init__(self, message: str, code: int = PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


class _StreamError(Exception):
    """The peer broke the protocol on one stream: that stream is reset and its call fails."""

    def __init__(self, message: str, code: int = PROTOCOL_ERROR,
                 status: grpc.StatusCode = grpc.StatusCode.INTERNAL) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _FRAME_HEADER.pack(n >> 8, n & 0xFF, kind, flags, stream_id) + payload


def take_frame(pending: deque[memoryview], allowed: int) -> tuple[list[memoryview], int]:
    """One DATA frame's payload from the front of a stream's ``pending`` pieces: whole pieces up to
    ``allowed`` bytes (``allowed`` > 0), the last one split. Returns the parts and their size; what
    is left stays in ``pending`` (both HTTP/2 endpoints send through this)."""
    parts = []
    size = 0
    while pending and size < allowed:
        piece = pending[0]
        room = allowed - size
        if len(piece) <= room:
            parts.append(piece)
            size += len(piece)
            pending.popleft()
        else:
            parts.append(piece[:room])
            pending[0] = piece[room:]
            size += room
    return parts, size


def header_frames(sid: int, block: bytes, max_frame: int, end_stream: bool = False) -> list[bytes]:
    """A header block as HEADERS and as many CONTINUATIONs as ``max_frame`` (the peer's maximum
    frame size) asks for."""
    flag_end = FLAG_END_STREAM if end_stream else 0
    if len(block) <= max_frame:
        return [frame(HEADERS, FLAG_END_HEADERS | flag_end, sid, block)]
    frames = [frame(HEADERS, flag_end, sid, block[:max_frame])]
    for i in range(max_frame, len(block), max_frame):
        last = i + max_frame >= len(block)
        frames.append(frame(CONTINUATION, FLAG_END_HEADERS if last else 0, sid, block[i:i + max_frame]))
    return frames


def read_settings(sid: int, flags: int, payload: memoryview) -> dict[int, int] | None:
    """The settings a SETTINGS frame carries (the last value of a repeated one), checked as RFC 9113
    6.5.2 says; None for an ACK. Raises :class:`H2ProtocolError` for a frame or value the peer may
    not send."""
    if sid != 0:
        raise H2ProtocolError("SETTINGS on a stream")
    if flags & FLAG_ACK:
        if payload:
            raise H2ProtocolError("SETTINGS ACK with a payload", FRAME_SIZE_ERROR)
        return None
    if len(payload) % 6:
        raise H2ProtocolError("SETTINGS of a length that is not a multiple of 6", FRAME_SIZE_ERROR)
    settings: dict[int, int] = {}
    for i in range(0, len(payload), 6):
        key, value = _SETTING.unpack_from(payload, i)
        if key == SETTINGS_INITIAL_WINDOW_SIZE and value > MAX_WINDOW:
            raise H2ProtocolError("initial window over 2^31-1", FLOW_CONTROL_ERROR)
        if key == SETTINGS_MAX_FRAME_SIZE and not DEFAULT_FRAME_SIZE <= value <= (1 << 24) - 1:
            raise H2ProtocolError(f"invalid SETTINGS_MAX_FRAME_SIZE {value}")
        if key == SETTINGS_ENABLE_PUSH and value > 1:
            raise H2ProtocolError(f"invalid SETTINGS_ENABLE_PUSH {value}")
        settings[key] = value
    return settings


class Stream:
    """One call's stream. The driver reads ``messages``/``headers``/``status``; ``waker`` is the
    driver's own (the connection only hands the streams that changed to :meth:`take_changed`)."""

    __slots__ = ("id", "messages", "headers", "status", "send_window", "pending", "pending_size",
                 "end_pending", "local_closed", "remote_closed", "reset", "owed", "recv_window", "_buf",
                 "waker", "_queued", "_header_block", "_header_end_stream")

    def __init__(self, stream_id: int, send_window: int) -> None:
        self.id = stream_id
        self.messages: deque[bytes] = deque()
        # Initial metadata once the response headers came.
        self.headers: Metadata | None = None
        # (code, details, trailing metadata) once the call is over.
        self.status: tuple[grpc.StatusCode, str, Metadata] | None = None
        self.send_window = send_window
        self.pending: deque[memoryview] = deque()
        self.pending_size = 0
        self.end_pending = False  # END_STREAM goes out after `pending`
        self.local_closed = False  # END_STREAM sent (or the stream reset)
        self.remote_closed = False
        self.reset = False
        self.owed = 0  # consumed bytes not yet credited back with a WINDOW_UPDATE
        self.recv_window = RECEIVE_WINDOW  # what the peer may still send
        self._buf = bytearray()  # the start of a message split across frames
        self.waker: Any = None
        self._queued = False  # in the connection's changed list
        self._header_block: list[bytes] | None = None
        self._header_end_stream = False

    @property
    def done(self) -> bool:
        return self.status is not None


def _queue_message(stream: Stream, message: bytes) -> None:
    if type(message) is not bytes:
        message = bytes(message)  # queued by reference until it goes out
    n = len(message)
    if n > MAX_MESSAGE_SIZE:
        raise ValueError(f"message of {n} bytes is over the limit of {MAX_MESSAGE_SIZE}")
    prefix = b"\0" + _U32.pack(n)
    if n <= 16384:
        stream.pending.append(memoryview(prefix + message))
    else:
        stream.pending.append(memoryview(prefix))
        stream.pending.append(memoryview(message))
    stream.pending_size += n + 5


class _Windowed(Protocol):
    send_window: int  # what the peer lets us send on the stream


_StreamT = TypeVar("_StreamT", bound=_Windowed)


class H2Endpoint(Generic[_StreamT]):
    """What both HTTP/2 endpoints (:class:`H2Connection` here, the daemon's
    :class:`buildkitpy.daemon.h2peer.H2Peer`) keep of the connection's state and of the peer's
    settings, and how they apply a SETTINGS frame."""

    def __init__(self) -> None:
        self.streams: dict[int, _StreamT] = {}
        self._out: list[bytes | memoryview] = []
        self._inbuf = b""
        self._encoder = hpack.Encoder()
        self._decoder = hpack.Decoder(max_header_list_size=MAX_HEADER_LIST_SIZE)
        self._decoder.max_allowed_table_size = 4096
        self._got_settings = False
        self._send_window = DEFAULT_WINDOW
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = DEFAULT_FRAME_SIZE
        self._blocked: dict[int, _StreamT] = {}  # streams with data waiting for window
        self._owed = 0  # connection-level credit not yet given back

    def _emit(self, data: bytes | memoryview) -> None:
        self._out.append(data)

    def _flush_blocked(self) -> None:
        raise NotImplementedError

    def _settings(self, sid: int, flags: int, payload: memoryview) -> None:
        settings = read_settings(sid, flags, payload)
        if settings is None:
            return
        self._got_settings = True
        window = settings.get(SETTINGS_INITIAL_WINDOW_SIZE)
        if window is not None:
            delta = window - self._peer_initial_window
            self._peer_initial_window = window
            for stream in self.streams.values():
                stream.send_window += delta
        self._peer_max_frame = settings.get(SETTINGS_MAX_FRAME_SIZE, self._peer_max_frame)
        if SETTINGS_HEADER_TABLE_SIZE in settings:
            self._encoder.header_table_size = min(settings[SETTINGS_HEADER_TABLE_SIZE], 1 << 16)
        self._emit(frame(SETTINGS, FLAG_ACK, 0))
        self._flush_blocked()


class H2Connection(H2Endpoint[Stream]):
    """The client end of one HTTP/2 connection carrying gRPC calls (module docstring)."""

    def __init__(self, authority: str = "localhost", user_agent: str = "buildkitpy") -> None:
        super().__init__()
        self.authority = authority
        self.user_agent = user_agent
        self.closed: str | None = None  # why, once the connection is over
        self.outbound_size = 0
        self._changed: list[Stream] = []
        self._next_id = 1
        self._continuation: Stream | None = None  # the stream whose header block is unfinished
        self._continuation_id = 0
        self._continuation_size = 0
        self._goaway_last: int | None = None
        self._credited = False  # window credit came in the chunk being received
        settings = b"".join(_SETTING.pack(k, v) for k, v in (
            (SETTINGS_ENABLE_PUSH, 0), (SETTINGS_INITIAL_WINDOW_SIZE, RECEIVE_WINDOW),
            (SETTINGS_MAX_CONCURRENT_STREAMS, 0)))
        self._emit(PREFACE + frame(SETTINGS, 0, 0, settings)
                   + frame(WINDOW_UPDATE, 0, 0, _U32.pack(RECEIVE_WINDOW - DEFAULT_WINDOW)))

    # -- what the driver asks ------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        out = self._out
        if not out:
            return b""
        data = b"".join(out)
        out.clear()
        self.outbound_size = 0
        return data

    def chunks_to_send(self, limit: int) -> list[bytes]:
        """``data_to_send`` as chunks of at most ``limit`` bytes, each joined once from the queued
        pieces (slicing the joined whole copied a large export's data once more)."""
        out = self._out
        if not out:
            return []
        if self.outbound_size <= limit:
            data = self.data_to_send()
            return [data] if data else []
        chunks: list[bytes] = []
        parts: list[bytes | memoryview] = []
        size = 0
        for piece in out:
            while len(piece) > limit - size:
                room = limit - size
                view = memoryview(piece)
                parts.append(view[:room])
                chunks.append(b"".join(parts))
                parts, size = [], 0
                piece = view[room:]
            if piece:
                parts.append(piece)
                size += len(piece)
        if parts:
            chunks.append(b"".join(parts))
        out.clear()
        self.outbound_size = 0
        return chunks

    def take_changed(self) -> list[Stream]:
        changed = self._changed
        if not changed:
            return changed
        self._changed = []
        for s in changed:
            s._queued = False
        return changed

    # -- calls ---------------------------------------------------------------------------------------

    def open_stream(self, path: str, metadata: Metadata = (), timeout: float | None = None) -> Stream:
        """Start a call: HEADERS for ``path`` (``/pkg.Service/Method``) with ``metadata``."""
        stream = Stream(self._next_id, self._peer_initial_window)
        if self.closed is not None or self._goaway_last is not None or self._next_id > MAX_WINDOW:
            why = self.closed or "the peer is going away (GOAWAY)"
            stream.local_closed = stream.remote_closed = True
            stream.status = (grpc.StatusCode.UNAVAILABLE, why, ())
            return stream
        self._next_id += 2
        headers: list[tuple[str, str | bytes]] = [
            (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", self.authority),
            ("content-type", "application/grpc"), ("user-agent", self.user_agent), ("te", "trailers")]
        if timeout is not None:
            headers.append(("grpc-timeout", _encode_timeout(timeout)))
        for key, value in metadata:
            if key.endswith("-bin"):
                raw = value if isinstance(value, bytes) else value.encode()
                value = base64.b64encode(raw).rstrip(b"=").decode()
            elif isinstance(value, bytes):
                value = value.decode("latin-1")
            headers.append((key, value))
        block = self._encoder.encode(headers)
        self._send_headers(stream.id, block)
        self.streams[stream.id] = stream
        return stream

    def send_message(self, stream: Stream, message: bytes, end_stream: bool = False) -> None:
        """Queue one gRPC message (prefixed here) on ``stream``; it goes out as windows allow."""
        if stream.local_closed or stream.end_pending:
            return
        _queue_message(stream, message)
        stream.end_pending = end_stream
        self._flush_stream(stream)

    def send_messages(self, stream: Stream, messages: Iterable[bytes]) -> None:
        """``send_message`` of several messages at once: their DATA frames carry as many of them as
        fit (a frame per message would be ~300 frames for a local export's listing)."""
        if stream.local_closed or stream.end_pending:
            return
        for message in messages:
            _queue_message(stream, message)
        self._flush_stream(stream)

    def end_stream(self, stream: Stream) -> None:
        """Half-close: END_STREAM after whatever is queued."""
        if stream.local_closed or stream.end_pending:
            return
        stream.end_pending = True
        self._flush_stream(stream)

    def cancel_stream(self, stream: Stream, code: grpc.StatusCode, details: str) -> None:
        """End the call locally with ``code``: RST_STREAM(CANCEL) unless it is over on the wire."""
        if stream.status is None:
            stream.status = (code, details, ())
        stream.messages.clear()
        if not (stream.local_closed and stream.remote_closed) and self.closed is None:
            self._emit(frame(RST_STREAM, 0, stream.id, _U32.pack(CANCEL)))
        self._forget(stream)

    def consumed(self, stream: Stream, nbytes: int) -> None:
        """The application took ``nbytes`` of message (prefix included) off ``stream``."""
        owed = stream.owed + nbytes
        if owed >= WINDOW_UPDATE_THRESHOLD and not stream.remote_closed:
            stream.owed = 0
            stream.recv_window += owed
            self._emit(frame(WINDOW_UPDATE, 0, stream.id, _U32.pack(owed)))
        else:
            stream.owed = owed

    def connection_lost(self, reason: str) -> None:
        """The pipe ended: every call still open fails with UNAVAILABLE."""
        if self.closed is None:
            self.closed = reason
        for stream in list(self.streams.values()):
            self._finish(stream, grpc.StatusCode.UNAVAILABLE, reason)
            self._forget(stream)

    def close(self, code: grpc.StatusCode, details: str) -> None:
        """Close the connection from our side: GOAWAY, every open call ends with ``code``."""
        if self.closed is None:
            self._emit(frame(GOAWAY, 0, 0, _GOAWAY.pack(0, NO_ERROR)))
            self.closed = details
        for stream in list(self.streams.values()):
            self._finish(stream, code, details)
            self._forget(stream)

    # -- incoming ------------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Process a chunk of the connection. Raises :class:`H2ProtocolError` (after queueing a
        GOAWAY and failing every call) if the peer broke the protocol."""
        if self.closed is not None:
            return
        if self._inbuf:
            data = self._inbuf + data
            self._inbuf = b""
        try:
            self._receive(data)
        except H2ProtocolError as err:
            self._emit(frame(GOAWAY, 0, 0, _GOAWAY.pack(0, err.code) + str(err).encode()[:200]))
            self.connection_lost(f"the session's HTTP/2 connection broke: {err}")
            raise

    def _receive(self, data: bytes) -> None:
        view = memoryview(data)
        end = len(data)
        pos = 0
        unpack = _FRAME_HEADER.unpack_from
        streams = self.streams
        self._credited = False
        while end - pos >= 9:
            hi, lo, kind, flags, sid = unpack(data, pos)
            length = hi << 8 | lo
            if not self._got_settings and kind != SETTINGS:
                raise H2ProtocolError("the connection did not start with SETTINGS "
                                      "(the stream is not HTTP/2)")
            if length > DEFAULT_FRAME_SIZE:
                raise H2ProtocolError(f"frame of {length} bytes is over the maximum frame size "
                                      f"{DEFAULT_FRAME_SIZE}", FRAME_SIZE_ERROR)
            if end - pos - 9 < length:
                break
            start = pos + 9
            pos = start + length
            sid &= 0x7FFFFFFF
            if self._continuation is not None and kind != CONTINUATION:
                raise H2ProtocolError("a header block was interrupted by another frame")
            if kind == DATA:
                if sid == 0:
                    raise H2ProtocolError("DATA on stream 0")
                self._owed += length
                if self._owed > RECEIVE_WINDOW:
                    raise H2ProtocolError("the peer sent more than the connection window",
                                          FLOW_CONTROL_ERROR)
                if self._owed >= WINDOW_UPDATE_THRESHOLD:
                    self._emit(frame(WINDOW_UPDATE, 0, 0, _U32.pack(self._owed)))
                    self._owed = 0
                stream = streams.get(sid)
                if stream is None:
                    if sid >= self._next_id:
                        raise H2ProtocolError(f"DATA on stream {sid}, which was never opened")
                    continue  # a stream we already closed
                if stream.remote_closed:
                    self._stream_error(stream, _StreamError(f"DATA after END_STREAM on stream {sid}",
                                                            STREAM_CLOSED))
                    continue
                stream.recv_window -= length
                if stream.recv_window < 0:
                    self._stream_error(stream, _StreamError("the peer sent more than the stream window",
                                                            FLOW_CONTROL_ERROR))
                    continue
                if flags & FLAG_PADDED:
                    if length < 1 or view[start] >= length:
                        raise H2ProtocolError("DATA padding longer than the frame")
                    pad = view[start]
                    stream.owed += pad + 1
                    payload = view[start + 1:pos - pad]
                else:
                    payload = view[start:pos]
                if stream.headers is None:
                    self._stream_error(stream, _StreamError(f"DATA before HEADERS on stream {sid}"))
                    continue
                if payload:
                    try:
                        self._data(stream, payload)
                    except _StreamError as err:
                        self._stream_error(stream, err)
                        continue
                if flags & FLAG_END_STREAM:
                    self._remote_end(stream)
                elif not stream._queued:
                    stream._queued = True
                    self._changed.append(stream)
            elif kind == HEADERS:
                self._headers_frame(sid, flags, view[start:pos])
            elif kind == CONTINUATION:
                stream_c = self._continuation
                if stream_c is None or sid != self._continuation_id:
                    raise H2ProtocolError("CONTINUATION without a header block to continue")
                block = stream_c._header_block
                assert block is not None
                block.append(bytes(view[start:pos]))
                self._continuation_size += length
                if self._continuation_size > MAX_HEADER_BLOCK:
                    raise H2ProtocolError("header block too large", ENHANCE_YOUR_CALM)
                if flags & FLAG_END_HEADERS:
                    self._continuation = None
                    self._header_block_done(stream_c, sid)
            elif kind == SETTINGS:
                self._settings(sid, flags, view[start:pos])
            elif kind == WINDOW_UPDATE:
                if length != 4:
                    raise H2ProtocolError("WINDOW_UPDATE of a length other than 4", FRAME_SIZE_ERROR)
                increment = _U32.unpack_from(data, start)[0] & 0x7FFFFFFF
                self._window_update(sid, increment)
            elif kind == PING:
                if length != 8 or sid != 0:
                    raise H2ProtocolError("malformed PING", FRAME_SIZE_ERROR if length != 8
                                          else PROTOCOL_ERROR)
                if not flags & FLAG_ACK:
                    self._emit(frame(PING, FLAG_ACK, 0, bytes(view[start:pos])))
            elif kind == RST_STREAM:
                if length != 4 or sid == 0:
                    raise H2ProtocolError("malformed RST_STREAM", FRAME_SIZE_ERROR if length != 4
                                          else PROTOCOL_ERROR)
                code = _U32.unpack_from(data, start)[0]
                stream = streams.get(sid)
                if stream is None:
                    if sid >= self._next_id:
                        raise H2ProtocolError(f"RST_STREAM on stream {sid}, which was never opened")
                    continue
                self._peer_reset(stream, code)
            elif kind == GOAWAY:
                if length < 8 or sid != 0:
                    raise H2ProtocolError("malformed GOAWAY", FRAME_SIZE_ERROR if length < 8
                                          else PROTOCOL_ERROR)
                last, code = _GOAWAY.unpack_from(data, start)
                self._goaway(last & 0x7FFFFFFF, code, bytes(view[start + 8:pos]))
            elif kind == PRIORITY:
                if length != 5:
                    raise H2ProtocolError("PRIORITY of a length other than 5", FRAME_SIZE_ERROR)
            elif kind == PUSH_PROMISE:
                raise H2ProtocolError("PUSH_PROMISE although push is disabled")
            # other frame types are ignored (RFC 9113 5.5)
        if pos < end:
            self._inbuf = bytes(view[pos:])
        if self._credited:
            # The window credits of the whole chunk at once: a peer crediting each 16 KiB it
            # reads (Go's net/http2 server does, for the stream and the connection) would
            # otherwise get a frame of 16 KiB per credit, each its own flush.
            self._flush_blocked()

    def _data(self, stream: Stream, payload: memoryview) -> None:
        buf = stream._buf
        if buf:
            buf += payload
            data: memoryview | bytearray = buf
        else:
            data = payload
        n = len(data)
        pos = 0
        messages = stream.messages
        while n - pos >= 5:
            if data[pos]:
                raise _StreamError("a compressed message although we accept no grpc-encoding",
                                   PROTOCOL_ERROR)
            size = _U32.unpack_from(data, pos + 1)[0]
            if size > MAX_MESSAGE_SIZE:
                raise _StreamError(f"received message larger than max ({size} vs. {MAX_MESSAGE_SIZE})",
                                   CANCEL, grpc.StatusCode.RESOURCE_EXHAUSTED)
            if n - pos - 5 < size:
                break
            messages.append(bytes(data[pos + 5:pos + 5 + size]))
            pos += 5 + size
        if data is buf:
            del buf[:pos]
        elif pos < n:
            stream._buf = bytearray(data[pos:])

    def _headers_frame(self, sid: int, flags: int, payload: memoryview) -> None:
        if sid == 0:
            raise H2ProtocolError("HEADERS on stream 0")
        if sid % 2 == 0 or sid >= self._next_id:
            raise H2ProtocolError(f"HEADERS on stream {sid}, which we never opened")
        if flags & FLAG_PADDED:
            if not payload or payload[0] >= len(payload):
                raise H2ProtocolError("HEADERS padding longer than the frame")
            pad = payload[0]
            payload = payload[1:len(payload) - pad]
        if flags & FLAG_PRIORITY:
            if len(payload) < 5:
                raise H2ProtocolError("HEADERS too short for its priority", FRAME_SIZE_ERROR)
            payload = payload[5:]
        stream = self.streams.get(sid)
        if stream is None:
            # A stream we closed: its headers must still go through HPACK to keep the table in step.
            stream = Stream(sid, 0)
            stream.status = (grpc.StatusCode.CANCELLED, "", ())
        stream._header_block = [bytes(payload)]
        stream._header_end_stream = bool(flags & FLAG_END_STREAM)
        if flags & FLAG_END_HEADERS:
            self._header_block_done(stream, sid)
        else:
            self._continuation = stream
            self._continuation_id = sid
            self._continuation_size = len(payload)

    def _header_block_done(self, stream: Stream, sid: int) -> None:
        block = stream._header_block or []
        stream._header_block = None
        try:
            fields = self._decoder.decode(b"".join(block), raw=True)
        except hpack.HPACKError as err:
            raise H2ProtocolError(f"bad header block: {err}", COMPRESSION_ERROR) from None
        if self.streams.get(sid) is not stream:
            return  # closed stream: decoded for the table only
        end_stream = stream._header_end_stream
        try:
            self._headers(stream, fields, end_stream)
        except _StreamError as err:
            self._stream_error(stream, err)

    def _headers(self, stream: Stream, fields: Any, end_stream: bool) -> None:
        if stream.remote_closed:
            raise _StreamError("HEADERS after END_STREAM", STREAM_CLOSED)
        metadata: list[tuple[str, str | bytes]] = []
        http_status = None
        grpc_status = None
        grpc_message = ""
        for raw_key, raw_value in fields:
            key = raw_key.decode("latin-1")
            if key[:1] == ":":
                if key == ":status":
                    http_status = raw_value
                continue
            if key == "grpc-status":
                grpc_status = raw_value
                continue
            if key == "grpc-message":
                grpc_message = unquote(raw_value.decode("latin-1"), errors="replace")
                continue
            if key.endswith("-bin"):
                try:
                    metadata.append((key, base64.b64decode(raw_value + b"=" * (-len(raw_value) % 4))))
                except ValueError:
                    continue
            else:
                metadata.append((key, raw_value.decode("latin-1")))
        first = stream.headers is None
        if first:
            if http_status != b"200":
                code = _HTTP_TO_GRPC.get(_int(http_status), grpc.StatusCode.UNKNOWN)
                shown = http_status.decode("latin-1") if http_status else "none"
                if grpc_status is None or http_status is None:
                    raise _StreamError(f"unexpected HTTP status code received from server: {shown}",
                                       PROTOCOL_ERROR, code)
            stream.headers = tuple(metadata) if not end_stream else ()
        if end_stream:
            if grpc_status is None:
                code, details = grpc.StatusCode.UNKNOWN, "the server sent no grpc-status"
            else:
                code = _CODES.get(_int(grpc_status), grpc.StatusCode.UNKNOWN)
                details = grpc_message
            if stream._buf and code == grpc.StatusCode.OK:
                code, details = grpc.StatusCode.INTERNAL, "the stream ended inside a message"
            self._finish(stream, code, details, tuple(metadata))
            self._remote_end(stream)
        elif not first:
            raise _StreamError("trailers without END_STREAM")
        elif not stream._queued:
            stream._queued = True
            self._changed.append(stream)

    def _window_update(self, sid: int, increment: int) -> None:
        if sid == 0:
            if increment == 0:
                raise H2ProtocolError("connection WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise H2ProtocolError("connection window over 2^31-1", FLOW_CONTROL_ERROR)
            self._credited = True  # blocked streams are flushed at the end of the chunk
            return
        stream = self.streams.get(sid)
        if stream is None:
            if sid >= self._next_id:
                raise H2ProtocolError(f"WINDOW_UPDATE on stream {sid}, which was never opened")
            return
        if increment == 0:
            self._stream_error(stream, _StreamError("stream WINDOW_UPDATE of 0"))
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self._stream_error(stream, _StreamError("stream window over 2^31-1", FLOW_CONTROL_ERROR))
            return
        if stream.pending:
            # A stream with data queued is in `_blocked` (only a window stops it): flushed at the
            # end of the chunk.
            self._credited = True

    def _goaway(self, last: int, code: int, debug: bytes) -> None:
        self._goaway_last = last
        why = f"the peer closed the connection (GOAWAY, error code {code}"
        why += f": {debug.decode('utf-8', 'replace')})" if debug else ")"
        for stream in list(self.streams.values()):
            if stream.id > last:
                self._finish(stream, grpc.StatusCode.UNAVAILABLE, why)
                self._forget(stream)

    # -- outgoing ------------------------------------------------------------------------------------

    def _emit(self, data: bytes | memoryview) -> None:
        self._out.append(data)
        self.outbound_size += len(data)

    def _send_headers(self, sid: int, block: bytes) -> None:
        for data in header_frames(sid, block, self._peer_max_frame):
            self._emit(data)

    def _flush_stream(self, stream: Stream) -> None:
        pending = stream.pending
        max_frame = self._peer_max_frame
        emit = self._emit
        sid = stream.id
        while pending:
            allowed = min(self._send_window, stream.send_window, max_frame)
            if allowed <= 0:
                self._blocked[sid] = stream
                return
            parts, size = take_frame(pending, allowed)
            self._send_window -= size
            stream.send_window -= size
            stream.pending_size -= size
            end = stream.end_pending and not pending
            hi = size >> 8
            emit(_FRAME_HEADER.pack(hi, size & 0xFF, DATA, FLAG_END_STREAM if end else 0, sid))
            for part in parts:
                emit(part)  # joined in data_to_send
            if end:
                stream.end_pending = False
                self._local_end(stream)
        self._blocked.pop(sid, None)
        if stream.end_pending:
            stream.end_pending = False
            emit(frame(DATA, FLAG_END_STREAM, sid))
            self._local_end(stream)
        if not stream._queued:  # a writer may be waiting for the data to go out
            stream._queued = True
            self._changed.append(stream)

    def _flush_blocked(self) -> None:
        for stream in list(self._blocked.values()):
            if self._send_window <= 0:
                return
            self._flush_stream(stream)

    # -- stream ends ---------------------------------------------------------------------------------

    def _finish(self, stream: Stream, code: grpc.StatusCode, details: str, trailers: Metadata = ()) -> None:
        if stream.status is None:
            stream.status = (code, details, trailers)
        if not stream._queued:
            stream._queued = True
            self._changed.append(stream)

    def _remote_end(self, stream: Stream) -> None:
        stream.remote_closed = True
        if stream.status is None:
            # END_STREAM on DATA: the server must end with trailers.
            self._stream_error(stream, _StreamError("the stream ended without trailers"))
            return
        if not stream.local_closed:
            # The server answered before we finished sending: stop sending (as grpc-go does).
            self._emit(frame(RST_STREAM, 0, stream.id, _U32.pack(NO_ERROR)))
            stream.local_closed = True
        self._forget(stream)
        if not stream._queued:
            stream._queued = True
            self._changed.append(stream)

    def _local_end(self, stream: Stream) -> None:
        stream.local_closed = True
        if stream.remote_closed:
            self._forget(stream)

    def _forget(self, stream: Stream) -> None:
        stream.pending.clear()
        stream.pending_size = 0
        stream.end_pending = False
        stream.local_closed = stream.remote_closed = True
        self.streams.pop(stream.id, None)
        self._blocked.pop(stream.id, None)
        if not stream._queued:
            stream._queued = True
            self._changed.append(stream)

    def _stream_error(self, stream: Stream, err: _StreamError) -> None:
        self._finish(stream, err.status, f"the session's peer broke the protocol: {err}")
        if not (stream.local_closed and stream.remote_closed):
            self._emit(frame(RST_STREAM, 0, stream.id, _U32.pack(err.code)))
        stream.messages.clear()
        self._forget(stream)

    def _peer_reset(self, stream: Stream, code: int) -> None:
        if code == CANCEL:
            status = grpc.StatusCode.CANCELLED
        elif code == REFUSED_STREAM:
            status = grpc.StatusCode.UNAVAILABLE
        elif code == ENHANCE_YOUR_CALM:
            status = grpc.StatusCode.RESOURCE_EXHAUSTED
        elif code == INADEQUATE_SECURITY:
            status = grpc.StatusCode.PERMISSION_DENIED
        else:
            status = grpc.StatusCode.INTERNAL
        self._finish(stream, status, f"Received RST_STREAM with error code {code}")
        stream.reset = True
        self._forget(stream)


def _int(value: bytes | None) -> int:
    try:
        return int(value or b"")
    except ValueError:
        return -1


def _encode_timeout(seconds: float) -> str:
    """gRPC's ``grpc-timeout``: at most 8 digits and a unit."""
    seconds = max(seconds, 0.0)
    for unit, scale in (("u", 1e6), ("m", 1e3), ("S", 1.0), ("M", 1 / 60), ("H", 1 / 3600)):
        value = int(seconds * scale + 0.999999)
        if value < 100_000_000:
            return f"{value}{unit}"
    return "99999999H"


__all__ = ["H2Connection", "H2ProtocolError", "Stream", "MAX_MESSAGE_SIZE", "header_frames", "read_settings"]
