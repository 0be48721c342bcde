"""Layer blobs: each snapshot layer as a compressed tar in the content store, made once.

A layer is tarred, hashed (diffID), compressed and hashed again (blob digest) in one pass: the tar
is produced and hashed in one thread, compressed, hashed and written in another, connected by a
small bounded queue of 1 MiB chunks. The blob lands in the content store (identical blobs once) and
its descriptor is remembered per (layer, compression variant, timestamp clamp) in
``<root>/exporter/layers.db``, so exporting the same layers again does no work. Layers that were
pulled are reused as the registry's own blob.
"""

from __future__ import annotations

import hashlib
import os
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from buildkitpy.content.store import ContentStore
from buildkitpy.exporter.imagebuild.layertar import write_layer_tar
from buildkitpy.image import compression as comp

CHUNK = 1 << 20
_QUEUE_DEPTH = 8

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


def layer_key(path: Path) -> str:
    """A stable name for a layer directory: ``<snapshot id>/<dir>`` (snapshot ids are never reused
    and a committed layer never changes)."""
    return f"{path.parent.name}/{path.name}"


class BlobCache:
    """(layer, variant) → blob descriptor, in SQLite (thread-safe, blocking)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

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


class _ChunkQueue:
    """The tar side's file object: hashes the uncompressed bytes and hands 1 MiB chunks over."""

    def __init__(self, q: queue.Queue, failed: threading.Event) -> None:
        self._q = q
        self._failed = failed
        self._buf = bytearray()
        self.hash = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self._buf += data
        if len(self._buf) >= CHUNK:
            self._push(bytes(self._buf))
            self._buf.clear()
        return len(data)

    def _push(self, chunk: bytes) -> None:
        self.hash.update(chunk)
        while True:
            if self._failed.is_set():
                raise RuntimeError("layer compression failed")
            try:
                self._q.put(chunk, timeout=0.5)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        if self._buf:
            self._push(bytes(self._buf))
            self._buf.clear()


def compress_layer(layer: Path, store: ContentStore, config: comp.CompressionConfig,
                   clamp_mtime: int | None = None, lowers: list[Path] | None = None) -> LayerBlob:
    """Tar, compress, hash and store one layer directory (blocking; uses one extra thread).
    ``lowers``: the layers it was made on (see ``layertar``)."""
    q: queue.Queue = queue.Queue(_QUEUE_DEPTH)
    failed = threading.Event()
    tmp = store.ingest_path()
    result: dict[str, object] = {}

    def consume() -> None:
        compressor = comp.new_compressor(config)
        digest = hashlib.sha256()
        size = 0
        try:
            with open(tmp, "xb") as f:
                while True:
                    chunk = q.get()
                    out = compressor.flush() if chunk is None else compressor.compress(chunk)
                    if out:
                        digest.update(out)
                        f.write(out)
                        size += len(out)
                    if chunk is None:
                        break
            result["digest"], result["size"] = "sha256:" + digest.hexdigest(), size
        except BaseException as exc:
            result["error"] = exc
            failed.set()
            while True:  # drain so the producer never blocks
                try:
                    if q.get(timeout=0.5) is None:
                        break
                except queue.Empty:
                    break

    worker = threading.Thread(target=consume, name="layer-compress", daemon=True)
    worker.start()
    chunks = _ChunkQueue(q, failed)
    try:
        try:
            write_layer_tar(layer, chunks, clamp_mtime, lowers)
            chunks.finish()
        except BaseException as exc:
            result.setdefault("error", exc)
        finally:
            while worker.is_alive():
                try:
                    q.put(None, timeout=0.5)
                    break
                except queue.Full:
                    continue
            worker.join()
        if "error" in result:
            raise result["error"]  # type: ignore[misc]
        blob_digest = str(result["digest"])
        diff_id = "sha256:" + chunks.hash.hexdigest()
        info = store.adopt(tmp, blob_digest, {"containerd.io/uncompressed": diff_id})
        return LayerBlob(blob_digest, info.size, diff_id, config.kind)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
