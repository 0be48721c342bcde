"""The daemon's session channel (pipechannel + the sans-I/O h2 core) against independent peers.

A real grpcio server (a separate HTTP/2 implementation) serves on a unix socket; the channel runs
over the bytes of one connection to it, read and written by the test like a session pipe. A
scripted raw HTTP/2 peer (hpack for its headers) plays a client that resets streams or sends
malformed frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import struct
import time
from collections.abc import AsyncIterator

import anyio
import grpc
import hpack
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from buildkitpy.session import h2
from buildkitpy.session.pipechannel import PipeChannel, channel_over_pipe

pytestmark = pytest.mark.anyio

SERVICE = "buildkitpy.test.Peer"


def _method(name: str) -> str:
    return f"/{SERVICE}/{name}"


class _Servicer:
    """Raw-bytes handlers of every call shape."""

    def __init__(self) -> None:
        self.seen_metadata: list[tuple[str, str | bytes]] = []
        self.cancelled = asyncio.Event()

    def handlers(self) -> grpc.GenericRpcHandler:
        async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self.seen_metadata = list(context.invocation_metadata() or ())
            await context.send_initial_metadata((("initial-key", "v1"), ("initial-bin", b"\x00\xff")))
            context.set_trailing_metadata((("trailer-key", "t1"),))
            return request

        async def fail(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "naïve 100% failure\nline 2")

        async def slow(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
            return b""

        async def produce(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            count, size = struct.unpack(">II", request)
            for i in range(count):
                yield i.to_bytes(4, "big") * (size // 4)

        async def total(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
            n = 0
            async for request in requests:
                n += len(request)
            return str(n).encode()

        async def echo_stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
                              ) -> AsyncIterator[bytes]:
            async for request in requests:
                yield request

        async def answer_early(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
                               ) -> AsyncIterator[bytes]:
            await requests.__anext__()
            yield b"early"

        return grpc.method_handlers_generic_handler(SERVICE, {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
            "Slow": grpc.unary_unary_rpc_method_handler(slow),
            "Produce": grpc.unary_stream_rpc_method_handler(produce),
            "Total": grpc.stream_unary_rpc_method_handler(total),
            "EchoStream": grpc.stream_stream_rpc_method_handler(echo_stream),
            "AnswerEarly": grpc.stream_stream_rpc_method_handler(answer_early),
        })


@pytest.fixture
def servicer() -> _Servicer:
    return _Servicer()


async def _read_socket(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while data := await reader.read(64 << 10):
        yield data


async def _write_socket(receive, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):  # the server went away
        async with receive:
            async for chunk in receive:
                writer.write(chunk)
                await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def _channel_to(reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> AsyncIterator[tuple[PipeChannel, object]]:
    send, receive = anyio.create_memory_object_stream[bytes](16)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_write_socket, receive, writer)
        async with channel_over_pipe(_read_socket(reader), send) as (channel, pipe):
            yield channel, pipe
        tg.cancel_scope.cancel()
    writer.close()


@pytest.fixture
async def grpc_channel(short_dir, servicer) -> AsyncIterator[PipeChannel]:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 16 << 20),
                                      ("grpc.max_send_message_length", 16 << 20)])
    server.add_generic_rpc_handlers((servicer.handlers(),))
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    path = f"{short_dir}/peer.sock"
    assert server.add_insecure_port(f"unix:{path}")
    await server.start()
    try:
        reader, writer = await asyncio.open_unix_connection(path)
        async with _channel_to(reader, writer) as (channel, _pipe):
            yield channel
    finally:
        await server.stop(grace=None)


async def test_every_call_shape_with_metadata_and_status(grpc_channel, servicer):
    call = grpc_channel.unary_unary(_method("Echo"))(b"hello", metadata=(("x-key", "value"),
                                                                          ("x-raw-bin", b"\x01\x02")))
    assert await call == b"hello"
    assert await call.code() == grpc.StatusCode.OK
    assert ("x-key", "value") in servicer.seen_metadata
    assert ("x-raw-bin", b"\x01\x02") in servicer.seen_metadata
    assert dict(await call.initial_metadata())["initial-bin"] == b"\x00\xff"
    assert ("trailer-key", "t1") in list(await call.trailing_metadata())

    # Typed stubs work on the channel as they are.
    reply = await health_pb2_grpc.HealthStub(grpc_channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await grpc_channel.unary_unary(_method("Fail"))(b"")
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.details() == "naïve 100% failure\nline 2"  # percent-decoded

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await grpc_channel.unary_unary("/no.Such/Method")(b"")
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED

    produced = [m async for m in grpc_channel.unary_stream(_method("Produce"))(struct.pack(">II", 5, 8))]
    assert produced == [i.to_bytes(4, "big") * 2 for i in range(5)]

    assert await grpc_channel.stream_unary(_method("Total"))(iter([b"ab", b"cde"])) == b"5"

    async def requests():
        for i in range(3):
            yield b"%d" % i
    assert [m async for m in grpc_channel.stream_stream(_method("EchoStream"))(requests())] == \
        [b"0", b"1", b"2"]

    bidi = grpc_channel.stream_stream(_method("EchoStream"))()
    for word in (b"one", b"two"):
        await bidi.write(word)
        assert await bidi.read() == word
    await bidi.done_writing()
    assert await bidi.read() is grpc.aio.EOF
    assert await bidi.code() == grpc.StatusCode.OK


async def test_deadline_and_cancel(grpc_channel, servicer):
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await grpc_channel.unary_unary(_method("Slow"))(b"", timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 5

    call = grpc_channel.unary_unary(_method("Slow"))(b"")
    await asyncio.sleep(0.2)
    assert call.cancel()
    assert await call.code() == grpc.StatusCode.CANCELLED
    with pytest.raises(asyncio.CancelledError):
        await call
    with anyio.fail_after(5):
        await servicer.cancelled.wait()  # the RST_STREAM reached the server

    # A server that answers before the client finished: the client's writes stop quietly.
    call = grpc_channel.stream_stream(_method("AnswerEarly"))()
    await call.write(b"first")
    assert await call.read() == b"early"
    assert await call.read() is grpc.aio.EOF
    with pytest.raises(asyncio.InvalidStateError):
        await call.write(b"too late")
    await call.done_writing()  # a no-op on a finished call, as in grpc.aio


async def test_streams_over_the_windows_both_ways(grpc_channel):
    """>16 MiB each way through one stream, and a server stream read slowly: flow control holds
    in both directions (peer windows honoured, ours given back as messages are consumed)."""
    chunk = os.urandom(1 << 20)
    total = 40 << 20
    call = grpc_channel.stream_stream(_method("EchoStream"))(iter([chunk] * (total // len(chunk))))
    received = 0
    with anyio.fail_after(60):
        async for reply in call:
            assert reply == chunk
            received += len(reply)
    assert received == total

    count, size = 48, 1 << 20
    stream = grpc_channel.unary_stream(_method("Produce"))(struct.pack(">II", count, size))
    with anyio.fail_after(60):
        for i in range(count):
            message = await stream.read()
            assert message[:4] == i.to_bytes(4, "big") and len(message) == size
            if i == 0:
                await asyncio.sleep(0.5)  # the server fills our 16 MiB window and must wait
        assert await stream.read() is grpc.aio.EOF

    assert await grpc_channel.stream_unary(_method("Total"))(iter([chunk] * 20)) == str(20 << 20).encode()


async def test_write_many_sends_every_message_in_order_over_the_windows(grpc_channel):
    """``write_many`` (a filesync sender's batches): hundreds of small messages and large ones in
    a few writes arrive as the messages they were, in order, past the peer's 64 KiB initial window."""
    batches = [[os.urandom(i % 300) for i in range(500)],
               [os.urandom(1 << 20), b"", os.urandom(17_000), os.urandom(5)],
               [os.urandom(16_384 - 5), os.urandom(16_384)]]
    call = grpc_channel.stream_stream(_method("EchoStream"))()
    received: list[bytes] = []

    async def read_all() -> None:
        async for reply in call:
            received.append(reply)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read_all)
            for batch in batches:
                await call.write_many(batch)
            await call.done_writing()
    assert received == [m for batch in batches for m in batch]
    with pytest.raises(asyncio.InvalidStateError):
        await call.write_many([b"too late"])


def test_chunks_to_send_splits_the_queued_bytes_without_reordering():
    conn = h2.H2Connection()
    conn.data_to_send()  # the preface and settings
    assert conn.chunks_to_send(10) == []
    pieces = [b"abc", memoryview(b"defghijklmnop"), b"", b"q" * 25, memoryview(b"rs")]
    for piece in pieces:
        conn._emit(piece)
    chunks = conn.chunks_to_send(10)
    assert b"".join(chunks) == b"".join(bytes(p) for p in pieces)
    assert [len(c) for c in chunks] == [10, 10, 10, 10, 3]
    assert conn.outbound_size == 0 and conn.data_to_send() == b""
    conn._emit(b"small")
    assert conn.chunks_to_send(10) == [b"small"]


async def test_a_consumer_gets_every_response_in_order(grpc_channel):
    """``consume``: responses go to the consumer as they arrive (several in one chunk, one per
    frame, across the windows), ``consumed_all`` returns when the call ended with OK, raises the
    consumer's error (which stops the consumption), and the call's error."""
    got: list[bytes] = []
    count, size = 40, 1 << 20
    call = grpc_channel.unary_stream(_method("Produce"))(struct.pack(">II", count, size))
    call.consume(got.append)
    with anyio.fail_after(60):
        await call.consumed_all()
    assert [m[:4] for m in got] == [i.to_bytes(4, "big") for i in range(count)]
    assert all(len(m) == size for m in got)

    parts = [os.urandom(1 + i) for i in range(300)]
    echoed: list[bytes] = []
    call = grpc_channel.stream_stream(_method("EchoStream"))(iter(parts))
    call.consume(echoed.append)
    with anyio.fail_after(60):
        await call.consumed_all()
    assert echoed == parts

    def refuse(message: bytes) -> None:
        seen.append(message)
        if len(seen) == 3:
            raise ValueError("enough")

    seen: list[bytes] = []
    call = grpc_channel.unary_stream(_method("Produce"))(struct.pack(">II", 10, 8))
    call.consume(refuse)
    with anyio.fail_after(10), pytest.raises(ValueError, match="enough"):
        await call.consumed_all()
    assert len(seen) == 3
    call.cancel()

    call = grpc_channel.unary_unary(_method("Fail"))(b"")
    call.consume(got.append)
    with anyio.fail_after(10), pytest.raises(grpc.aio.AioRpcError) as info:
        await call.consumed_all()
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    call = grpc_channel.unary_unary(_method("Slow"))(b"")
    call.consume(got.append)
    waiting = asyncio.ensure_future(call.consumed_all())
    await asyncio.sleep(0.2)
    call.cancel()
    with anyio.fail_after(10), pytest.raises(asyncio.CancelledError):
        await waiting


async def test_many_concurrent_streams(grpc_channel):
    async def unary(i: int) -> None:
        payload = os.urandom(i * 97 % 70_000)
        assert await grpc_channel.unary_unary(_method("Echo"))(payload) == payload

    async def streaming(i: int) -> None:
        parts = [os.urandom(1000 + i) for _ in range(50)]
        call = grpc_channel.stream_stream(_method("EchoStream"))(iter(parts))
        assert [m async for m in call] == parts

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for i in range(300):
                tg.start_soon(unary, i)
            for i in range(40):
                tg.start_soon(streaming, i)


async def test_the_server_going_away_fails_calls_with_unavailable(short_dir, servicer):
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((servicer.handlers(),))
    path = f"{short_dir}/gone.sock"
    assert server.add_insecure_port(f"unix:{path}")
    await server.start()
    reader, writer = await asyncio.open_unix_connection(path)
    async with _channel_to(reader, writer) as (channel, pipe):
        call = channel.unary_unary(_method("Slow"))(b"")
        await asyncio.sleep(0.2)
        await server.stop(grace=None)
        with anyio.fail_after(5):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            await pipe.closed.wait()
        assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary(_method("Echo"))(b"")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.aio.UsageError, match="Channel is closed"):
        channel.unary_unary(_method("Echo"))(b"")


# -- a scripted peer ---------------------------------------------------------------------------------


def _split_frames(buf: bytes) -> tuple[list[tuple[int, int, int, bytes]], bytes]:
    """The whole frames (type, flags, stream, payload) at the start of ``buf`` (after the client
    preface, if it starts with it), and what is left of an incomplete last one."""
    if buf.startswith(h2.PREFACE):
        buf = buf[len(h2.PREFACE):]
    frames = []
    while len(buf) >= 9:
        length = int.from_bytes(buf[:3], "big")
        if len(buf) < 9 + length:
            break
        frames.append((buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF, buf[9:9 + length]))
        buf = buf[9 + length:]
    return frames, buf


class _RawPeer:
    """The server end of the pipe, written frame by frame."""

    def __init__(self) -> None:
        self.to_channel, self._incoming = anyio.create_memory_object_stream[bytes](100)
        self._from_channel, self.from_channel = anyio.create_memory_object_stream[bytes](100)
        self.received = bytearray()
        self.encoder = hpack.Encoder()

    async def incoming(self) -> AsyncIterator[bytes]:
        async with self._incoming:
            async for chunk in self._incoming:
                yield chunk

    async def send(self, data: bytes) -> None:
        await self.to_channel.send(data)

    async def frames(self) -> AsyncIterator[tuple[int, int, int, bytes]]:
        """Frames the channel sent (after the preface)."""
        buf = b""
        async for chunk in self.from_channel:
            frames, buf = _split_frames(buf + chunk)
            for f in frames:
                yield f

    async def wait_for(self, kind: int, frames) -> tuple[int, int, int, bytes]:
        with anyio.fail_after(5):
            async for f in frames:
                if f[0] == kind:
                    return f
        raise AssertionError("the channel ended before sending the frame")

    def headers(self, sid: int, fields, end_stream: bool = False) -> bytes:
        flags = h2.FLAG_END_HEADERS | (h2.FLAG_END_STREAM if end_stream else 0)
        return h2.frame(h2.HEADERS, flags, sid, self.encoder.encode(fields))


@contextlib.asynccontextmanager
async def _raw_channel() -> AsyncIterator[tuple[PipeChannel, object, _RawPeer]]:
    peer = _RawPeer()
    async with channel_over_pipe(peer.incoming(), peer._from_channel) as (channel, pipe):
        await peer.send(h2.frame(h2.SETTINGS, 0, 0))
        yield channel, pipe, peer
    peer.to_channel.close()


@pytest.mark.parametrize("code,expected", [
    (h2.CANCEL, grpc.StatusCode.CANCELLED),
    (h2.REFUSED_STREAM, grpc.StatusCode.UNAVAILABLE),
    (h2.INTERNAL_ERROR, grpc.StatusCode.INTERNAL),
    (h2.ENHANCE_YOUR_CALM, grpc.StatusCode.RESOURCE_EXHAUSTED),
])
async def test_a_peer_resetting_streams(code, expected):
    async with _raw_channel() as (channel, pipe, peer):
        frames = peer.frames()
        call = channel.unary_stream(_method("Produce"))(b"")
        sid = (await peer.wait_for(h2.HEADERS, frames))[2]
        await peer.send(peer.headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
                        + h2.frame(h2.DATA, 0, sid, b"\0\0\0\0\2ok")
                        + h2.frame(h2.RST_STREAM, 0, sid, struct.pack(">L", code)))
        assert await call.read() == b"ok"  # what came before the reset is delivered
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
        assert info.value.code() == expected
        # The connection goes on: the next call works.
        second = channel.unary_unary(_method("Echo"))(b"x")
        sid = (await peer.wait_for(h2.HEADERS, frames))[2]
        await peer.send(peer.headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
                        + h2.frame(h2.DATA, 0, sid, b"\0\0\0\0\1y")
                        + peer.headers(sid, [("grpc-status", "0")], end_stream=True))
        assert await second == b"y"
        assert not pipe.closed.is_set()


async def test_pings_are_answered_and_window_updates_sent():
    async with _raw_channel() as (channel, _pipe, peer):
        frames = peer.frames()
        await peer.send(h2.frame(h2.PING, 0, 0, b"12345678"))
        ack = await peer.wait_for(h2.PING, frames)
        assert ack[1] == h2.FLAG_ACK and ack[3] == b"12345678"


@pytest.mark.parametrize("garbage,why", [
    (b"this is not HTTP/2 at all" * 10, "did not start with SETTINGS"),
    (h2.frame(h2.SETTINGS, 0, 0) + b"\x00\x40\x01" + b"\0" * 6, "maximum frame size"),
    (h2.frame(h2.SETTINGS, 0, 0) + h2.frame(h2.HEADERS, h2.FLAG_END_HEADERS, 1, b"\xff\xff\xff\xff"),
     "bad header block"),
    (h2.frame(h2.SETTINGS, 0, 0) + h2.frame(h2.DATA, 0, 7, b"x"), "never opened"),
    (h2.frame(h2.SETTINGS, 0, 0) + h2.frame(h2.PING, 0, 0, b"short"), "malformed PING"),
    (h2.frame(h2.SETTINGS, 0, 0) + h2.frame(h2.WINDOW_UPDATE, 0, 0, b"\0\0\0\0"), "WINDOW_UPDATE of 0"),
    (h2.frame(h2.SETTINGS, 0, 0, struct.pack(">HL", h2.SETTINGS_MAX_FRAME_SIZE, 5)),
     "invalid SETTINGS_MAX_FRAME_SIZE"),
])
async def test_malformed_input_closes_the_connection_with_a_clear_error(garbage, why):
    peer = _RawPeer()
    async with channel_over_pipe(peer.incoming(), peer._from_channel) as (channel, pipe):
        frames = peer.frames()
        call = channel.unary_unary(_method("Echo"))(b"x")
        await peer.wait_for(h2.HEADERS, frames)
        await peer.send(garbage)
        with anyio.fail_after(5):
            await pipe.closed.wait()
            goaway = await peer.wait_for(h2.GOAWAY, frames)
        assert why in str(pipe.error)
        assert why in goaway[3].decode()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert why in info.value.details()


async def test_a_bad_stream_fails_only_its_call():
    async with _raw_channel() as (channel, pipe, peer):
        frames = peer.frames()
        compressed = channel.unary_unary(_method("Echo"))(b"x")
        sid = (await peer.wait_for(h2.HEADERS, frames))[2]
        await peer.send(peer.headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
                        + h2.frame(h2.DATA, 0, sid, b"\1\0\0\0\1y"))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await compressed
        assert info.value.code() == grpc.StatusCode.INTERNAL and "compressed" in info.value.details()
        assert (await peer.wait_for(h2.RST_STREAM, frames))[2] == sid

        too_big = channel.unary_unary(_method("Echo"))(b"x")
        sid = (await peer.wait_for(h2.HEADERS, frames))[2]
        await peer.send(peer.headers(sid, [(":status", "200")])
                        + h2.frame(h2.DATA, 0, sid, b"\0" + struct.pack(">L", (16 << 20) + 1)))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await too_big
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        not_found = channel.unary_unary(_method("Echo"))(b"x")
        sid = (await peer.wait_for(h2.HEADERS, frames))[2]
        await peer.send(peer.headers(sid, [(":status", "404")], end_stream=True))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await not_found
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert not pipe.closed.is_set()


async def test_goaway_fails_new_and_unprocessed_calls():
    async with _raw_channel() as (channel, _pipe, peer):
        frames = peer.frames()
        kept = channel.unary_unary(_method("Echo"))(b"x")
        first = (await peer.wait_for(h2.HEADERS, frames))[2]
        dropped = channel.unary_unary(_method("Echo"))(b"x")
        await peer.wait_for(h2.HEADERS, frames)
        await peer.send(h2.frame(h2.GOAWAY, 0, 0, struct.pack(">LL", first, 0) + b"shutting down"))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await dropped
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in info.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary(_method("Echo"))(b"x")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        await peer.send(peer.headers(first, [(":status", "200")])
                        + h2.frame(h2.DATA, 0, first, b"\0\0\0\0\1z")
                        + peer.headers(first, [("grpc-status", "0")], end_stream=True))
        assert await kept == b"z"


def test_timeouts_are_encoded_in_at_most_eight_digits():
    assert h2._encode_timeout(0.3) == "300000u"
    assert h2._encode_timeout(60) == "60000000u"
    assert h2._encode_timeout(1000) == "1000000m"
    assert h2._encode_timeout(10**9) == "16666667M"



async def test_a_dropped_call_is_cancelled(grpc_channel, servicer):
    call = grpc_channel.unary_unary(_method("Slow"))(b"")
    await asyncio.sleep(0.2)
    del call  # never awaited nor cancelled: collected, and then cancelled as grpc.aio does
    gc.collect()
    with anyio.fail_after(5):
        await servicer.cancelled.wait()
    assert await grpc_channel.unary_unary(_method("Echo"))(b"still") == b"still"


async def test_a_long_header_block_in_tiny_continuations_ends_the_connection():
    async with _raw_channel() as (channel, pipe, peer):
        frames = peer.frames()
        call = channel.unary_unary(_method("Echo"))(b"x")
        sid = (await peer.wait_for(h2.HEADERS, frames))[2]
        flood = [h2.frame(h2.HEADERS, 0, sid, b"\x00")]
        flood += [h2.frame(h2.CONTINUATION, 0, sid, b"\x00" * 64)] * ((h2.MAX_HEADER_BLOCK >> 6) + 2)
        with anyio.fail_after(10):
            for i in range(0, len(flood), 1000):
                await peer.send(b"".join(flood[i:i + 1000]))
            await pipe.closed.wait()
        assert "header block too large" in str(pipe.error)
        with pytest.raises(grpc.aio.AioRpcError):
            await call


def _parse_frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream id, payload) of the frames in ``data`` (after the preface, if any)."""
    data = data.removeprefix(h2.PREFACE)
    frames = []
    while data:
        length = int.from_bytes(data[:3], "big")
        frames.append((data[3], data[4], int.from_bytes(data[5:9], "big") & 0x7FFFFFFF, data[9:9 + length]))
        data = data[9 + length:]
    return frames


def test_the_window_credits_of_one_chunk_go_out_as_one_frame():
    # A Go net/http2 peer credits each 16 KiB frame it reads, on the stream and the connection:
    # the credits that came in one chunk are used at once, not as a 16 KiB frame per credit.
    conn = h2.H2Connection()
    conn.receive_data(h2.frame(h2.SETTINGS, 0, 0, struct.pack(">HL", h2.SETTINGS_INITIAL_WINDOW_SIZE, 0)
                               + struct.pack(">HL", h2.SETTINGS_MAX_FRAME_SIZE, 1 << 20)))
    stream = conn.open_stream(_method("Sink"))
    message = bytes(range(256)) * 400  # 102,400 bytes
    conn.send_message(stream, message)
    assert not [f for f in _parse_frames(conn.data_to_send()) if f[0] == h2.DATA]  # no stream window yet

    def credit(sid: int, n: int) -> bytes:
        return h2.frame(h2.WINDOW_UPDATE, 0, sid, struct.pack(">L", n))

    conn.receive_data(b"".join(credit(stream.id, 16000) for _ in range(4)))
    first = [f for f in _parse_frames(conn.data_to_send()) if f[0] == h2.DATA]
    assert [len(f[3]) for f in first] == [64000]
    # The connection's window (65,535 at first) has 1,535 left: both windows limit the next frame.
    conn.receive_data(b"".join(credit(sid, 16000) for sid in (stream.id, 0, stream.id, 0)))
    second = [f for f in _parse_frames(conn.data_to_send()) if f[0] == h2.DATA]
    assert [len(f[3]) for f in second] == [32000]
    conn.receive_data(credit(stream.id, 1 << 20) + credit(0, 1 << 20))
    rest = [f for f in _parse_frames(conn.data_to_send()) if f[0] == h2.DATA]
    assert [len(f[3]) for f in rest] == [len(message) + 5 - 96000]
    sent = b"".join(f[3] for f in first + second + rest)
    assert sent == b"\0" + struct.pack(">L", len(message)) + message
    assert stream.pending_size == 0 and not stream.pending


# -- a source that pushes, a sink that may be full ----------------------------------------------------


class _PushedSource:
    """A PushSource driven by the test: ``feed`` hands a chunk over synchronously, as the front's
    socket-read callback does; ``end`` is the peer's end of the stream."""

    def __init__(self) -> None:
        self.target = None
        self.started = anyio.Event()
        self._ended = anyio.Event()
        self._failure: Exception | None = None

    async def push_into(self, target) -> None:
        self.target = target
        self.started.set()
        await self._ended.wait()
        if self._failure is not None:
            raise self._failure

    def feed(self, chunk: bytes) -> None:
        try:
            self.target.push(chunk)
        except Exception as exc:  # raised in push_into, as the front's inbox does
            self._failure = exc
            self._ended.set()

    def end(self) -> None:
        self._ended.set()


class _Sink:
    """A ChunkSink that records what it is given and can be made full (the client not reading)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.room = anyio.Event()
        self.room.set()

    def send_nowait(self, chunk: bytes) -> None:
        if not self.room.is_set():
            raise anyio.WouldBlock
        self.data += chunk

    async def send(self, chunk: bytes) -> None:
        await self.room.wait()
        self.data += chunk

    def close(self) -> None:
        pass

    def frames(self) -> list[tuple[int, int, int, bytes]]:
        return _split_frames(bytes(self.data))[0]


@contextlib.asynccontextmanager
async def _pushed_pipe(sink: _Sink) -> AsyncIterator[tuple[_PushedSource, PipeChannel, object]]:
    """A channel over a pushing source and ``sink``, once the pipe has started taking chunks."""
    source = _PushedSource()
    async with channel_over_pipe(source, sink) as (channel, pipe):
        with anyio.fail_after(5):
            await source.started.wait()
        yield source, channel, pipe


async def test_a_pushed_chunk_is_answered_before_push_returns():
    sink = _Sink()
    async with _pushed_pipe(sink) as (source, channel, pipe):
        source.feed(h2.frame(h2.SETTINGS, 0, 0))
        source.feed(h2.frame(h2.PING, 0, 0, b"pushed!!"))
        # No await in between: the answer is in the sink when the push returns.
        pings = [f for f in sink.frames() if f[0] == h2.PING]
        assert pings == [(h2.PING, h2.FLAG_ACK, 0, b"pushed!!")]
        source.end()
        with anyio.fail_after(5):
            await pipe.closed.wait()
        assert pipe.error is None


async def test_a_peer_that_does_not_read_its_answers_is_told_to_hold_off_then_gets_them_in_order():
    sink = _Sink()
    async with _pushed_pipe(sink) as (source, channel, pipe):
        source.feed(h2.frame(h2.SETTINGS, 0, 0))
        await anyio.sleep(0.05)  # the preface and the SETTINGS ACK go out
        sink.room = anyio.Event()  # full from now on
        sent = 0
        while not source.target.backlogged():
            source.feed(h2.frame(h2.PING, 0, 0, sent.to_bytes(8, "big")))
            sent += 1
            assert sent < 100_000, "the pipe never asked its source to hold off"
        assert sent * 17 > 1 << 20  # held off only once the answers exceed the high-water mark
        drained = False

        async def wait_drained() -> None:
            nonlocal drained
            await source.target.drained()
            drained = True

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_drained)
            await anyio.sleep(0.05)
            assert not drained  # the sink is still full
            sink.room.set()
        assert not source.target.backlogged()
        acks = [int.from_bytes(f[3], "big") for f in sink.frames() if f[0] == h2.PING]
        assert acks == list(range(sent))
        source.end()


async def test_a_pushed_protocol_error_closes_the_connection_with_a_goaway_saying_why():
    sink = _Sink()
    async with _pushed_pipe(sink) as (source, channel, pipe):
        call = channel.unary_unary(_method("Echo"))(b"x")
        source.feed(h2.frame(h2.SETTINGS, 0, 0) + h2.frame(h2.PING, 0, 0, b"short"))
        with anyio.fail_after(5):
            await pipe.closed.wait()
        assert "malformed PING" in str(pipe.error)
        goaway = [f for f in sink.frames() if f[0] == h2.GOAWAY]
        assert goaway and b"malformed PING" in goaway[0][3]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_sink_whose_consumer_went_away_while_a_push_answers_ends_the_pipe_cleanly():
    class _GoneSink(_Sink):
        def send_nowait(self, chunk: bytes) -> None:
            if self.data:  # the preface went out; then the client went away
                raise anyio.BrokenResourceError
            super().send_nowait(chunk)

    sink = _GoneSink()
    async with _pushed_pipe(sink) as (source, channel, pipe):
        with anyio.fail_after(5):
            while not sink.data:
                await anyio.sleep(0.01)
        source.feed(h2.frame(h2.SETTINGS, 0, 0))  # its ACK finds the sink gone, inside the push
        with anyio.fail_after(5):
            await pipe.closed.wait()
        assert pipe.error is None  # a client that went away, not a failure
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary(_method("Echo"))(b"x")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
