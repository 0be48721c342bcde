"""The bridge's splice over a real socket pair: what comes in reaches the socket whole and in order,
whether chunks come in a burst (coalesced into fewer writes) or alone (written at once)."""

from __future__ import annotations

import asyncio
import socket

import anyio
import pytest

from buildkitpy.session.bridge import COALESCE_MAX, Pipe, SocketConnection, splice

pytestmark = pytest.mark.anyio


class _Peer:
    """The other end of the pair: collects what the splice writes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received = bytearray()

    async def read_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while data := await loop.sock_recv(self.sock, 1 << 20):
            self.received += data

    async def wait_for(self, size: int) -> None:
        with anyio.fail_after(10):
            while len(self.received) < size:
                await anyio.sleep(0.005)


async def _splice_with(incoming_factory) -> bytes:
    """Splice ``incoming_factory(peer)`` into one end of a socket pair, closing that end as soon
    as the splice returns (as the bridge does); all the other end read."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    theirs.setblocking(False)
    peer = _Peer(theirs)
    conn = await SocketConnection.open(ours)
    send, receive = anyio.create_memory_object_stream[bytes](16)
    try:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(peer.read_forever)  # until our end is closed
                await splice(conn, incoming_factory(peer), send, Pipe())  # returns once incoming ends
                await conn.aclose()
    finally:
        await conn.aclose()
        send.close()
        receive.close()
        theirs.close()
    return bytes(peer.received)


async def test_a_burst_and_lone_chunks_arrive_whole_and_in_order():
    burst = [b"%05d:" % i + b"x" * (i % 90) for i in range(3000)]
    big = bytes(range(256)) * ((COALESCE_MAX // 256) + 3)  # more than one coalesced write holds
    lone = b"a chunk with nothing after it"
    tail = [b"then a few", b" quick ones", b" and the end"]
    expected = b"".join(burst) + big + lone + b"".join(tail)

    def incoming(peer: _Peer):
        async def chunks():
            for chunk in burst:
                yield chunk
            yield big
            yield lone
            # alone, it must be written without waiting for more input
            await peer.wait_for(len(expected) - len(b"".join(tail)))
            for chunk in tail:  # and what comes in a burst right before the end still goes out
                yield chunk
        return chunks()

    assert await _splice_with(incoming) == expected
