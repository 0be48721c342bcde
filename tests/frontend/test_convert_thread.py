"""The Dockerfile conversion's worker thread: it waits there for image configs resolved on the
caller's loop, so it must not take one of the worker threads that resolution itself needs."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import anyio
import anyio.to_thread
import pytest

from buildkitpy import llb
from buildkitpy.frontend.dockerfile.convert_thread import convert_off_loop
from buildkitpy.solver.asyncutil import waiting_on_loop

pytestmark = pytest.mark.anyio
AMD64 = llb.Platform("linux", "amd64")
CONFIG = {"architecture": "amd64", "os": "linux", "config": {"Env": ["FROM_RESOLVER=1"]},
          "rootfs": {"type": "layers", "diff_ids": []}}


async def _resolve_in_a_worker_thread(ref: str, platform: llb.Platform) -> tuple[str, bytes]:
    # as the daemon's resolver does: its registry requests run in worker threads (bounded here: a
    # thread that never comes fails the test instead of hanging it)
    with anyio.fail_after(5):
        data = await anyio.to_thread.run_sync(json.dumps, CONFIG)
    return "sha256:" + "a" * 64, data.encode()


@contextlib.contextmanager
def _default_thread_tokens(n: int) -> Iterator[None]:
    """anyio's default limiter cut to ``n`` tokens (as if other builds held the rest)."""
    limiter = anyio.to_thread.current_default_thread_limiter()
    tokens = limiter.total_tokens
    limiter.total_tokens = n
    try:
        yield
    finally:
        limiter.total_tokens = tokens


async def test_conversions_waiting_for_resolution_do_not_starve_the_resolvers_threads() -> None:
    results = []

    async def one() -> None:
        results.append(await convert_off_loop(
            b"FROM busybox\n", resolve_image=_resolve_in_a_worker_thread, opts={}, build_platform=AMD64))

    with _default_thread_tokens(2), anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(one)
    assert len(results) == 4
    assert all("FROM_RESOLVER=1" in json.loads(r.single.image_config)["config"]["Env"] for r in results)


async def test_threads_waiting_on_the_loop_leave_the_default_threads_to_what_they_wait_for() -> None:
    async def pull() -> str:  # work on the loop that needs a worker thread (a blob download)
        with anyio.fail_after(5):  # a thread that never comes fails the test instead of hanging it
            return await anyio.to_thread.run_sync(lambda: "pulled")

    def load() -> str:  # a remote cache's load: waits in its thread for the pull
        return anyio.from_thread.run(pull)

    results: list[str] = []

    async def one() -> None:
        results.append(await waiting_on_loop(load))

    with _default_thread_tokens(1), anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(one)
    assert results == ["pulled"] * 3
