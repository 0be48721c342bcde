"""Plumbing shared by the network sources (``http(s)://``, ``git://``).

- ``SourceRecords``: what a source remembers about snapshots it produced (an http download's ETag
  and checksum, a git checkout's commit key), persisted in ``<worker root>/sources.db``. Records hold
  no snapshot handle: a pruned snapshot makes its record stale, and stale records are dropped when
  met (``get_snapshot``).
- ``session_secret``: an optional secret from the build's sessions (auth headers, tokens).
- ``interruptible``: blocking work in a thread that stops at its next checkpoint when the calling
  task is cancelled, instead of holding the cancellation until the whole download ends.
- ``KeyedLocks``: one anyio lock per key (a URL, a git remote) so concurrent builds do not download
  or fetch the same thing twice at once.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from buildkitpy.errors import Canceled, SessionNotFound
from buildkitpy.snapshot.api import ImmutableSnapshot

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS source_records (kind TEXT NOT NULL, key TEXT NOT NULL, snapshot_id TEXT NOT NULL,
                                           meta TEXT NOT NULL, created REAL NOT NULL,
                                           PRIMARY KEY (kind, key, snapshot_id));
"""


class SourceRecords:
    def __init__(self, db_path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def find(self, kind: str, key: str) -> list[tuple[str, dict[str, Any]]]:
        """(snapshot id, metadata) of every record under ``key``, newest first."""
        with self._lock:
            rows = self._db.execute("SELECT snapshot_id, meta FROM source_records WHERE kind=? AND key=? "
                                    "ORDER BY created DESC", (kind, key)).fetchall()
        return [(sid, json.loads(meta)) for sid, meta in rows]

    def put(self, kind: str, key: str, snapshot_id: str, meta: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO source_records VALUES (?, ?, ?, ?, ?)",
                             (kind, key, snapshot_id, json.dumps(meta, sort_keys=True), time.time()))

    def drop(self, kind: str, key: str, snapshot_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM source_records WHERE kind=? AND key=? AND snapshot_id=?",
                             (kind, key, snapshot_id))

    def get_snapshot(self, snapshots: Any, kind: str, key: str, snapshot_id: str) -> ImmutableSnapshot | None:
        """A new handle on a recorded snapshot, or None (and the record dropped) if it is gone."""
        try:
            return snapshots.get(snapshot_id)
        except KeyError:
            self.drop(kind, key, snapshot_id)
            return None


_records: dict[Path, SourceRecords] = {}
_records_lock = threading.Lock()


def records_for(worker: Any) -> SourceRecords:
    root = Path(worker.root).absolute()
    with _records_lock:
        rec = _records.get(root)
        if rec is None:
            root.mkdir(parents=True, exist_ok=True)
            rec = _records[root] = SourceRecords(root / "sources.db")
        return rec


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
                return await anyio.to_thread.run_sync(fn, stop)
        finally:
            tg.cancel_scope.cancel()


def check_stop(stop: threading.Event) -> None:
    if stop.is_set():
        raise Canceled("source transfer cancelled")
