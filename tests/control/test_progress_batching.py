"""ProgressBus.subscribe(batch=True), what Control.Status streams: the updates ready at once come
merged into one message, in order, and nothing is lost or reordered."""

import asyncio

import pytest

from buildkitpy.progress import MAX_BATCH_BYTES, ProgressBus

pytestmark = pytest.mark.anyio


def _flatten(msgs):
    return [(v.digest, v.cached, v.HasField("completed")) for m in msgs for v in m.vertexes]


async def test_ready_updates_come_in_one_message_in_order():
    bus = ProgressBus()
    for i in range(300):
        bus.vertex(f"sha256:{i}", f"step {i}", cached=True, started=True, completed=True)
    plain = [m async for m in _closing(bus, batch=False)]
    bus2 = ProgressBus()
    for i in range(300):
        bus2.vertex(f"sha256:{i}", f"step {i}", cached=True, started=True, completed=True)
    batched = [m async for m in _closing(bus2, batch=True)]
    assert len(plain) == 300 and len(batched) == 1
    assert _flatten(batched) == _flatten(plain)


async def test_live_updates_are_merged_and_logs_stay_under_the_size_limit():
    bus = ProgressBus()
    got = []

    async def read():
        async for msg in bus.subscribe(batch=True):
            got.append(msg)
    task = asyncio.create_task(read())
    await asyncio.sleep(0.05)  # subscribed, waiting
    for i in range(50):
        bus.vertex(f"sha256:{i}", started=True)
    bus.log("sha256:0", 1, b"x" * (MAX_BATCH_BYTES - 100))
    bus.log("sha256:0", 1, b"y" * 1000)
    bus.vertex("sha256:0", completed=True)
    bus.close()
    await asyncio.wait_for(task, 5)
    assert all(m.ByteSize() <= MAX_BATCH_BYTES + 1024 for m in got)
    assert 2 <= len(got) < 10
    assert [v.digest for m in got for v in m.vertexes] == [f"sha256:{i}" for i in range(50)] + ["sha256:0"]
    assert b"".join(lg.msg for m in got for lg in m.logs) == b"x" * (MAX_BATCH_BYTES - 100) + b"y" * 1000


async def _closing(bus, *, batch):
    bus.close()
    async for m in bus.subscribe(batch=batch):
        yield m
