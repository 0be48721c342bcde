"""The sans-I/O HTTP/2 endpoint of the front server: a client-role and a server-role ``H2Peer``
talking to each other through their bytes, with recording handlers."""

from __future__ import annotations

import struct

import pytest

from buildkitpy.daemon.h2peer import (
    MAX_STREAMS,
    NO_ERROR,
    REFUSED_STREAM,
    STREAM_CREDIT_AT,
    STREAM_WINDOW,
    H2Peer,
    H2ProtocolError,
)
from buildkitpy.session.h2 import CANCEL, DATA, GOAWAY, PREFACE, PROTOCOL_ERROR, RST_STREAM, SETTINGS, frame


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.data: dict[int, bytearray] = {}
        self.sent: dict[int, int] = {}

    def on_headers(self, sid, fields, end_stream):
        self.events.append(("headers", sid, dict(fields), end_stream))

    def on_data(self, sid, data, end_stream):
        self.data.setdefault(sid, bytearray()).extend(data)
        if end_stream:
            self.events.append(("end", sid))

    def on_reset(self, sid, code):
        self.events.append(("reset", sid, code))

    def on_sent(self, sid, nbytes):
        self.sent[sid] = self.sent.get(sid, 0) + nbytes

    def on_goaway(self, last_sid, code):
        self.events.append(("goaway", last_sid, code))


def pair() -> tuple[H2Peer, Recorder, H2Peer, Recorder]:
    ch, sh = Recorder(), Recorder()
    client, server = H2Peer(ch, client=True), H2Peer(sh, client=False)
    pump(client, server)
    return client, ch, server, sh


def pump(client: H2Peer, server: H2Peer) -> None:
    """Move bytes both ways until both are quiet."""
    while True:
        a, b = client.data_to_send(), server.data_to_send()
        if not a and not b:
            return
        if a:
            server.receive(a)
        if b:
            client.receive(b)


REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/pkg.S/M"), (b":authority", b"x"),
           (b"content-type", b"application/grpc")]


def test_headers_data_and_trailers_round_trip_with_a_header_block_over_one_frame():
    client, ch, server, sh = pair()
    sid = client.open_stream()
    big = b"v" * 40_000  # HEADERS + CONTINUATIONs (16 KiB frames)
    client.send_headers(sid, [*REQUEST, (b"x-big", big)])
    client.send_data(sid, b"hello", end_stream=True)
    pump(client, server)
    assert sh.events[0][:2] == ("headers", sid) and sh.events[0][2][b"x-big"] == big
    assert sh.data[sid] == b"hello" and ("end", sid) in sh.events
    server.send_headers(sid, [(b":status", b"200")])
    server.send_data(sid, b"answer")
    server.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
    pump(client, server)
    assert [e[0] for e in ch.events] == ["headers", "headers"]
    assert ch.events[1] == ("headers", sid, {b"grpc-status": b"0"}, True)
    assert ch.data[sid] == b"answer"
    assert sid not in client.streams and sid not in server.streams  # both ends closed: forgotten


def test_data_waits_for_the_peers_window_and_trailers_wait_behind_it():
    client, ch, server, sh = pair()
    sid = client.open_stream()
    client.send_headers(sid, REQUEST)
    pump(client, server)
    server.send_headers(sid, [(b":status", b"200")])
    payload = bytes(range(256)) * ((STREAM_WINDOW + 300_000) // 256)
    server.send_data(sid, payload)
    server.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
    pump(client, server)
    # The client's stream window lets exactly STREAM_WINDOW bytes through; the trailers wait.
    assert len(ch.data[sid]) == STREAM_WINDOW
    assert server.pending(sid) == len(payload) - STREAM_WINDOW
    assert len(ch.events) == 1
    client.consumed(sid, STREAM_CREDIT_AT - 1)  # below the batch: no WINDOW_UPDATE yet
    pump(client, server)
    assert len(ch.data[sid]) == STREAM_WINDOW
    client.consumed(sid, 1)
    pump(client, server)
    assert bytes(ch.data[sid]) == payload
    assert ch.events[-1] == ("headers", sid, {b"grpc-status": b"0"}, True)
    assert sh.sent[sid] == len(payload)


def test_a_reset_reaches_the_other_side_and_later_frames_of_the_stream_are_dropped():
    client, ch, server, sh = pair()
    sid = client.open_stream()
    client.send_headers(sid, REQUEST)
    pump(client, server)
    client.reset(sid, CANCEL)
    pump(client, server)
    assert sh.events[-1] == ("reset", sid, CANCEL)
    server.send_data(sid, b"late")  # the stream is gone on the server: nothing is sent
    assert server.data_to_send() == b""


def test_a_client_past_the_stream_limit_is_refused_per_stream():
    client, ch, server, sh = pair()
    for _ in range(MAX_STREAMS):
        client.send_headers(client.open_stream(), REQUEST)
    extra = client.open_stream()
    client.send_headers(extra, REQUEST)
    pump(client, server)
    assert len(server.streams) == MAX_STREAMS
    assert ("reset", extra, REFUSED_STREAM) in ch.events


def goaway_of(data: bytes) -> tuple[int, bytes]:
    pos = 0
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos:pos + 3], "big")
        if data[pos + 3] == GOAWAY:
            payload = data[pos + 9:pos + 9 + length]
            return struct.unpack(">L", payload[4:8])[0], payload[8:]
        pos += 9 + length
    raise AssertionError(f"no GOAWAY in {data[:200]!r}")


@pytest.mark.parametrize("garbage, why", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"preface"),
    (PREFACE + frame(DATA, 0, 1, b"x"), b"SETTINGS"),
    (PREFACE + frame(SETTINGS, 0, 0) + frame(DATA, 0, 0, b"x"), b"DATA on stream 0"),
    (PREFACE + frame(SETTINGS, 0, 0) + frame(DATA, 0, 3, b"x"), b"never opened"),
    (PREFACE + frame(SETTINGS, 0, 0) + frame(RST_STREAM, 0, 1, b"\0\0\0\x08"), b"never opened"),
    (PREFACE + frame(SETTINGS, 0, 0) + frame(SETTINGS, 0, 0, b"\0\x05\0\0\0\x01"), b"MAX_FRAME_SIZE"),
])
def test_a_client_that_breaks_http2_gets_a_goaway_naming_why(garbage, why):
    server = H2Peer(Recorder(), client=False)
    server.data_to_send()
    with pytest.raises(H2ProtocolError):
        server.receive(garbage)
    code, debug = goaway_of(server.data_to_send())
    assert code == PROTOCOL_ERROR and why in debug, debug
    server.receive(b"more")  # a closed peer ignores what follows
    assert server.data_to_send() == b""


def test_the_preface_may_arrive_a_byte_at_a_time():
    ch, sh = Recorder(), Recorder()
    client, server = H2Peer(ch, client=True), H2Peer(sh, client=False)
    for byte in client.data_to_send():
        server.receive(bytes([byte]))
    sid = client.open_stream()
    client.send_headers(sid, REQUEST, end_stream=True)
    pump(client, server)
    assert sh.events == [("headers", sid, dict(REQUEST), True)]


def test_pieces_sent_with_more_go_out_in_one_frame():
    client, ch, server, sh = pair()
    sid = client.open_stream()
    client.send_headers(sid, REQUEST)
    pump(client, server)
    server.send_headers(sid, [(b":status", b"200")])
    frames = []
    ch.on_data = lambda s, data, end: frames.append(bytes(data))  # type: ignore[method-assign]
    server.send_data(sid, b"\0\0\0\0\x05", more=True)
    server.send_data(sid, b"hello")
    pump(client, server)
    assert frames == [b"\0\0\0\0\x05hello"]


def test_streams_a_client_opens_after_the_servers_goaway_are_refused_not_served():
    """A GOAWAY tells the client that streams above its last stream id were not and will not be
    processed (so that it may retry them elsewhere): one whose HEADERS crossed it is refused."""
    client, ch, server, sh = pair()
    first = client.open_stream()
    client.send_headers(first, REQUEST)
    pump(client, server)
    server.goaway()
    late = client.open_stream()  # before the GOAWAY reaches the client
    client.send_headers(late, REQUEST, end_stream=True)
    server.receive(client.data_to_send())
    server.goaway()  # a second GOAWAY names the same last stream, never a higher one
    pump(client, server)
    assert [e[:2] for e in sh.events] == [("headers", first)]
    assert ch.events == [("goaway", first, NO_ERROR), ("reset", late, REFUSED_STREAM),
                         ("goaway", first, NO_ERROR)]
    server.send_headers(first, [(b":status", b"200")], end_stream=True)  # the first one goes on
    pump(client, server)
    assert ch.events[-1] == ("headers", first, {b":status": b"200"}, True)
