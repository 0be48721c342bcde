"""Calling the blocking snapshot API from async code without leaking what it returns."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")


async def blocking(fn: Callable[..., T], *args: object) -> T:
    """Run ``fn`` in a worker thread, shielded from cancellation.

    Unshielded, a cancellation arriving while the thread runs would discard its return value (e.g.
    a freshly committed snapshot nobody then releases). Shielded, the caller gets the value and the
    cancellation is delivered at its next checkpoint, after it took ownership.
    """
    with anyio.CancelScope(shield=True):  # its __exit__ may swallow: mypy wants the return outside
        result = await anyio.to_thread.run_sync(fn, *args)
    return result


async def waiting_on_loop(fn: Callable[..., T], *args: object) -> T:
    """``blocking`` for a function that, in its thread, waits for work on the event loop (pulling
    a remote cache's blobs, say), which may itself need worker threads. It runs outside anyio's
    default limiter (40 threads): as many such waits as that would hold every token while the work
    they wait for queued for one, and every build of the daemon would hang."""
    with anyio.CancelScope(shield=True):
        result = await anyio.to_thread.run_sync(fn, *args, limiter=anyio.CapacityLimiter(1))
    return result


async def release_all(handles: list) -> None:  # noqa: ANN001
    """Release snapshot handles (ignores None); never raises for an already-released handle."""
    def _release() -> None:
        for h in handles:
            if h is not None:
                h.release()
    if any(h is not None for h in handles):
        await blocking(_release)
