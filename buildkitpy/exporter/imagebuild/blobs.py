"""Layer blobs: each snapshot layer as a compressed tar in the content store, made once.

A layer is tarred, hashed (diffID), compressed and hashed again (blob digest) in one pass over its
bytes: the tar is produced in the calling thread; a second thread hashes the tar, hands it to the
compressor (gzip spreads its blocks over all cores, see ``image.compression``), hashes the
compressed bytes and writes them, connected by a small bounded queue. File contents go through
as the tar writer read them (no re-buffering of large writes). The blob lands in the content
store (identical blobs once) and its descriptor is remembered per (layer, compression variant,
timestamp clamp) in ``<root>/exporter/layers.db`` (the worker's ``blob_cache``, see
``image.layerblobs``), so exporting the same layers again does no work. Layers that were pulled are
reused as the registry's own blob.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path

from buildkitpy.content.store import ContentStore
from buildkitpy.exporter.imagebuild.layertar import write_layer_tar
from buildkitpy.image import compression as comp
from buildkitpy.image.layerblobs import LayerBlob

CHUNK = 1 << 20
_QUEUE_DEPTH = 8


def layer_key(path: Path) -> str:
    """A stable name for a layer directory: ``<snapshot id>/<dir>`` (snapshot ids are never reused
    and a committed layer never changes)."""
    return f"{path.parent.name}/{path.name}"


class _Stage:
    """A thread that takes the tar's chunks from its own bounded queue, in order."""

    def __init__(self, name: str, step: Callable[[bytes | None], None], failed: threading.Event) -> None:
        self._step = step
        self._failed = failed
        self._q: queue.Queue = queue.Queue(_QUEUE_DEPTH)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                chunk = self._q.get()
                self._step(chunk)
                if chunk is None:
                    return
        except BaseException as exc:
            self.error = exc
            self._failed.set()
            while True:  # drain so the producer never blocks
                try:
                    if self._q.get(timeout=0.5) is None:
                        return
                except queue.Empty:
                    return

    def put(self, chunk: bytes | None) -> None:
        """Hand over a chunk (None: the end); gives up once any stage failed."""
        while self._thread.is_alive():
            if self._failed.is_set() and chunk is not None:
                raise RuntimeError("layer compression failed")
            try:
                self._q.put(chunk, timeout=0.5)
                return
            except queue.Full:
                continue

    def join(self) -> None:
        self._thread.join()


class _ChunkQueue:
    """The tar side's file object: gathers small writes (headers) and hands chunks to every
    stage; large writes (file contents) go as they are, after what was gathered."""

    _SMALL = 64 * 1024

    def __init__(self, stages: list[_Stage]) -> None:
        self._stages = stages
        self._buf = bytearray()

    def write(self, data: bytes) -> int:
        n = len(data)
        if n >= self._SMALL:
            self.finish()
            self._push(data if isinstance(data, bytes) else bytes(data))
        else:
            self._buf += data
            if len(self._buf) >= CHUNK:
                self.finish()
        return n

    def _push(self, chunk: bytes) -> None:
        for stage in self._stages:
            stage.put(chunk)

    def finish(self) -> None:
        if self._buf:
            self._push(bytes(self._buf))
            self._buf.clear()


def compress_layer(layer: Path, store: ContentStore, config: comp.CompressionConfig,
                   clamp_mtime: int | None = None, lowers: list[Path] | None = None) -> LayerBlob:
    """Tar, compress, hash and store one layer directory with the compression ``config`` asks
    for (blocking). ``lowers``: the layers it was made on (see ``layertar``).

    Three stages run at once over the same chunks: the tar is written in the calling thread, one
    thread hashes it (the diffID), another compresses it (gzip on all cores), hashes the result
    and writes it to the content store's ingest directory."""
    failed = threading.Event()
    tmp = store.ingest_path()
    plain = config.kind == comp.UNCOMPRESSED  # the blob is the tar: the diffID is its digest
    diff = hashlib.sha256()
    digest = hashlib.sha256()
    compressor = comp.new_compressor(config)
    out_file = open(tmp, "xb")  # noqa: SIM115 (closed by the compress stage or below)
    sizes = [0]

    def hash_step(chunk: bytes | None) -> None:
        if chunk is not None:
            diff.update(chunk)

    def compress_step(chunk: bytes | None) -> None:
        out = compressor.flush() if chunk is None else compressor.compress(chunk)
        if out:
            digest.update(out)
            out_file.write(out)
            sizes[0] += len(out)
        if chunk is None:
            out_file.close()

    stages = [_Stage("layer-hash", hash_step, failed)] if not plain else []
    stages.append(_Stage("layer-compress", compress_step, failed))
    chunks = _ChunkQueue(stages)
    error: BaseException | None = None
    try:
        try:
            write_layer_tar(layer, chunks, clamp_mtime, lowers)
            chunks.finish()
        except BaseException as exc:
            error = exc
        finally:
            for stage in stages:
                stage.put(None)
            for stage in stages:
                stage.join()
        error = next((s.error for s in stages if s.error is not None), None) or error
        if error is not None:
            raise error
        blob_digest = "sha256:" + digest.hexdigest()
        diff_id = blob_digest if plain else "sha256:" + diff.hexdigest()
        info = store.adopt(tmp, blob_digest, {"containerd.io/uncompressed": diff_id})
        return LayerBlob(blob_digest, info.size, diff_id, config.kind)
    finally:
        out_file.close()
        close = getattr(compressor, "close", None)
        if close is not None:
            close()
        if os.path.lexists(tmp):
            os.unlink(tmp)
