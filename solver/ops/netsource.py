"""Plumbing shared by the network sources (``http(s)://``, ``git://``). What they remember about
the snapshots they made is the worker's ``source_records`` (``buildkitpy.snapshot.sourcerecords``).

- ``session_secret``: an optional secret from the build's sessions (auth headers, tokens).
- ``interruptible``: blocking work in a thread that stops at its next checkpoint when the calling
  task is cancelled, instead of holding the cancellation until the whole download ends.
- ``KeyedLocks``: one anyio lock per key (a URL, a git remote) so concurrent builds do not download
  or fetch the same thing twice at once.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from buildkitpy.errors import Canceled, SessionNotFound

T = TypeVar("T")


class KeyedLocks:
    """``async with locks(key):`` serialises work per key; a key's lock lives only while in use."""

    def __init__(self) -> None:
        self._locks: dict[object, tuple[anyio.Lock, int]] = {}

    @asynccontextmanager
    async def __call__(self, key: object) -> AsyncIterator[None]:
        lock, users = self._locks.get(key) or (anyio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


async def session_secret(worker: Any, session_ids: list[str], name: str) -> bytes | None:
    """Secret ``name`` from the first build session that has it; None when none does."""
    from buildkitpy.session.secrets import SecretNotFound, get_secret

    sessions = getattr(worker, "sessions", None)
    if sessions is None:
        return None
    for sid in session_ids:
        try:
            session = await sessions.get(sid.split(":", 1)[-1], timeout=0.5)
            return await get_secret(session, name, timeout=10.0)
        except (SessionNotFound, SecretNotFound):
            continue
    return None


async def interruptible(fn: Callable[[threading.Event], T]) -> T:
    """Run ``fn(stop)`` in a thread; cancelling the caller sets ``stop``, which ``fn`` checks between
    chunks of work (raising ``Canceled``). The thread's result is never dropped: cancellation is
    delivered after ``fn`` returned or raised."""
    stop = threading.Event()
    async with anyio.create_task_group() as tg:
        async def watch() -> None:
            try:
                await anyio.sleep_forever()
            finally:
                stop.set()

        tg.start_soon(watch)
        try:
            with anyio.CancelScope(shield=True):
                result = await anyio.to_thread.run_sync(fn, stop)
        finally:
            tg.cancel_scope.cancel()
    # outside the scopes: their __exit__ may swallow an exception, so mypy wants the return here
    return result


def check_stop(stop: threading.Event) -> None:
    if stop.is_set():
        raise Canceled("source transfer cancelled")
