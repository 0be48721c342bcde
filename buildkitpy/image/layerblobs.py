"""The exported layers' blobs: (layer, compression variant) -> the blob's descriptor in the content
store, in SQLite (``<worker root>/exporter/layers.db``, the worker's ``blob_cache``). The exporters
fill it (``exporter.imagebuild.blobs``); content garbage collection reads and trims it."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from buildkitpy.sqlitedb import open_db

_SCHEMA = """
CREATE TABLE IF NOT EXISTS layer_blobs (
    layer_key TEXT NOT NULL,
    variant TEXT NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    diff_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (layer_key, variant)
);
"""


@dataclass(frozen=True)
class LayerBlob:
    digest: str
    size: int
    diff_id: str
    kind: str  # compression: gzip, zstd, uncompressed
    media_type: str = ""  # set for reused (pulled) blobs: their original media type
    reused: bool = False  # came from a pull, not compressed by us


class BlobCache:
    """(layer, variant) → blob descriptor, in SQLite (thread-safe, blocking)."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = open_db(path, _SCHEMA)

    def get(self, key: str, variant: str) -> LayerBlob | None:
        with self._lock:
            row = self._db.execute("SELECT digest, size, diff_id, kind FROM layer_blobs "
                                   "WHERE layer_key=? AND variant=?", (key, variant)).fetchone()
        return LayerBlob(row[0], int(row[1]), row[2], row[3]) if row else None

    def put(self, key: str, variant: str, blob: LayerBlob) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO layer_blobs (layer_key, variant, digest, size, diff_id, "
                             "kind, created) VALUES (?,?,?,?,?,?,?)",
                             (key, variant, blob.digest, blob.size, blob.diff_id, blob.kind, time.time()))

    def entries(self) -> list[tuple[str, str]]:
        """(layer key, blob digest) of every record (for garbage collection)."""
        with self._lock:
            return [(r[0], r[1]) for r in self._db.execute("SELECT layer_key, digest FROM layer_blobs")]

    def forget_layer_keys(self, keys: set[str]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            for key in keys:
                self._db.execute("DELETE FROM layer_blobs WHERE layer_key=?", (key,))
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()
