"""The hand-off from an exporter's writing thread to the task sending its chunks: real threads on a
real event loop (the exporters' own use of it runs in every tar/oci export test)."""

from __future__ import annotations

import threading

import anyio
import anyio.to_thread
import pytest

from buildkitpy.exporter.handoff import Handoff, HandoffClosed

pytestmark = pytest.mark.anyio


async def test_chunks_arrive_in_order_and_the_iteration_ends_when_the_thread_finishes():
    handoff = Handoff[int](3)

    def produce() -> None:
        try:
            for i in range(1000):
                handoff.put(i)
        finally:
            handoff.finish()

    got = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.to_thread.run_sync, produce)
        async with handoff:
            async for chunk in handoff:
                got.append(chunk)
    assert got == list(range(1000))


async def test_the_thread_runs_ahead_by_depth_chunks_and_no_further():
    handoff = Handoff[int](4)
    put = []
    blocked = threading.Event()

    def produce() -> None:
        for i in range(6):
            if i == 4:
                blocked.set()  # the fifth put is about to wait for a free place
            handoff.put(i)
            put.append(i)
        handoff.finish()

    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.to_thread.run_sync, produce)
        with anyio.fail_after(5):
            while not blocked.is_set():
                await anyio.sleep(0.01)
        await anyio.sleep(0.2)
        assert put == [0, 1, 2, 3]  # four queued without the task taking any; the fifth waits
        async with handoff:
            got = [chunk async for chunk in handoff]
    assert got == list(range(6))
    assert put == list(range(6))


async def test_a_consumer_that_stops_early_stops_a_waiting_thread():
    handoff = Handoff[bytes](2)
    raised = []

    def produce() -> None:
        try:
            while True:
                handoff.put(b"x" * 1024)
        except HandoffClosed as exc:
            raised.append(exc)
        finally:
            handoff.finish()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, produce)
            async with handoff:
                async for _chunk in handoff:
                    break  # e.g. the client answered ALREADY_EXISTS, or the session died
    assert len(raised) == 1 and "went away" in str(raised[0])


async def test_a_cancelled_consumer_stops_the_thread_too():
    handoff = Handoff[int](1)
    stopped = threading.Event()

    def produce() -> None:
        try:
            i = 0
            while True:
                handoff.put(i)
                i += 1
        except HandoffClosed:
            stopped.set()
        finally:
            handoff.finish()

    async def consume_slowly() -> None:
        async with handoff:
            async for _chunk in handoff:
                await anyio.sleep(10)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, produce)
            tg.start_soon(consume_slowly)
            await anyio.sleep(0.1)
            tg.cancel_scope.cancel()
    assert stopped.is_set()


async def test_a_thread_that_finishes_without_chunks_ends_the_iteration_of_a_waiting_consumer():
    handoff = Handoff[int](2)

    async def finish_later() -> None:
        await anyio.sleep(0.1)
        await anyio.to_thread.run_sync(handoff.finish)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(finish_later)
            async with handoff:
                assert [chunk async for chunk in handoff] == []
