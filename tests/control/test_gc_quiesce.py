"""Content GC and build admission (``JobRegistry.quiesced``): no build starts while blobs are
deleted, and a collection never runs while a build does. CI once failed a build with ``content
sha256:… not found`` because a build started between the GC's "no build runs" check and its
deletions."""

from __future__ import annotations

import threading
import time

import anyio

from buildkitpy.jobs import Job, JobRegistry


def test_a_build_waits_for_the_collection_then_starts():
    jobs = JobRegistry()
    entered, leave = threading.Event(), threading.Event()
    seen: list[bool] = []

    def collector() -> None:
        with jobs.quiesced() as idle:
            seen.append(idle)
            entered.set()
            leave.wait(5)

    async def main() -> float:
        thread = threading.Thread(target=collector)
        thread.start()
        await anyio.to_thread.run_sync(entered.wait)
        started = 0.0

        async def start_build() -> None:
            nonlocal started
            await jobs.create(Job(ref="b1"))
            started = time.monotonic()

        async with anyio.create_task_group() as tg:
            tg.start_soon(start_build)
            await anyio.sleep(0.3)
            assert started == 0.0 and not jobs.active()  # held back while blobs go
            released = time.monotonic()
            leave.set()
        thread.join()
        assert [j.ref for j in jobs.active()] == ["b1"]
        return started - released

    assert anyio.run(main) >= 0
    assert seen == [True]


def test_the_collection_sees_a_running_build_and_a_cancelled_start_leaves_no_lock():
    jobs = JobRegistry()

    async def main() -> None:
        await jobs.create(Job(ref="running"))
        with jobs.quiesced() as idle:
            assert idle is False
            with anyio.move_on_after(0.1):  # a client gives up while the GC holds admission
                await jobs.create(Job(ref="gave-up"))
        await jobs.finish(jobs.active()[0])
        with jobs.quiesced() as idle:
            assert idle is True
        await jobs.create(Job(ref="next"))  # admission is free again
        assert [j.ref for j in jobs.active()] == ["next"]

    anyio.run(main)
