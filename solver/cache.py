"""Persistent cache records: cache key -> the committed snapshot of each output.

Records live in SQLite at ``<worker.root>/cache.db`` so a restarted daemon keeps its cache. The
cache holds a handle (a reference) on every snapshot it records, so results stay alive after the
build that produced them releases its own handles; after a restart the handles are re-taken lazily
with ``SnapshotManager.get(id)`` on the first hit. A record whose snapshot has disappeared (pruned)
is dropped and treated as a miss.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from buildkitpy.snapshot.api import ImmutableSnapshot, SnapshotManager

SCHEMA = """
CREATE TABLE IF NOT EXISTS cache_keys (key TEXT PRIMARY KEY, outputs INTEGER NOT NULL,
                                       created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS cache_records (key TEXT NOT NULL, output INTEGER NOT NULL,
                                          snapshot_id TEXT NOT NULL, PRIMARY KEY (key, output));
CREATE INDEX IF NOT EXISTS cache_records_snapshot ON cache_records (snapshot_id);
"""


class CacheStore:
    def __init__(self, db_path: Path, snapshots: SnapshotManager) -> None:
        self.snapshots = snapshots
        self._lock = threading.RLock()
        self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._held: dict[str, ImmutableSnapshot] = {}  # snapshot id -> the cache's own handle

    # Everything below blocks: call through anyio.to_thread.

    def load(self, key: str) -> list[ImmutableSnapshot] | None:
        """New handles on the outputs recorded under ``key``, or None on a miss."""
        with self._lock:
            row = self._db.execute("SELECT outputs FROM cache_keys WHERE key=?", (key,)).fetchone()
            if row is None:
                return None
            ids = dict(self._db.execute("SELECT output, snapshot_id FROM cache_records WHERE key=?", (key,)))
            if len(ids) != row[0] or set(ids) != set(range(row[0])):
                self._drop_key(key)
                return None
            handles: list[ImmutableSnapshot] = []
            try:
                for i in range(row[0]):
                    handles.append(self._handle(ids[i]))
            except KeyError:
                for h in handles:
                    h.release()
                self._drop_key(key)
                return None
            return handles

    def record(self, keys: list[str], outputs: list[ImmutableSnapshot]) -> None:
        """Record ``outputs`` under every key in ``keys`` (replacing older records)."""
        if not keys:
            return  # nothing to record (per-session keys): holding a handle would leak it
        with self._lock:
            now = time.time()
            for snap in outputs:
                if snap.id not in self._held:
                    self._held[snap.id] = snap.clone()
            replaced: set[str] = set()
            # IMMEDIATE: a deferred transaction that reads, then writes after another connection to
            # cache.db (ChecksumStore) wrote, fails at once with "database is locked"
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for key in keys:
                    replaced.update(r[0] for r in self._db.execute(
                        "SELECT snapshot_id FROM cache_records WHERE key=?", (key,)))
                    self._db.execute("DELETE FROM cache_records WHERE key=?", (key,))
                    self._db.execute("INSERT OR REPLACE INTO cache_keys VALUES (?, ?, ?)",
                                     (key, len(outputs), now))
                    self._db.executemany("INSERT INTO cache_records VALUES (?, ?, ?)",
                                         [(key, i, s.id) for i, s in enumerate(outputs)])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._release_if_unused(replaced)

    def snapshot_ids(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT DISTINCT snapshot_id FROM cache_records")}

    def forget_snapshot(self, snapshot_id: str) -> None:
        """Drop every record that uses ``snapshot_id`` and the cache's handle on it (for prune)."""
        with self._lock:
            keys = [r[0] for r in self._db.execute(
                "SELECT DISTINCT key FROM cache_records WHERE snapshot_id=?", (snapshot_id,))]
            for key in keys:
                self._drop_key(key)

    def close(self) -> None:
        with self._lock:
            for h in self._held.values():
                h.release()
            self._held.clear()
            self._db.close()

    # -- internals -------------------------------------------------------------------------------

    def _handle(self, snapshot_id: str) -> ImmutableSnapshot:
        held = self._held.get(snapshot_id)
        if held is None:
            held = self.snapshots.get(snapshot_id)  # KeyError if it is gone
            self._held[snapshot_id] = held
        return held.clone()

    def _drop_key(self, key: str) -> None:
        ids = {r[0] for r in self._db.execute("SELECT snapshot_id FROM cache_records WHERE key=?", (key,))}
        self._db.execute("DELETE FROM cache_records WHERE key=?", (key,))
        self._db.execute("DELETE FROM cache_keys WHERE key=?", (key,))
        self._release_if_unused(ids)

    def _release_if_unused(self, snapshot_ids: set[str]) -> None:
        for sid in snapshot_ids:
            if sid in self._held and self._db.execute(
                    "SELECT 1 FROM cache_records WHERE snapshot_id=? LIMIT 1", (sid,)).fetchone() is None:
                self._held.pop(sid).release()
