"""The daemon's own cache storage: keys, links and results in SQLite (``<worker.root>/cache.db``).

It implements ``buildkitpy.solver.cachestorage.CacheStorage``; a result's id is the id of the
committed snapshot, so a restarted daemon keeps its cache. The storage holds a handle (a reference)
on every snapshot it records, so results stay alive after the build that produced them releases its
own handles; after a restart the handles are re-taken lazily with ``SnapshotManager.get(id)`` on the
first load. A result whose snapshot has disappeared (pruned) is dropped and reported as gone.

A key keeps one result: recording another replaces it (the older snapshot is released once no key
uses it). Writes of one vertex go in one transaction (``save``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

from buildkitpy.snapshot.api import ImmutableSnapshot, SnapshotManager
from buildkitpy.solver.cachestorage import CacheLink, CacheResult, CacheResultGone
from buildkitpy.sqlitedb import open_db

SCHEMA = """
DROP TABLE IF EXISTS cache_records;
DROP TABLE IF EXISTS cache_keys;
CREATE TABLE IF NOT EXISTS cache_links (
    src TEXT NOT NULL, input INTEGER NOT NULL, output INTEGER NOT NULL, digest TEXT NOT NULL,
    selector TEXT NOT NULL, target TEXT NOT NULL,
    PRIMARY KEY (src, input, output, digest, selector, target)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS cache_links_target ON cache_links (target);
CREATE TABLE IF NOT EXISTS cache_results (
    key TEXT NOT NULL, result TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (key, result)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS cache_results_result ON cache_results (result);
"""


class SQLiteCacheStorage:
    name = "local"
    readonly = False

    def __init__(self, db_path: Path, snapshots: SnapshotManager) -> None:
        self.snapshots = snapshots
        self._lock = threading.RLock()
        self._db = open_db(db_path, SCHEMA, durable=False)
        self._held: dict[str, ImmutableSnapshot] = {}  # snapshot id -> the cache's own handle

    # Everything below blocks: call through anyio.to_thread.

    def exists(self, key: str) -> bool:
        with self._lock:
            return any(self._db.execute(q, (key,)).fetchone() is not None for q in (
                "SELECT 1 FROM cache_results WHERE key=? LIMIT 1",
                "SELECT 1 FROM cache_links WHERE src=? LIMIT 1",
                "SELECT 1 FROM cache_links WHERE target=? LIMIT 1"))

    def walk_links(self, key: str, link: CacheLink) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute(
                "SELECT target FROM cache_links WHERE src=? AND input=? AND output=? AND digest=? "
                "AND selector=?", (key, link.input, link.output, link.digest, link.selector))]

    def has_link(self, key: str, link: CacheLink, target: str) -> bool:
        with self._lock:
            return self._db.execute(
                "SELECT 1 FROM cache_links WHERE src=? AND input=? AND output=? AND digest=? AND selector=? "
                "AND target=?", (key, link.input, link.output, link.digest, link.selector, target)
            ).fetchone() is not None

    def results(self, key: str) -> list[CacheResult]:
        with self._lock:
            return [CacheResult(r[0], r[1], self.name) for r in self._db.execute(
                "SELECT result, created FROM cache_results WHERE key=? ORDER BY created DESC", (key,))]

    def results_many(self, keys: Sequence[str]) -> dict[str, list[CacheResult]]:
        """``results`` for many keys in one query (keys without results are left out)."""
        out: dict[str, list[CacheResult]] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = list(keys[i:i + 500])
                rows = self._db.execute(
                    "SELECT key, result, created FROM cache_results WHERE key IN "
                    f"({','.join('?' * len(chunk))}) ORDER BY created DESC", chunk)
                for key, rid, created in rows:
                    out.setdefault(key, []).append(CacheResult(rid, created, self.name))
        return out

    def load(self, key: str, result: CacheResult) -> ImmutableSnapshot:
        with self._lock:
            if self._db.execute("SELECT 1 FROM cache_results WHERE key=? AND result=?",
                                (key, result.id)).fetchone() is None:
                raise CacheResultGone(f"cache result {result.id} of {key} is gone")
            try:
                return self._handle(result.id)
            except KeyError:
                self.forget_snapshot(result.id)
                raise CacheResultGone(f"the snapshot {result.id} of cache key {key} was removed") from None

    def add_link(self, key: str, link: CacheLink, target: str) -> None:
        self.save([(key, link, target)], [])

    def add_result(self, key: str, value: ImmutableSnapshot) -> CacheResult:
        return self.save([], [(key, value)])[0]

    def save(self, links: Sequence[tuple[str, CacheLink, str]],
             results: Sequence[tuple[str, ImmutableSnapshot]]) -> list[CacheResult]:
        if not links and not results:
            return []
        now = time.time()
        with self._lock:
            for _, snap in results:
                if snap.id not in self._held:
                    self._held[snap.id] = snap.clone()
            replaced: set[str] = set()
            # IMMEDIATE: a deferred transaction that reads, then writes after another connection to
            # cache.db (ChecksumStore) wrote, fails at once with "database is locked"
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR IGNORE INTO cache_links VALUES (?, ?, ?, ?, ?, ?)",
                    [(s, ln.input, ln.output, ln.digest, ln.selector, t) for s, ln, t in links])
                for key, snap in results:
                    replaced.update(r[0] for r in self._db.execute(
                        "SELECT result FROM cache_results WHERE key=? AND result<>?", (key, snap.id)))
                    self._db.execute("DELETE FROM cache_results WHERE key=? AND result<>?", (key, snap.id))
                    self._db.execute("INSERT OR REPLACE INTO cache_results VALUES (?, ?, ?)",
                                     (key, snap.id, now))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._release_if_unused(replaced)
        return [CacheResult(snap.id, now, self.name) for _, snap in results]

    # -- for disk usage and prune (buildkitpy.control.usage.CacheRecords) ----------------------

    def snapshot_ids(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT DISTINCT result FROM cache_results")}

    def forget_snapshot(self, snapshot_id: str) -> None:
        """Drop every result that is ``snapshot_id`` and the cache's handle on it (for prune)."""
        with self._lock:
            self._db.execute("DELETE FROM cache_results WHERE result=?", (snapshot_id,))
            self._release_if_unused({snapshot_id})

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

    def _release_if_unused(self, snapshot_ids: set[str]) -> None:
        for sid in snapshot_ids:
            if sid in self._held and self._db.execute(
                    "SELECT 1 FROM cache_results WHERE result=? LIMIT 1", (sid,)).fetchone() is None:
                self._held.pop(sid).release()
