"""The content store: blobs named by their sha256 digest, like containerd's local store.

On disk, under ``<root>/content``::

    blobs/sha256/<hex>   committed blobs (read-only files)
    ingest/<random>      partial writes; renamed into ``blobs`` once the digest checks out
    metadata.db          labels per blob (SQLite; e.g. for garbage collection later)

A blob appears atomically (write to ``ingest``, fsync, rename) and only after its bytes hash to
its name, so a reader never sees a partial or wrong blob. Writers of the same digest in this
process are serialised; the second one finds the blob present and writes nothing.

A store opened with ``durable=False`` (the build history's) leaves out the fsync and checks
instead: the first time it reads a blob it did not write itself, it hashes it, and a blob that a
crash left incomplete (renamed into place before the kernel wrote its bytes) is removed and reads
as missing. Its readers never see a wrong blob; a crash may cost them the last blobs written.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from buildkitpy.errors import InvalidArgument, NotFound

log = logging.getLogger(__name__)

_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    digest TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (digest, key)
);
"""


class InvalidDigest(InvalidArgument):
    """A digest string that is not ``sha256:<64 lowercase hex>``."""


class DigestMismatch(InvalidArgument):
    """Written bytes do not hash to (or are not the size of) what was announced."""


def validate_digest(digest: object) -> str:
    """``digest`` itself if it is a well-formed sha256 digest; raises ``InvalidDigest``."""
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        raise InvalidDigest(f"unsupported or malformed digest {digest!r} (want sha256:<64 hex>)")
    return digest


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class BlobInfo:
    digest: str
    size: int
    labels: dict[str, str] = field(default_factory=dict)


class BlobWriter:
    """An open ingest: ``write`` chunks, then ``commit``. Hashes while writing."""

    def __init__(self, store: ContentStore, digest: str, expected_size: int | None) -> None:
        self.digest = digest
        self.expected_size = expected_size
        self.offset = 0
        self._store = store
        self._hash = hashlib.sha256()
        self._tmp = store._ingest_dir / f"{digest[7:19]}-{secrets.token_hex(6)}"
        self._file: BinaryIO = open(self._tmp, "xb")
        self.committed = False

    def write(self, data: bytes) -> None:
        if self.expected_size is not None and self.offset + len(data) > self.expected_size:
            raise DigestMismatch(f"blob {self.digest}: more than the expected {self.expected_size} bytes")
        self._file.write(data)
        self._hash.update(data)
        self.offset += len(data)

    def commit(self, labels: Mapping[str, str] | None = None) -> BlobInfo:
        if self.expected_size is not None and self.offset != self.expected_size:
            raise DigestMismatch(f"blob {self.digest}: got {self.offset} bytes, "
                                 f"expected {self.expected_size}")
        actual = "sha256:" + self._hash.hexdigest()
        if actual != self.digest:
            raise DigestMismatch(f"blob content digest {actual} does not match the expected {self.digest}")
        self._file.flush()
        if self._store.durable:
            os.fsync(self._file.fileno())
        self._file.close()
        final = self._store.path(self.digest)
        os.chmod(self._tmp, 0o444)
        self._store._place(self._tmp, final, self.offset, self.digest)
        self.committed = True
        if labels:
            self._store.set_labels(self.digest, labels)
        return self._store.info(self.digest)

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        if not self.committed:
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass


class ContentStore:
    """Thread-safe; every method is blocking (call through ``anyio.to_thread.run_sync``)."""

    def __init__(self, root: Path, *, durable: bool = True) -> None:
        self.root = Path(root).absolute() / "content"
        self.durable = durable
        # durable=False: blobs known whole (written, or hashed once, by this store)
        self._checked: set[str] = set()
        self._blobs_dir = self.root / "blobs" / "sha256"
        self._ingest_dir = self.root / "ingest"
        self._blobs_dir.mkdir(parents=True, exist_ok=True)
        self._ingest_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self._ingest_dir.iterdir():  # partial writes of a previous process
            leftover.unlink(missing_ok=True)
        self._lock = threading.Lock()
        self._digest_locks: dict[str, tuple[threading.Lock, int]] = {}
        self._bytes: int | None = None  # the blobs' total size, once ``stored_bytes`` has added it up
        self._db = sqlite3.connect(self.root / "metadata.db", check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    # ----------------------------------------------------------------- reading

    def path(self, digest: str) -> Path:
        return self._blobs_dir / validate_digest(digest)[7:]

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def info(self, digest: str) -> BlobInfo:
        self._check(digest)
        try:
            size = os.stat(self.path(digest)).st_size
        except FileNotFoundError:
            raise NotFound(f"content {digest} not found") from None
        with self._lock:
            rows = self._db.execute("SELECT key, value FROM labels WHERE digest=?", (digest,)).fetchall()
        return BlobInfo(digest, size, dict(rows))

    def open(self, digest: str) -> BinaryIO:
        self._check(digest)
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise NotFound(f"content {digest} not found") from None

    def _check(self, digest: str, *, locked: bool = False) -> None:
        """``durable=False``: hash a blob this store has not written or checked yet; one that does
        not match its name is removed (NotFound). ``locked``: the caller holds the digest's lock."""
        if self.durable or digest in self._checked:
            return
        h = hashlib.sha256()
        try:
            with open(self.path(digest), "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        except FileNotFoundError:
            raise NotFound(f"content {digest} not found") from None
        if "sha256:" + h.hexdigest() == digest:
            with self._lock:
                self._checked.add(digest)
            return
        log.warning("content %s was incomplete on disk (the daemon stopped before the kernel wrote "
                    "it); removing it", digest)
        with contextlib.suppress(NotFound):
            if locked:
                self._remove(digest)
            else:
                self.delete(digest)
        raise NotFound(f"content {digest} was incomplete on disk (the daemon stopped before it "
                       "was written out) and has been removed")

    def read(self, digest: str) -> bytes:
        with self.open(digest) as f:
            return f.read()

    def walk(self) -> Iterator[str]:
        for entry in os.scandir(self._blobs_dir):
            yield "sha256:" + entry.name

    def stored_bytes(self) -> int:
        """The total size of the blobs this store holds: added up on the first call, then kept
        as this store commits, adopts and deletes blobs (it must be the only writer of its
        directory, as the worker's store is)."""
        with self._lock:
            if self._bytes is None:
                total = 0
                for entry in os.scandir(self._blobs_dir):
                    try:
                        total += entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        pass
                self._bytes = total
            return self._bytes

    # ----------------------------------------------------------------- writing

    @contextmanager
    def ingest(self, digest: str, expected_size: int | None = None) -> Iterator[BlobWriter | None]:
        """Write blob ``digest``; yields ``None`` when it is already stored (nothing to do).

        The caller writes and ``commit``s; leaving the block without a commit discards the partial
        data. Concurrent ingests of one digest run one after the other.
        """
        validate_digest(digest)
        lock = self._acquire_digest_lock(digest)
        try:
            if self._whole(digest):
                yield None
                return
            writer = BlobWriter(self, digest, expected_size)
            try:
                yield writer
            finally:
                writer.abort()
        finally:
            self._release_digest_lock(digest, lock)

    def write_bytes(self, data: bytes, digest: str | None = None,
                    labels: Mapping[str, str] | None = None) -> str:
        """Store ``data`` (checked against ``digest`` when given); returns its digest."""
        digest = digest or sha256_digest(data)
        with self.ingest(digest, len(data)) as writer:
            if writer is not None:
                writer.write(data)
                writer.commit(labels)
            elif labels:
                self.set_labels(digest, labels)
        return digest

    def ingest_path(self) -> Path:
        """A fresh temporary file name inside the store, for ``adopt``."""
        return self._ingest_dir / f"adopt-{secrets.token_hex(8)}"

    def adopt(self, path: Path, digest: str, labels: Mapping[str, str] | None = None) -> BlobInfo:
        """Move a file written under ``ingest_path()`` into the store as ``digest``; the caller hashed
        the bytes while writing them (exporters compress and hash in one pass), so they are not read
        again. If the blob is already stored the file is dropped."""
        validate_digest(digest)
        lock = self._acquire_digest_lock(digest)
        try:
            if self._whole(digest):
                os.unlink(path)
            else:
                if self.durable:
                    with open(path, "rb") as f:
                        os.fsync(f.fileno())
                os.chmod(path, 0o444)
                self._place(path, self.path(digest), os.stat(path).st_size, digest)
        finally:
            self._release_digest_lock(digest, lock)
        if labels:
            self.set_labels(digest, labels)
        return self.info(digest)

    def set_labels(self, digest: str, labels: Mapping[str, str]) -> None:
        validate_digest(digest)
        with self._lock:
            self._db.execute("BEGIN")
            for key, value in labels.items():
                if value:
                    self._db.execute("INSERT OR REPLACE INTO labels (digest, key, value) VALUES (?,?,?)",
                                     (digest, key, value))
                else:
                    self._db.execute("DELETE FROM labels WHERE digest=? AND key=?", (digest, key))
            self._db.execute("COMMIT")

    def delete(self, digest: str) -> None:
        lock = self._acquire_digest_lock(validate_digest(digest))
        try:
            self._remove(digest)
        finally:
            self._release_digest_lock(digest, lock)

    def _remove(self, digest: str) -> None:
        """``delete`` for a caller holding the digest's lock."""
        path = self.path(digest)
        with self._lock:  # the total and the directory change together (``stored_bytes``)
            try:
                size = os.stat(path).st_size
                os.unlink(path)
            except FileNotFoundError:
                raise NotFound(f"content {digest} not found") from None
            if self._bytes is not None:
                self._bytes -= size
            self._checked.discard(digest)
            self._db.execute("DELETE FROM labels WHERE digest=?", (digest,))

    def _whole(self, digest: str) -> bool:
        """Whether the blob is stored and (``durable=False``) its bytes match its name; one that
        does not is removed, so that it is written again. The caller holds the digest's lock."""
        if not self.exists(digest):
            return False
        try:
            self._check(digest, locked=True)
        except NotFound:
            return False
        return True

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _place(self, src: Path, final: Path, size: int, digest: str) -> None:
        """Rename a complete blob into place (the caller holds its digest's lock)."""
        with self._lock:
            os.rename(src, final)
            if self._bytes is not None:
                self._bytes += size
            if not self.durable:
                self._checked.add(digest)

    # ----------------------------------------------------------------- per-digest locks

    def _acquire_digest_lock(self, digest: str) -> threading.Lock:
        with self._lock:
            lock, users = self._digest_locks.get(digest, (threading.Lock(), 0))
            self._digest_locks[digest] = (lock, users + 1)
        lock.acquire()
        return lock

    def _release_digest_lock(self, digest: str, lock: threading.Lock) -> None:
        lock.release()
        with self._lock:
            _, users = self._digest_locks[digest]
            if users <= 1:
                del self._digest_locks[digest]
            else:
                self._digest_locks[digest] = (lock, users - 1)
