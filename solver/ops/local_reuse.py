"""Which committed snapshot holds the previous transfer of a local source, by shared key.

BuildKit keeps the last copy of each client directory under ``name:sharedkeyhint:sessionSharedKey``
and transfers only what changed against it. We record the committed snapshot of each transfer in
SQLite (``<worker root>/local-sources.db``, so a daemon restart keeps it); the next transfer with
the same key starts a new mutable snapshot on top of it and syncs the delta into that, so no
finished result is ever modified.

Transfers with one key are serialised by ``SharedKeyIndex.claim``: the second waits for the first
(then only fetches what changed since) or, after ``CLAIM_TIMEOUT``, transfers from scratch without
recording. Under the empty session key (every buildctl) nobody waits: each transfer syncs against
the last recorded copy and records its own result, the last to finish winning.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio

DB_NAME = "local-sources.db"
CLAIM_TIMEOUT = 30.0  # seconds a transfer waits for another one with the same key

_SCHEMA = ("CREATE TABLE IF NOT EXISTS local_sources (shared_key TEXT PRIMARY KEY, "
           "snapshot_id TEXT NOT NULL, updated REAL NOT NULL)")


class SharedKeyIndex:
    """The worker's record of local-source copies and the claims on their keys. The record is
    blocking SQLite access (call ``get``/``put``/``forget`` through a worker thread), thread-safe:
    one connection for the worker's life, one statement at a time; ``claim`` runs on the event
    loop. A connection per call cost a checkpoint and a sync to the disk whenever it was the last
    one open, and concurrent writers then waited in SQLite's busy handler: 16 concurrent builds'
    lookups and records took 23-40 ms each, some up to 0.5 s.
    ``synchronous=NORMAL`` as the build cache's database: a record lost to a power cut only makes
    the next transfer a full one."""

    def __init__(self, worker_root: Path) -> None:
        self.path = Path(worker_root) / DB_NAME
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._claims: dict[str, _KeyLock] = {}  # the keys being transferred (event loop only)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, timeout=10, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(_SCHEMA)
            self._db = db
        return self._db

    def get(self, shared_key: str) -> str | None:
        with self._lock:
            row = self._conn().execute("SELECT snapshot_id FROM local_sources WHERE shared_key=?",
                                       (shared_key,)).fetchone()
        return row[0] if row else None

    def put(self, shared_key: str, snapshot_id: str) -> None:
        with self._lock:
            self._conn().execute("INSERT OR REPLACE INTO local_sources VALUES (?, ?, ?)",
                                 (shared_key, snapshot_id, time.time()))

    def forget(self, shared_key: str) -> None:
        with self._lock:
            self._conn().execute("DELETE FROM local_sources WHERE shared_key=?", (shared_key,))

    @asynccontextmanager
    async def claim(self, shared_key: str, *, wait: bool = True) -> AsyncIterator[bool]:
        """Hold the key while transferring; yields False if another transfer kept it too long, or
        at once if it is held and ``wait`` is false.

        Locks live only while someone uses them, so none outlives the event loop it was made on.
        """
        entry = self._claims.get(shared_key)
        if entry is None:
            entry = self._claims[shared_key] = _KeyLock(anyio.Lock())
        entry.users += 1
        acquired = False
        try:
            if wait:
                with anyio.move_on_after(CLAIM_TIMEOUT):
                    await entry.lock.acquire()
                    acquired = True
            elif not entry.lock.locked():
                entry.lock.acquire_nowait()
                acquired = True
            try:
                yield acquired
            finally:
                if acquired:
                    entry.lock.release()
        finally:
            entry.users -= 1
            if not entry.users:
                del self._claims[shared_key]

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


@dataclass
class _KeyLock:
    lock: anyio.Lock
    users: int = 0
