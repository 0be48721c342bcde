"""Persistent cache mounts (``RUN --mount=type=cache``): directories under ``<worker.root>/cachemounts``
that outlive builds, keyed by cache id, with BuildKit's sharing modes:

- shared: every concurrent user gets the same directory;
- locked: one user at a time, others wait;
- private: concurrent users get a separate directory each (a new one when all are busy).
"""

from __future__ import annotations

import hashlib
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from buildkitpy.api import ops_pb2


class CacheMounts:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._locks: dict[str, anyio.Lock] = {}
        self._private_busy: dict[str, set[int]] = {}

    def _dir(self, cache_id: str, slot: int = 0) -> Path:
        name = hashlib.sha256(cache_id.encode()).hexdigest()[:32]
        path = self.root / (name if slot == 0 else f"{name}.{slot}")
        path.mkdir(parents=True, exist_ok=True)
        return path

    @asynccontextmanager
    async def acquire(self, cache_id: str, sharing: int):  # noqa: ANN201
        if sharing == ops_pb2.LOCKED:
            lock = self._locks.setdefault(cache_id, anyio.Lock())
            async with lock:
                yield self._dir(cache_id)
        elif sharing == ops_pb2.PRIVATE:
            busy = self._private_busy.setdefault(cache_id, set())
            slot = 0
            while slot in busy:
                slot += 1
            busy.add(slot)
            try:
                yield self._dir(cache_id, slot)
            finally:
                busy.discard(slot)
        else:
            yield self._dir(cache_id)
