"""Pulling an image into a snapshot chain.

Layers download concurrently into the content store (a blob already stored, or being fetched by
another pull, is not fetched again) and are unpacked bottom-up, one snapshot per layer, each on its
parent. Every unpacked layer is recorded by its ChainID (``<root>/image/chains.db``), so any later
image sharing a prefix of layers reuses those snapshots and unpacks only what is new.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from buildkitpy.content.store import ContentStore
from buildkitpy.errors import InvalidArgument, leaf_errors
from buildkitpy.image import mediatypes
from buildkitpy.image.reference import Reference
from buildkitpy.image.registry import Descriptor, RegistryClient
from buildkitpy.image.resolve import ResolvedImage
from buildkitpy.image.unpack import apply_layer_blob
from buildkitpy.snapshot.api import ImmutableSnapshot, SnapshotManager
from buildkitpy.sqlitedb import open_db

# (status id, current, total, completed): e.g. ("sha256:ab…", 1024, 4096, False) while downloading
# and ("extracting sha256:ab…", 0, 0, True) once a layer is unpacked.
ProgressFn = Callable[[str, int, int, bool], None]

MAX_CONCURRENT_DOWNLOADS = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chains (
    chain_id TEXT PRIMARY KEY,
    snapshot_id TEXT NOT NULL,
    created REAL NOT NULL
);
-- The blob each pulled layer snapshot was unpacked from: exporters reuse it instead of recompressing.
CREATE TABLE IF NOT EXISTS layer_blobs (
    snapshot_id TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    diff_id TEXT NOT NULL
);
-- What a tag resolved to when it was last resolved against its registry, per platform: the
-- ``local`` and ``default`` resolve modes use it without (or when failing to reach) the registry.
CREATE TABLE IF NOT EXISTS image_refs (
    name TEXT NOT NULL,
    platform TEXT NOT NULL,
    digest TEXT NOT NULL,
    manifest_digest TEXT NOT NULL,
    resolved REAL NOT NULL,
    PRIMARY KEY (name, platform)
);
"""


@dataclass
class PullResult:
    snapshot: ImmutableSnapshot | None  # the top layer's snapshot (None for an image without layers)
    chain_ids: list[str]
    fetched: list[str] = field(default_factory=list)  # blob digests downloaded by this pull
    unpacked: list[str] = field(default_factory=list)  # chain IDs unpacked by this pull


class ChainIndex:
    """ChainID → snapshot id, in SQLite (thread-safe, blocking)."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = open_db(path, _SCHEMA)

    def get(self, chain_id: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT snapshot_id FROM chains WHERE chain_id=?", (chain_id,)).fetchone()
        return row[0] if row else None

    def put(self, chain_id: str, snapshot_id: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO chains (chain_id, snapshot_id, created) VALUES (?,?,?)",
                             (chain_id, snapshot_id, time.time()))

    def forget(self, chain_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM chains WHERE chain_id=?", (chain_id,))

    def put_layer_blob(self, snapshot_id: str, desc: Descriptor, diff_id: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO layer_blobs (snapshot_id, digest, media_type, size, "
                             "diff_id) VALUES (?,?,?,?,?)",
                             (snapshot_id, desc.digest, desc.media_type, desc.size, diff_id))

    def layer_blob(self, snapshot_id: str) -> tuple[str, str, int, str] | None:
        """(digest, media type, size, diff_id) of the blob a pulled layer snapshot came from."""
        with self._lock:
            row = self._db.execute("SELECT digest, media_type, size, diff_id FROM layer_blobs "
                                   "WHERE snapshot_id=?", (snapshot_id,)).fetchone()
        return (row[0], row[1], int(row[2]), row[3]) if row else None

    def put_image_ref(self, name: str, platform: str, digest: str, manifest_digest: str) -> None:
        """Record that ``name`` (``host/repo:tag``) resolved to ``digest`` for ``platform``.

        Nothing is written when the record is there already and is the newest of ``name``'s: a
        newer time would change no answer of :meth:`image_ref`, and every build of ``FROM
        busybox`` made a commit, with its sync to the disk, for it."""
        with self._lock:
            newest = self._db.execute(
                "SELECT digest, manifest_digest FROM image_refs AS r WHERE name=? AND platform=? AND NOT "
                "EXISTS (SELECT 1 FROM image_refs WHERE name=r.name AND platform<>r.platform AND "
                "resolved >= r.resolved)", (name, platform)).fetchone()
            if newest == (digest, manifest_digest):
                return
            self._db.execute("INSERT OR REPLACE INTO image_refs (name, platform, digest, manifest_digest, "
                             "resolved) VALUES (?,?,?,?,?)",
                             (name, platform, digest, manifest_digest, time.time()))

    def forget_image_ref(self, name: str) -> None:
        """Drop every record of ``name`` (an image removed from the Engine API's store)."""
        with self._lock:
            self._db.execute("DELETE FROM image_refs WHERE name=?", (name,))

    def image_ref(self, name: str, platform: str) -> tuple[str, str] | None:
        """(digest, manifest digest) ``name`` last resolved to for ``platform``, or was last given
        to by the image exporter (recorded for every platform as ``""``), whichever is newer."""
        with self._lock:
            row = self._db.execute("SELECT digest, manifest_digest FROM image_refs WHERE name=? AND "
                                   "platform IN (?, '') ORDER BY resolved DESC LIMIT 1",
                                   (name, platform)).fetchone()
        return (row[0], row[1]) if row else None

    def image_ref_digests(self, *, named: bool) -> set[str]:
        """The digests recorded tags point at: ``named=True`` for the image exporter's names
        (platform ``""``), ``False`` for tags resolved against registries."""
        with self._lock:
            rows = self._db.execute("SELECT digest, manifest_digest FROM image_refs WHERE "
                                    + ("platform=''" if named else "platform!=''")).fetchall()
        return {d for row in rows for d in row}

    def layer_blob_records(self) -> list[tuple[str, str]]:
        """(snapshot id, blob digest) of every pulled layer snapshot."""
        with self._lock:
            return [(r[0], r[1]) for r in self._db.execute("SELECT snapshot_id, digest FROM layer_blobs")]

    def forget_snapshots(self, snapshot_ids: set[str]) -> int:
        """Drop the chain and layer-blob records of snapshots that no longer exist."""
        if not snapshot_ids:
            return 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            n = 0
            for sid in snapshot_ids:
                n += self._db.execute("DELETE FROM chains WHERE snapshot_id=?", (sid,)).rowcount
                self._db.execute("DELETE FROM layer_blobs WHERE snapshot_id=?", (sid,))
            self._db.execute("COMMIT")
        return n

    def snapshot_ids(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT snapshot_id FROM chains")}

    def close(self) -> None:
        with self._lock:
            self._db.close()


async def _owned(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn`` in a thread shielded from cancellation, so a snapshot handle it returns is never
    dropped on the floor; the cancellation arrives at the caller's next checkpoint."""
    with anyio.CancelScope(shield=True):
        return await anyio.to_thread.run_sync(fn, *args)


def _raise_single(group: BaseExceptionGroup) -> None:
    """Re-raise the one real error of a task group (not the cancellations it caused)."""
    cancelled = anyio.get_cancelled_exc_class()
    _, rest = group.split(cancelled)
    leaves = leaf_errors(rest) if rest is not None else []
    if len(leaves) == 1:
        raise leaves[0] from None


class _InFlight:
    def __init__(self) -> None:
        self.done = anyio.Event()
        self.error: BaseException | None = None


class ImagePuller:
    """One per worker: shares in-flight downloads and unpacks between concurrent pulls."""

    def __init__(self, root: Path, store: ContentStore, snapshots: SnapshotManager) -> None:
        self.store = store
        self.snapshots = snapshots
        self.chains = ChainIndex(Path(root) / "image" / "chains.db")
        self._downloads: dict[str, _InFlight] = {}
        self._unpack_locks: dict[str, anyio.Lock] = {}
        self._download_slots = anyio.Semaphore(MAX_CONCURRENT_DOWNLOADS)

    def lookup_chain(self, chain_id: str) -> ImmutableSnapshot | None:
        """A handle on the snapshot recorded for ``chain_id`` (blocking); forgets stale records."""
        snapshot_id = self.chains.get(chain_id)
        if snapshot_id is None:
            return None
        try:
            return self.snapshots.get(snapshot_id)
        except KeyError:
            self.chains.forget(chain_id)
            return None

    async def pull(self, client: RegistryClient, image: ResolvedImage,
                   progress: ProgressFn | None = None) -> PullResult:
        chain_ids = image.chain_ids()
        result = PullResult(None, chain_ids)
        if not chain_ids:
            return result
        # The deepest layer already unpacked: everything below it exists too.
        start, parent = len(chain_ids), None
        while start > 0:
            parent = await _owned(self.lookup_chain, chain_ids[start - 1])
            if parent is not None:
                break
            start -= 1
        if start == len(chain_ids):
            result.snapshot = parent
            return result
        for desc in image.layers[start:]:
            try:
                mediatypes.layer_compression(desc.media_type)
            except ValueError as exc:
                if parent is not None:
                    await anyio.to_thread.run_sync(parent.release)
                raise InvalidArgument(f"{image.ref}: layer {desc.digest}: {exc}") from None
        try:
            to_fetch: list[Descriptor] = []
            for desc in image.layers[start:]:
                if desc.digest in self._downloads:
                    continue  # another pull is fetching it; waited for below
                if await anyio.to_thread.run_sync(self.store.exists, desc.digest):
                    if progress:
                        progress(desc.digest, desc.size, desc.size, True)
                    continue
                if desc.digest not in self._downloads:
                    self._downloads[desc.digest] = _InFlight()  # registered before any wait
                    to_fetch.append(desc)
            async with anyio.create_task_group() as tg:
                for desc in to_fetch:
                    tg.start_soon(self._fetch_registered, client, image.ref, desc, progress, result)
                mine = {desc.digest for desc in to_fetch}
                for i in range(start, len(chain_ids)):
                    await self._wait_blob(image.layers[i].digest, mine)
                    parent = await self._unpack(image, i, parent, progress, result)
        except BaseException as exc:
            if parent is not None:
                await anyio.to_thread.run_sync(parent.release)
            if isinstance(exc, BaseExceptionGroup):
                _raise_single(exc)
            raise
        result.snapshot = parent
        return result

    # ----------------------------------------------------------------- downloads

    async def _fetch_registered(self, client: RegistryClient, ref: Reference, desc: Descriptor,
                                progress: ProgressFn | None, result: PullResult) -> None:
        """Fetch a blob whose in-flight entry this pull registered; waiters learn the outcome."""
        flight = self._downloads[desc.digest]
        try:
            async with self._download_slots:
                await self._download(client, ref, desc, progress)
            result.fetched.append(desc.digest)
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            del self._downloads[desc.digest]
            flight.done.set()

    async def _wait_blob(self, digest: str, mine: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        while True:
            flight = self._downloads.get(digest)
            if flight is None:
                if not await anyio.to_thread.run_sync(self.store.exists, digest):
                    raise RuntimeError(f"blob {digest} was not downloaded")  # its fetch failed
                return
            await flight.done.wait()
            if flight.error is not None and digest in mine:
                await anyio.sleep_forever()  # our own fetch failed: the task group reports it
            if flight.error is not None and not isinstance(flight.error, anyio.get_cancelled_exc_class()):
                raise InvalidArgument(f"downloading {digest} failed: {flight.error}")

    async def _download(self, client: RegistryClient, ref: Reference, desc: Descriptor,
                        progress: ProgressFn | None) -> None:
        ingest = self.store.ingest(desc.digest, desc.size)
        writer = await anyio.to_thread.run_sync(ingest.__enter__)
        try:
            if writer is not None:
                last = [0.0]

                def report(done: int) -> None:
                    now = time.monotonic()
                    if progress and (now - last[0] > 0.1 or done == desc.size):
                        last[0] = now
                        progress(desc.digest, done, desc.size, False)

                if progress:
                    progress(desc.digest, 0, desc.size, False)
                await client.fetch_blob(ref, desc, writer.write, report)
                await anyio.to_thread.run_sync(writer.commit, {"buildkitpy.distribution.source":
                                                               f"{ref.domain}/{ref.repository}"})
        except BaseException as exc:
            # Shielded: a cancelled download (a sibling layer failed) must still end its ingest, or
            # the next writer of this digest waits on it forever.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(ingest.__exit__, type(exc), exc, exc.__traceback__)
            raise
        await anyio.to_thread.run_sync(ingest.__exit__, None, None, None)
        if progress:
            progress(desc.digest, desc.size, desc.size, True)

    # ----------------------------------------------------------------- unpacking

    async def _unpack(self, image: ResolvedImage, index: int, parent: ImmutableSnapshot | None,
                      progress: ProgressFn | None, result: PullResult) -> ImmutableSnapshot:
        """The snapshot for layer ``index`` on ``parent`` (consumes the ``parent`` handle)."""
        chain_id = image.chain_ids()[index]
        lock = self._unpack_locks.setdefault(chain_id, anyio.Lock())
        try:
            async with lock:
                existing = await _owned(self.lookup_chain, chain_id)
                if existing is not None:
                    return existing
                desc = image.layers[index]
                status = f"extracting {desc.digest}"
                if progress:
                    progress(status, 0, 0, False)
                snap = await _owned(
                    self._unpack_blocking, desc, image.diff_ids[index], chain_id, parent, str(image.ref))
                result.unpacked.append(chain_id)
                if progress:
                    progress(status, 0, 0, True)
                return snap
        finally:
            if parent is not None:
                await anyio.to_thread.run_sync(parent.release)
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._unpack_locks.pop(chain_id, None)

    def _unpack_blocking(self, desc: Descriptor, diff_id: str, chain_id: str,
                         parent: ImmutableSnapshot | None, ref: str) -> ImmutableSnapshot:
        compression = mediatypes.layer_compression(desc.media_type)
        mutable = self.snapshots.new_mutable(parent, f"pulled from {ref} (layer {desc.digest})")
        try:
            with mutable.mount() as root:
                apply_layer_blob(self.store.path(desc.digest), compression, root, diff_id)
            snap = mutable.commit()
        except BaseException:
            mutable.release()
            raise
        self.chains.put_layer_blob(snap.id, desc, diff_id)
        self.chains.put(chain_id, snap.id)
        return snap

    def close(self) -> None:
        self.chains.close()
