"""Persistent cache mounts (``RUN --mount=type=cache``): directories under ``<worker.root>/cachemounts``
that outlive builds, keyed by cache id, with BuildKit's sharing modes:

- shared: every concurrent user gets the same directory;
- locked: one user at a time, others wait;
- private: concurrent users get a separate directory each (a new one when all are busy).

A cache mount with a source input (``from=``, or the Dockerfile frontend's ``mkdir`` carrying
``mode/uid/gid``) starts as a copy of that input and, as in BuildKit, is a separate cache per
source snapshot. A new directory is populated under a temporary name and renamed into place, so a
concurrent user never sees a half-seeded cache.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from buildkitpy.api import ops_pb2
from buildkitpy.snapshot.api import ImmutableSnapshot
from buildkitpy.snapshot.fs import copy_tree, remove_tree


class CacheMounts:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._locks: dict[str, anyio.Lock] = {}
        self._private_busy: dict[str, set[int]] = {}
        self._uses = 0  # cache directories taken and given back
        self._held = 0

    def generation(self) -> int | None:
        """Moves whenever a build has taken or given back a cache directory; None while one is
        held. The directories' contents change only while held, so the GC measures them again only
        when this is None or moved."""
        return None if self._held else self._uses

    def _dir(self, key: str, slot: int, seed: ImmutableSnapshot | None) -> Path:
        name = hashlib.sha256(key.encode()).hexdigest()[:32]
        path = self.root / (name if slot == 0 else f"{name}.{slot}")
        if path.is_dir():
            return path
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=self.root))
        try:
            if seed is not None:
                with seed.mount() as src:
                    copy_tree(Path(src), tmp)
                    st = os.lstat(src)
                    os.chown(tmp, st.st_uid, st.st_gid)
                    os.chmod(tmp, st.st_mode & 0o7777)
            else:
                os.chmod(tmp, 0o755)
            try:
                os.rename(tmp, path)
            except OSError:
                if not path.is_dir():
                    raise
        finally:
            if tmp.exists():
                remove_tree(tmp)
        return path

    def named_dir(self, cache_id: str) -> Path:
        """Where the cache mount ``cache_id`` (without a source, first slot) lives; may not exist."""
        return self.root / hashlib.sha256(cache_id.encode()).hexdigest()[:32]

    @asynccontextmanager
    async def acquire(self, cache_id: str, sharing: int, seed: ImmutableSnapshot | None = None):  # noqa: ANN201
        """Hold the cache directory for ``cache_id`` (seeded from ``seed`` when first created)."""
        key = cache_id if seed is None else f"{cache_id}:{seed.id}"
        self._uses += 1
        self._held += 1
        try:
            async with self._hold(key, sharing, seed) as path:
                yield path
        finally:
            self._held -= 1
            self._uses += 1

    @asynccontextmanager
    async def _hold(self, key: str, sharing: int, seed: ImmutableSnapshot | None):  # noqa: ANN202
        async def get(slot: int = 0) -> Path:
            async with self._locks.setdefault("create:" + key, anyio.Lock()):
                return await anyio.to_thread.run_sync(self._dir, key, slot, seed)

        if sharing == ops_pb2.LOCKED:
            lock = self._locks.setdefault(key, anyio.Lock())
            async with lock:
                yield await get()
        elif sharing == ops_pb2.PRIVATE:
            busy = self._private_busy.setdefault(key, set())
            slot = 0
            while slot in busy:
                slot += 1
            busy.add(slot)
            try:
                yield await get(slot)
            finally:
                busy.discard(slot)
        else:
            yield await get()
