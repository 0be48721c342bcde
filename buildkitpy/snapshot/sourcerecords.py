"""What a network source remembers about the snapshots it produced (an http download's ETag and
checksum, a git checkout's commit key), persisted in ``<worker root>/sources.db`` (the worker's
``source_records``). Records hold no snapshot handle: a pruned snapshot makes its record stale,
and stale records are dropped when met (``get_snapshot``)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from buildkitpy.snapshot.api import ImmutableSnapshot
from buildkitpy.sqlitedb import open_db

_SCHEMA = """
CREATE TABLE IF NOT EXISTS source_records (kind TEXT NOT NULL, key TEXT NOT NULL, snapshot_id TEXT NOT NULL,
                                           meta TEXT NOT NULL, created REAL NOT NULL,
                                           PRIMARY KEY (kind, key, snapshot_id));
"""


class SourceRecords:
    def __init__(self, db_path: Path) -> None:
        self._lock = threading.Lock()
        self._db = open_db(db_path, _SCHEMA)

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

    def close(self) -> None:
        with self._lock:
            self._db.close()
