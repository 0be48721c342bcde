"""The Engine API's image store: image records over the daemon's content store.

An image's ID is the digest of its config, as Docker's. Its blobs (manifest, config, layers) live in
the worker's content store; the record adds what Docker keeps beside them: the parent image (the
classic builder's previous step), creation time, tags, and the classic build cache (parent + step
→ child). Every image is also named in the pull database's image records (``moby-image@<id>``, and
``host/repo:tag`` for each tag), so prune keeps everything it needs and ``FROM name`` in a later
build (either builder) resolves it locally without a registry.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from buildkitpy.errors import BuildkitpyError, InvalidArgument, NotFound
from buildkitpy.image.reference import Reference, parse_reference
from buildkitpy.sqlitedb import open_db

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY, manifest_digest TEXT NOT NULL, parent TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL, size INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS tags (name TEXT PRIMARY KEY, id TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS build_cache (key TEXT PRIMARY KEY, id TEXT NOT NULL, created REAL NOT NULL);
"""

INTERNAL_NAME_PREFIX = "moby-image@"


class Conflict(BuildkitpyError):
    """The image is in use (e.g. tagged more than once and removed by ID without force)."""


@dataclass
class ImageRecord:
    id: str
    manifest_digest: str
    parent: str
    created: float
    size: int
    tags: list[str]

    @property
    def short_id(self) -> str:
        return self.id.split(":", 1)[-1][:12]


def normalize_tag(name: str) -> str:
    """``busybox`` → ``docker.io/library/busybox:latest`` (a digest reference is refused)."""
    try:
        ref = parse_reference(name)
    except InvalidArgument as exc:
        raise InvalidArgument(f"invalid reference format: {name!r}: {exc}") from None
    if ref.digest:
        raise InvalidArgument(f"invalid tag {name!r}: a tag cannot contain a digest")
    return f"{ref.name}:{ref.tag or 'latest'}"


def familiar(name: str) -> str:
    """``docker.io/library/busybox:latest`` → ``busybox:latest`` (as the docker CLI shows names)."""
    if name.startswith("docker.io/library/"):
        return name[len("docker.io/library/"):]
    if name.startswith("docker.io/"):
        return name[len("docker.io/"):]
    return name


def split_repo_tag(name: str) -> tuple[str, str]:
    repo, _, tag = familiar(name).rpartition(":")
    return repo, tag


class ImageStore:
    """Blocking and thread-safe; the HTTP handlers call it through ``anyio.to_thread``."""

    def __init__(self, root: Path, content: Any, chains: Any) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.content = content  # buildkitpy.content.store.ContentStore
        self.chains = chains  # buildkitpy.image.pull.ChainIndex
        self._lock = threading.Lock()
        self._db = open_db(root / "images.db", _SCHEMA)
        self._holds: list[set[str]] = []

    # -- blobs written outside a build -------------------------------------------------------------

    @contextmanager
    def holding(self) -> Iterator[list[set[str]]]:
        """Blobs the caller is about to write and record: the daemon's collection (which deletes
        what no image names, between builds) keeps them until the block ends. Use ``hold`` before
        writing each one."""
        held: set[str] = set()
        with self._lock:
            self._holds.append(held)
        try:
            yield [held]
        finally:
            with self._lock:
                self._holds.remove(held)

    def hold(self, holding: list[set[str]], digest: str) -> None:
        with self._lock:
            holding[0].add(digest)

    def write_held(self, holding: list[set[str]], data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.hold(holding, digest)
        self.content.write_bytes(data, digest)
        return digest

    def held_digests(self) -> set[str]:
        """A content root for the daemon's collection."""
        with self._lock:
            return set().union(*self._holds)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- records -----------------------------------------------------------------------------------

    def add(self, image_id: str, manifest_digest: str, parent: str = "") -> ImageRecord:
        """Record an image whose manifest (and everything it names) is in the content store; given
        an index (an image with attestations), its image manifest for ``image_id``."""
        manifest = json.loads(self.content.read(manifest_digest))
        if "manifests" in manifest:
            manifest_digest = self._image_manifest(manifest, image_id)
            manifest = json.loads(self.content.read(manifest_digest))
        size = sum(int(layer.get("size", 0)) for layer in manifest.get("layers") or [])
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO images (id, manifest_digest, parent, created, size) "
                             "VALUES (?,?,?,?,?)", (image_id, manifest_digest, parent, time.time(), size))
        self.chains.put_image_ref(INTERNAL_NAME_PREFIX + image_id, "", manifest_digest, manifest_digest)
        return self.get(image_id)

    def _image_manifest(self, index: dict[str, Any], image_id: str) -> str:
        for entry in index.get("manifests") or []:
            annotations = entry.get("annotations") or {}
            if annotations.get("vnd.docker.reference.type") == "attestation-manifest":
                continue
            doc = json.loads(self.content.read(entry["digest"]))
            if (doc.get("config") or {}).get("digest") == image_id:
                return entry["digest"]
        raise InvalidArgument(f"the index has no image manifest for config {image_id}")

    def _row(self, image_id: str) -> ImageRecord | None:
        with self._lock:
            row = self._db.execute("SELECT id, manifest_digest, parent, created, size FROM images WHERE id=?",
                                   (image_id,)).fetchone()
            if row is None:
                return None
            tags = [r[0] for r in self._db.execute("SELECT name FROM tags WHERE id=? ORDER BY name",
                                                    (image_id,))]
        return ImageRecord(row[0], row[1], row[2], row[3], row[4], tags)

    def get(self, image_id: str) -> ImageRecord:
        record = self._row(image_id)
        if record is None:
            raise NotFound(f"No such image: {image_id}")
        return record

    def lookup(self, name: str) -> ImageRecord:
        """An image by full or short ID (with or without ``sha256:``) or by ``repo[:tag]``."""
        if not name:
            raise NotFound("No such image: (empty name)")
        candidate = name if name.startswith("sha256:") else "sha256:" + name
        if all(c in "0123456789abcdef" for c in candidate[7:]) and len(candidate) > 7:
            record = self._row(candidate)
            if record is not None:
                return record
            with self._lock:  # a manifest digest names its image too (as in containerd's store)
                by_manifest = self._db.execute("SELECT id FROM images WHERE manifest_digest=?",
                                               (candidate,)).fetchone()
            if by_manifest is not None:
                return self.get(by_manifest[0])
            with self._lock:
                rows = self._db.execute("SELECT id FROM images WHERE id LIKE ?",
                                        (candidate + "%",)).fetchall()
            if len(rows) == 1:
                return self.get(rows[0][0])
            if len(rows) > 1 and len(candidate) - 7 >= 1:
                raise InvalidArgument(f"multiple images match {name!r}: use more of the ID")
        try:
            tag = normalize_tag(name)
        except InvalidArgument:
            raise NotFound(f"No such image: {name}") from None
        with self._lock:
            row = self._db.execute("SELECT id FROM tags WHERE name=?", (tag,)).fetchone()
        if row is None:
            raise NotFound(f"No such image: {name}")
        return self.get(row[0])

    def all(self) -> list[ImageRecord]:
        with self._lock:
            ids = [r[0] for r in self._db.execute("SELECT id FROM images ORDER BY created DESC")]
        return [r for r in (self._row(i) for i in ids) if r is not None]

    def children(self, image_id: str) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT id FROM images WHERE parent=?", (image_id,))]

    # -- content -----------------------------------------------------------------------------------

    def manifest(self, record: ImageRecord) -> dict[str, Any]:
        return json.loads(self.content.read(record.manifest_digest))

    def config_bytes(self, record: ImageRecord) -> bytes:
        return self.content.read(record.id)

    def config(self, record: ImageRecord) -> dict[str, Any]:
        return json.loads(self.config_bytes(record))

    # -- tags --------------------------------------------------------------------------------------

    def tag(self, image_id: str, name: str) -> str:
        record = self.get(image_id)
        full = normalize_tag(name)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO tags (name, id, created) VALUES (?,?,?)",
                             (full, image_id, time.time()))
        self.chains.put_image_ref(full, "", record.manifest_digest, record.manifest_digest)
        return full

    def untag(self, name: str) -> str:
        """Remove a tag; returns the image ID it pointed at."""
        full = normalize_tag(name)
        with self._lock:
            row = self._db.execute("SELECT id FROM tags WHERE name=?", (full,)).fetchone()
            if row is None:
                raise NotFound(f"No such image: {name}")
            self._db.execute("DELETE FROM tags WHERE name=?", (full,))
        self.chains.forget_image_ref(full)
        return row[0]

    def delete(self, image_id: str) -> None:
        """Forget an untagged image; its blobs go at the next prune unless something else needs them."""
        with self._lock:
            self._db.execute("DELETE FROM images WHERE id=?", (image_id,))
            self._db.execute("DELETE FROM build_cache WHERE id=?", (image_id,))
            self._db.execute("UPDATE images SET parent='' WHERE parent=?", (image_id,))
        self.chains.forget_image_ref(INTERNAL_NAME_PREFIX + image_id)

    # -- classic build cache ------------------------------------------------------------------------

    def cached_child(self, key: str) -> ImageRecord | None:
        with self._lock:
            row = self._db.execute("SELECT id FROM build_cache WHERE key=?", (key,)).fetchone()
        if row is None:
            return None
        record = self._row(row[0])
        if record is None or not self.content.exists(record.manifest_digest):
            return None
        return record

    def remember_child(self, key: str, image_id: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO build_cache (key, id, created) VALUES (?,?,?)",
                             (key, image_id, time.time()))


def reference_of(name: str) -> Reference:
    return parse_reference(name)
