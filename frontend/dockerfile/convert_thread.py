"""Running the Dockerfile conversion on a worker thread, so a huge or pathological Dockerfile never
stalls the daemon's event loop (other clients' calls, progress streams, session keepalives).

The conversion gets an event loop of its own in that thread; the one thing it awaits from outside,
image config resolution, is handed back to the caller's loop, where the bridge and its sessions
live. Cancelling the build abandons the thread (it finishes in the background, its result dropped).
The thread is not one of anyio's default limiter's (see :func:`convert_off_loop`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import anyio

from .convert import ConvertResult, convert

# Real Dockerfiles are kilobytes; this bounds the memory and CPU one request can take (converting a
# 2 MiB file of continuation lines takes tens of seconds and hundreds of MB).
MAX_DOCKERFILE_BYTES = 2 << 20

# Up to this size a Dockerfile's parse (tens of microseconds for a typical one, ~0.4 ms at this
# size) costs less than the trip to a worker thread and back (~0.15 ms and two GIL hand-offs, each
# on the critical path of a cached build); above it the work leaves the event loop.
INLINE_DOCKERFILE_BYTES = 4 << 10

AsyncFunc = Callable[..., Coroutine[Any, Any, Any]]
T = TypeVar("T")


def _on_loop(loop: asyncio.AbstractEventLoop,
             func: AsyncFunc | None) -> AsyncFunc | None:
    """``func`` callable from another thread's event loop, running on ``loop``."""
    if func is None:
        return None

    async def call(*args: Any, **kwargs: Any) -> Any:
        future = asyncio.run_coroutine_threadsafe(func(*args, **kwargs), loop)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            raise

    return call


async def convert_off_loop(dockerfile: bytes, *, resolve_image: AsyncFunc | None,
                           **kwargs: Any) -> ConvertResult:
    """:func:`convert` with the same arguments, computed on a worker thread."""
    resolver = _on_loop(asyncio.get_running_loop(), resolve_image)

    def run() -> ConvertResult:
        return asyncio.run(convert(dockerfile, resolve_image=resolver, **kwargs))

    # Not from anyio's default limiter: the conversion holds its thread while it waits for image
    # configs resolved on the caller's loop, which takes worker threads of its own (registry
    # requests, content writes): with the limiter at four tokens, sixteen concurrent builds hung for
    # good; at its forty, forty conversions waiting for a registry would.
    return await anyio.to_thread.run_sync(run, abandon_on_cancel=True, limiter=anyio.CapacityLimiter(1))


async def off_loop_unless_small(dockerfile_size: int, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, work proportional to a Dockerfile of ``dockerfile_size`` bytes: at once for
    a small one, on a worker thread otherwise."""
    if dockerfile_size <= INLINE_DOCKERFILE_BYTES:
        return fn(*args)
    return await anyio.to_thread.run_sync(fn, *args)


def check_size(dockerfile_size: int, filename: str) -> str | None:
    """The error for a Dockerfile too large to accept, or None."""
    if dockerfile_size <= MAX_DOCKERFILE_BYTES:
        return None
    return (f"{filename} is {dockerfile_size / (1 << 20):.1f} MiB, more than the "
            f"{MAX_DOCKERFILE_BYTES >> 20} MiB this daemon accepts for a Dockerfile")
