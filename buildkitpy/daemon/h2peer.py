"""A sans-I/O HTTP/2 endpoint that knows streams, not gRPC: bytes in, callbacks and bytes out.

The daemon's front server (:mod:`buildkitpy.daemon.front`) runs one in the server role for each
client connection and one in the client role for each link to the grpc.aio server behind it, and
moves streams between them. What arrives is reported to a :class:`PeerHandler` while
:meth:`H2Peer.receive` runs; what the handler sends is queued and taken with
:meth:`H2Peer.data_to_send`.

What it does (RFC 9113): the preface and SETTINGS (ours: a window of ``STREAM_WINDOW`` per stream
and ``CONNECTION_WINDOW`` on the connection, push off, at most ``MAX_STREAMS`` streams a client may
open), the peer's SETTINGS, windows and maximum frame size honoured when sending, PING answered,
HEADERS/CONTINUATION through HPACK (the ``hpack`` package), padding, RST_STREAM, GOAWAY. Flow
control on receipt: the connection's window is credited as data arrives (the streams' windows bound
what is buffered), a stream's when the handler says it used the bytes (:meth:`H2Peer.consumed`), so
a stream nobody reads stops its sender and no other. A peer that breaks the protocol gets a GOAWAY
naming the error and :class:`~buildkitpy.session.h2.H2ProtocolError` is raised; one that breaks a
stream gets that stream reset.

Per-frame work is one loop over all the frames of a chunk with no object per frame; data is handed
on as views of the received bytes (immutable: a view may be kept).
"""

from __future__ import annotations

import struct
from collections import deque
from typing import Protocol

import hpack

from buildkitpy.session.h2 import (
    CANCEL,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    DEFAULT_FRAME_SIZE,
    DEFAULT_WINDOW,
    ENHANCE_YOUR_CALM,
    FLAG_ACK,
    FLAG_END_HEADERS,
    FLAG_END_STREAM,
    FLAG_PADDED,
    FLAG_PRIORITY,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    MAX_HEADER_BLOCK,
    MAX_HEADER_LIST_SIZE,
    MAX_WINDOW,
    NO_ERROR,
    PING,
    PREFACE,
    PRIORITY,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    SETTINGS_ENABLE_PUSH,
    SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_CONCURRENT_STREAMS,
    STREAM_CLOSED,
    WINDOW_UPDATE,
    H2Endpoint,
    H2ProtocolError,
    frame,
    header_frames,
    take_frame,
)

# What one stream may send ahead of what we used, and the whole connection ahead of what arrived.
STREAM_WINDOW = 4 << 20
CONNECTION_WINDOW = 16 << 20
# Credit goes back once this much is owed (not a WINDOW_UPDATE per frame).
STREAM_CREDIT_AT = STREAM_WINDOW // 4
CONNECTION_CREDIT_AT = CONNECTION_WINDOW // 4
# Streams a client may have open at once on one connection (Go's HTTP/2 server allows 250).
MAX_STREAMS = 1000
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6

_FRAME_HEADER = struct.Struct(">HBBBL")  # 24-bit length as 16+8 bits, type, flags, stream id
_U32 = struct.Struct(">L")
_SETTING = struct.Struct(">HL")
_GOAWAY = struct.Struct(">LL")

Fields = list[tuple[bytes, bytes]]


class PeerHandler(Protocol):
    """What an :class:`H2Peer` reports, while :meth:`H2Peer.receive` (or a send that frees queued
    data) runs. ``data`` is a view of immutable received bytes. A stream that ``end_stream`` closed
    on both sides is already gone from :attr:`H2Peer.streams` when its handler is called."""

    def on_headers(self, sid: int, fields: Fields, end_stream: bool) -> None: ...

    def on_data(self, sid: int, data: memoryview, end_stream: bool) -> None: ...

    def on_reset(self, sid: int, code: int) -> None:
        """The stream is over abnormally (the peer reset it, or it broke the protocol and we did)."""

    def on_sent(self, sid: int, nbytes: int) -> None:
        """``nbytes`` of the stream's queued data went out (room for more; credit to pass on)."""

    def on_goaway(self, last_sid: int, code: int) -> None: ...


class PeerStream:
    __slots__ = ("id", "send_window", "pending", "pending_size", "end_pending", "trailers",
                 "local_closed", "remote_closed", "recv_window", "owed", "seen_headers")

    def __init__(self, sid: int, send_window: int) -> None:
        self.id = sid
        self.send_window = send_window
        self.pending: deque[memoryview] = deque()
        self.pending_size = 0
        self.end_pending = False  # END_STREAM goes out after `pending`
        self.trailers: bytes | None = None  # an encoded header block to end with, after `pending`
        self.local_closed = False
        self.remote_closed = False
        self.recv_window = STREAM_WINDOW
        self.owed = 0
        self.seen_headers = False


class H2Peer(H2Endpoint[PeerStream]):
    """One end of an HTTP/2 connection (module docstring); ``client`` picks the role."""

    def __init__(self, handler: PeerHandler, *, client: bool) -> None:
        super().__init__()
        self.handler = handler
        self.client = client
        self.closed: str | None = None
        self.goaway_received: int | None = None  # the peer's last stream id once it said GOAWAY
        self._preface_left = 0 if client else len(PREFACE)
        self._next_id = 1  # client role: the next stream we open
        self._last_peer_id = 0  # server role: the highest stream the client opened
        self._goaway_last: int | None = None  # the last stream id our first GOAWAY named
        self._block: list[bytes] = []  # a header block waiting for its CONTINUATIONs
        self._block_sid = 0
        self._block_flags = 0
        self._block_size = 0
        settings = [(SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW),
                    (SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST_SIZE)]
        settings.append((SETTINGS_ENABLE_PUSH, 0) if client
                        else (SETTINGS_MAX_CONCURRENT_STREAMS, MAX_STREAMS))
        self._out.append((PREFACE if client else b"")
                         + frame(SETTINGS, 0, 0, b"".join(_SETTING.pack(k, v) for k, v in settings))
                         + frame(WINDOW_UPDATE, 0, 0, _U32.pack(CONNECTION_WINDOW - DEFAULT_WINDOW)))

    # -- output ----------------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 and type(out[0]) is bytes else b"".join(out)
        out.clear()
        return data  # type: ignore[return-value]

    # -- sending ---------------------------------------------------------------------------------

    def open_stream(self) -> int:
        """Client role: the id of a new stream (it exists once its HEADERS are sent)."""
        if self.closed is not None or self.goaway_received is not None or self._next_id > MAX_WINDOW:
            raise ConnectionError(self.closed or "the peer is going away (GOAWAY)")
        sid = self._next_id
        self._next_id += 2
        self.streams[sid] = PeerStream(sid, self._peer_initial_window)
        return sid

    def send_headers(self, sid: int, fields: list[tuple[str | bytes, str | bytes]],
                     end_stream: bool = False) -> None:
        """HEADERS now, or (trailers) after the data still queued on the stream."""
        stream = self.streams.get(sid)
        if stream is None or stream.local_closed or stream.end_pending or stream.trailers is not None:
            return
        block = self._encoder.encode(fields)
        if stream.pending and end_stream:
            stream.trailers = block
            return
        self._emit_headers(sid, block, end_stream)
        if end_stream:
            self._local_end(stream)

    def send_data(self, sid: int, data: bytes | memoryview, end_stream: bool = False, *,
                  more: bool = False) -> None:
        """Queue ``data`` on the stream; it goes out as the peer's windows allow. ``more``: another
        piece follows at once, send them together (not a frame of a message's 5-byte prefix)."""
        stream = self.streams.get(sid)
        if stream is None or stream.local_closed or stream.end_pending or stream.trailers is not None:
            return
        if data:
            stream.pending.append(data if type(data) is memoryview else memoryview(data))
            stream.pending_size += len(data)
        if more:
            return
        stream.end_pending = end_stream
        self._flush_stream(stream)

    def pending(self, sid: int) -> int:
        stream = self.streams.get(sid)
        return stream.pending_size if stream is not None else 0

    def reset(self, sid: int, code: int = CANCEL) -> None:
        stream = self.streams.pop(sid, None)
        if stream is None:
            return
        self._blocked.pop(sid, None)
        if self.closed is None and not (stream.local_closed and stream.remote_closed):
            self._out.append(frame(RST_STREAM, 0, sid, _U32.pack(code)))

    def consumed(self, sid: int, nbytes: int) -> None:
        """The handler used ``nbytes`` of the stream's data: give the credit back (in batches)."""
        stream = self.streams.get(sid)
        if stream is None or stream.remote_closed:
            return
        owed = stream.owed + nbytes
        if owed >= STREAM_CREDIT_AT:
            stream.owed = 0
            stream.recv_window += owed
            self._out.append(frame(WINDOW_UPDATE, 0, sid, _U32.pack(owed)))
        else:
            stream.owed = owed

    def goaway(self, code: int = NO_ERROR, debug: str = "") -> None:
        """Tell the peer we are done: no new streams (those open go on; those it opens from now
        on are refused, as the GOAWAY says they will not be processed)."""
        if self.closed is None:
            self._out.append(frame(GOAWAY, 0, 0, _GOAWAY.pack(self._goaway_sid(), code)
                                   + debug.encode()[:200]))

    def _goaway_sid(self) -> int:
        """The last stream id for a GOAWAY: never more than a GOAWAY said before (RFC 9113 6.8)."""
        if self._goaway_last is None:
            self._goaway_last = self._last_peer_id
        return self._goaway_last

    def connection_lost(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
        self.streams.clear()
        self._blocked.clear()

    # -- receiving -------------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Process a chunk of the connection. Raises ``H2ProtocolError`` (after queueing a GOAWAY)
        if the peer broke the protocol; the caller then closes the connection."""
        if self.closed is not None:
            return
        if self._inbuf:
            data = self._inbuf + data
            self._inbuf = b""
        try:
            if self._preface_left:
                data = self._preface(data)
            if data:
                self._receive(data)
        except H2ProtocolError as err:
            self._out.append(frame(GOAWAY, 0, 0, _GOAWAY.pack(self._goaway_sid(), err.code)
                                   + str(err).encode()[:200]))
            self.connection_lost(f"HTTP/2 protocol error: {err}")
            raise

    def _preface(self, data: bytes) -> bytes:
        done = len(PREFACE) - self._preface_left
        take = data[:self._preface_left]
        if take != PREFACE[done:done + len(take)]:
            raise H2ProtocolError("the connection did not start with the HTTP/2 client preface "
                                  "(not an HTTP/2 or gRPC client?)")
        self._preface_left -= len(take)
        return data[len(take):]

    def _receive(self, data: bytes) -> None:
        view = memoryview(data)
        end = len(data)
        pos = 0
        unpack = _FRAME_HEADER.unpack_from
        streams = self.streams
        handler = self.handler
        while end - pos >= 9:
            hi, lo, kind, flags, sid = unpack(data, pos)
            length = hi << 8 | lo
            if not self._got_settings and kind != SETTINGS:
                raise H2ProtocolError("the connection did not start with SETTINGS")
            if length > DEFAULT_FRAME_SIZE:
                raise H2ProtocolError(f"frame of {length} bytes is over the maximum frame size "
                                      f"{DEFAULT_FRAME_SIZE}", FRAME_SIZE_ERROR)
            if end - pos - 9 < length:
                break
            start = pos + 9
            pos = start + length
            sid &= 0x7FFFFFFF
            if self._block and kind != CONTINUATION:
                raise H2ProtocolError("a header block was interrupted by another frame")
            if kind == DATA:
                if sid == 0:
                    raise H2ProtocolError("DATA on stream 0")
                self._owed += length
                if self._owed >= CONNECTION_CREDIT_AT:
                    self._out.append(frame(WINDOW_UPDATE, 0, 0, _U32.pack(self._owed)))
                    self._owed = 0
                stream = streams.get(sid)
                if stream is None:
                    if not self._known(sid):
                        raise H2ProtocolError(f"DATA on stream {sid}, which was never opened")
                    continue  # a stream that is over for us
                if stream.remote_closed or not stream.seen_headers:
                    self._stream_error(stream, STREAM_CLOSED if stream.remote_closed else PROTOCOL_ERROR)
                    continue
                stream.recv_window -= length
                if stream.recv_window < 0:
                    self._stream_error(stream, FLOW_CONTROL_ERROR)
                    continue
                if flags & FLAG_PADDED:
                    if length < 1 or view[start] >= length:
                        raise H2ProtocolError("DATA padding longer than the frame")
                    pad = view[start]
                    self.consumed(sid, pad + 1)
                    payload = view[start + 1:pos - pad]
                else:
                    payload = view[start:pos]
                end_stream = bool(flags & FLAG_END_STREAM)
                if end_stream:
                    stream.remote_closed = True
                    if stream.local_closed:
                        self._forget(sid)  # before the handler hears of it: the stream is over
                handler.on_data(sid, payload, end_stream)
            elif kind == HEADERS:
                if sid == 0:
                    raise H2ProtocolError("HEADERS on stream 0")
                payload = view[start:pos]
                if flags & FLAG_PADDED:
                    if not payload or payload[0] >= len(payload):
                        raise H2ProtocolError("HEADERS padding longer than the frame")
                    payload = payload[1:len(payload) - payload[0]]
                if flags & FLAG_PRIORITY:
                    if len(payload) < 5:
                        raise H2ProtocolError("HEADERS too short for its priority", FRAME_SIZE_ERROR)
                    payload = payload[5:]
                self._block = [bytes(payload)]
                self._block_sid = sid
                self._block_flags = flags
                self._block_size = len(payload)
                if flags & FLAG_END_HEADERS:
                    self._header_block_done()
            elif kind == CONTINUATION:
                if not self._block or sid != self._block_sid:
                    raise H2ProtocolError("CONTINUATION without a header block to continue")
                self._block.append(bytes(view[start:pos]))
                self._block_size += length
                if self._block_size > MAX_HEADER_BLOCK:
                    raise H2ProtocolError("header block too large", ENHANCE_YOUR_CALM)
                if flags & FLAG_END_HEADERS:
                    self._header_block_done()
            elif kind == SETTINGS:
                self._settings(sid, flags, view[start:pos])
            elif kind == WINDOW_UPDATE:
                if length != 4:
                    raise H2ProtocolError("WINDOW_UPDATE of a length other than 4", FRAME_SIZE_ERROR)
                self._window_update(sid, _U32.unpack_from(data, start)[0] & 0x7FFFFFFF)
            elif kind == PING:
                if length != 8 or sid != 0:
                    raise H2ProtocolError("malformed PING",
                                          FRAME_SIZE_ERROR if length != 8 else PROTOCOL_ERROR)
                if not flags & FLAG_ACK:
                    self._out.append(frame(PING, FLAG_ACK, 0, bytes(view[start:pos])))
            elif kind == RST_STREAM:
                if length != 4 or sid == 0:
                    raise H2ProtocolError("malformed RST_STREAM", FRAME_SIZE_ERROR if length != 4
                                          else PROTOCOL_ERROR)
                if sid not in streams:
                    if not self._known(sid):
                        raise H2ProtocolError(f"RST_STREAM on stream {sid}, which was never opened")
                    continue
                self._forget(sid)
                handler.on_reset(sid, _U32.unpack_from(data, start)[0])
            elif kind == GOAWAY:
                if length < 8 or sid != 0:
                    raise H2ProtocolError("malformed GOAWAY",
                                          FRAME_SIZE_ERROR if length < 8 else PROTOCOL_ERROR)
                last, code = _GOAWAY.unpack_from(data, start)
                self.goaway_received = last & 0x7FFFFFFF
                handler.on_goaway(self.goaway_received, code)
            elif kind == PRIORITY:
                if length != 5:
                    raise H2ProtocolError("PRIORITY of a length other than 5", FRAME_SIZE_ERROR)
            elif kind == PUSH_PROMISE:
                raise H2ProtocolError("PUSH_PROMISE although push is disabled")
            # other frame types are ignored (RFC 9113 5.5)
        if pos < end:
            self._inbuf = bytes(view[pos:])

    def _known(self, sid: int) -> bool:
        """Whether ``sid`` was opened on this connection (now closed, as it is not in ``streams``)."""
        if self.client:
            return sid % 2 == 1 and sid < self._next_id
        return sid % 2 == 1 and sid <= self._last_peer_id

    def _header_block_done(self) -> None:
        sid, flags = self._block_sid, self._block_flags
        block, self._block = self._block, []
        try:
            fields: Fields = list(self._decoder.decode(b"".join(block), raw=True))  # type: ignore[arg-type]
        except hpack.HPACKError as err:
            raise H2ProtocolError(f"bad header block: {err}", COMPRESSION_ERROR) from None
        end_stream = bool(flags & FLAG_END_STREAM)
        stream = self.streams.get(sid)
        if stream is None:
            if self.client or self._known(sid):
                if not self._known(sid):
                    raise H2ProtocolError(f"HEADERS on stream {sid}, which we never opened")
                return  # a stream that is over for us: decoded for HPACK's table only
            if sid % 2 == 0:
                raise H2ProtocolError(f"a client opened stream {sid} (an even id)")
            self._last_peer_id = sid
            if len(self.streams) >= MAX_STREAMS or (self._goaway_last is not None
                                                    and sid > self._goaway_last):
                self._out.append(frame(RST_STREAM, 0, sid, _U32.pack(REFUSED_STREAM)))
                return
            stream = self.streams[sid] = PeerStream(sid, self._peer_initial_window)
        elif stream.remote_closed:
            self._stream_error(stream, STREAM_CLOSED)
            return
        elif stream.seen_headers and not end_stream and not self.client:
            self._stream_error(stream, PROTOCOL_ERROR)  # trailers must end the stream
            return
        stream.seen_headers = True
        if end_stream:
            stream.remote_closed = True
            if stream.local_closed:
                self._forget(sid)  # before the handler hears of it: the stream is over
        self.handler.on_headers(sid, fields, end_stream)

    def _window_update(self, sid: int, increment: int) -> None:
        if sid == 0:
            if increment == 0:
                raise H2ProtocolError("connection WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise H2ProtocolError("connection window over 2^31-1", FLOW_CONTROL_ERROR)
            self._flush_blocked()
            return
        stream = self.streams.get(sid)
        if stream is None:
            if not self._known(sid):
                raise H2ProtocolError(f"WINDOW_UPDATE on stream {sid}, which was never opened")
            return
        if increment == 0:
            self._stream_error(stream, PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self._stream_error(stream, FLOW_CONTROL_ERROR)
            return
        if stream.pending or stream.end_pending or stream.trailers is not None:
            self._flush_stream(stream)

    # -- sending data ----------------------------------------------------------------------------

    def _emit_headers(self, sid: int, block: bytes, end_stream: bool) -> None:
        self._out.extend(header_frames(sid, block, self._peer_max_frame, end_stream))

    def _flush_stream(self, stream: PeerStream) -> None:
        pending = stream.pending
        max_frame = self._peer_max_frame
        out = self._out
        sid = stream.id
        sent = 0
        while pending:
            allowed = min(self._send_window, stream.send_window, max_frame)
            if allowed <= 0:
                self._blocked[sid] = stream
                break
            parts, size = take_frame(pending, allowed)
            self._send_window -= size
            stream.send_window -= size
            stream.pending_size -= size
            sent += size
            end = stream.end_pending and not pending
            out.append(_FRAME_HEADER.pack(size >> 8, size & 0xFF, DATA, FLAG_END_STREAM if end else 0, sid))
            out.extend(parts)
            if end:
                stream.end_pending = False
                self._local_end(stream)
        else:
            self._blocked.pop(sid, None)
            if stream.end_pending:
                stream.end_pending = False
                out.append(frame(DATA, FLAG_END_STREAM, sid))
                self._local_end(stream)
            elif stream.trailers is not None:
                block, stream.trailers = stream.trailers, None
                self._emit_headers(sid, block, True)
                self._local_end(stream)
        if sent:
            self.handler.on_sent(sid, sent)

    def _flush_blocked(self) -> None:
        for stream in list(self._blocked.values()):
            if self._send_window <= 0:
                return
            if self.streams.get(stream.id) is stream:
                self._flush_stream(stream)
            else:
                self._blocked.pop(stream.id, None)

    # -- stream ends -----------------------------------------------------------------------------

    def _local_end(self, stream: PeerStream) -> None:
        stream.local_closed = True
        if stream.remote_closed:
            self._forget(stream.id)

    def _forget(self, sid: int) -> None:
        self.streams.pop(sid, None)
        self._blocked.pop(sid, None)

    def _stream_error(self, stream: PeerStream, code: int) -> None:
        self._out.append(frame(RST_STREAM, 0, stream.id, _U32.pack(code)))
        self._forget(stream.id)
        self.handler.on_reset(stream.id, code)


__all__ = ["H2Peer", "PeerHandler", "H2ProtocolError", "Fields", "CANCEL", "REFUSED_STREAM", "NO_ERROR"]
