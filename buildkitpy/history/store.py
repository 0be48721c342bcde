"""The build history store: BuildKit's history queue, kept in SQLite.

Active builds live in memory (``STARTED`` events); a completed record is written to
``<root>/history/records.db`` (the serialized ``BuildHistoryRecord``) and its blobs to a content store
of its own under ``<root>/history/content``. Listeners get the active records, then the stored ones
(filtered, limited), then live events unless they asked for ``EarlyExit``.

Limits (``[history]`` in buildkitd.toml, BuildKit's defaults): a record is removed once it is both
beyond the newest ``max_entries`` and older than ``max_age``; pinned records are never removed. A
record someone is listening to by ref is only marked deleted and removed when the last such listener
ends, as BuildKit does.

After a build completes its trace is still being collected (client spans arrive after the build):
``acquire_finalizer`` gives the build a trigger/done pair; ``UpdateBuildHistory{Finalize}`` pulls the
trigger and waits until the record is final.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from buildkitpy.api import control_pb2
from buildkitpy.content.store import ContentStore
from buildkitpy.errors import InvalidArgument, NotFound
from buildkitpy.history.filters import filter_events
from buildkitpy.sqlitedb import open_db

log = logging.getLogger(__name__)

STARTED = control_pb2.BuildHistoryEventType.STARTED
COMPLETE = control_pb2.BuildHistoryEventType.COMPLETE
DELETED = control_pb2.BuildHistoryEventType.DELETED

Record = control_pb2.BuildHistoryRecord
Event = control_pb2.BuildHistoryEvent

DEFAULT_MAX_AGE = 48 * 3600
DEFAULT_MAX_ENTRIES = 50
GC_INTERVAL = 120.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    ref TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    completed_at REAL NOT NULL,
    pinned INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS records_by_age ON records (pinned, completed_at);
"""


@dataclass
class HistoryLimits:
    max_age: float = DEFAULT_MAX_AGE  # seconds
    max_entries: int = DEFAULT_MAX_ENTRIES


@dataclass
class _Finalizer:
    trigger: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)


def record_descriptors(rec: control_pb2.BuildHistoryRecord) -> list[control_pb2.Descriptor]:
    """Every blob a record points at (logs, trace, error, result descriptors, attestations)."""
    out = [d for d in (rec.logs, rec.trace, rec.externalError) if d.digest]
    infos = [rec.Result] if rec.HasField("Result") else []
    infos += list(rec.Results.values())
    for info in infos:
        if info.ResultDeprecated.digest:
            out.append(info.ResultDeprecated)
        out += [d for d in info.Results.values() if d.digest]
        out += [d for d in info.Attestations if d.digest]
    return out


class HistoryStore:
    """Async API, used from the daemon's event loop. Blob I/O is blocking (``blobs`` is a
    ``ContentStore``): call it through a worker thread."""

    def __init__(self, root: Path, limits: HistoryLimits | None = None) -> None:
        self.root = Path(root) / "history"
        self.root.mkdir(parents=True, exist_ok=True)
        self.limits = limits or HistoryLimits()
        # Logs, provenance and traces: no fsync per blob, each checked when first read instead
        # (ContentStore's durable=False). After a client's large download (a tar export), the
        # first fsync on the disk waited for the download's pages: ~0.1 s at the end of a build.
        self.blobs = ContentStore(self.root, durable=False)
        self._db_lock = threading.Lock()
        # Records are written on the event loop: no fsync per commit (open_db's durable=False).
        self._db = open_db(self.root / "records.db", _SCHEMA, durable=False)
        self._active: dict[str, control_pb2.BuildHistoryRecord] = {}
        self._subscribers: set[asyncio.Queue] = set()
        self._listening: dict[str, int] = {}
        self._deleted: set[str] = set()
        self._finalizers: dict[str, _Finalizer] = {}
        self._gc_task: asyncio.Task | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start_gc(self) -> None:
        """Apply the limits now and every couple of minutes (needs a running loop)."""
        if self._gc_task is None:
            self._gc_task = asyncio.get_running_loop().create_task(self._gc_loop())

    async def _gc_loop(self) -> None:
        while True:
            try:
                await self.gc()
            except Exception:  # noqa: BLE001 - the loop must survive one bad pass
                log.exception("build history cleanup failed")
            await asyncio.sleep(GC_INTERVAL)

    def close(self) -> None:
        if self._gc_task is not None:
            self._gc_task.cancel()
        for q in list(self._subscribers):
            q.put_nowait(None)
        with self._db_lock:
            self._db.close()
        self.blobs.close()

    # -- reading ---------------------------------------------------------------------------------

    def get(self, ref: str) -> control_pb2.BuildHistoryRecord | None:
        """The stored (completed) record of ``ref``."""
        with self._db_lock:
            row = self._db.execute("SELECT data FROM records WHERE ref=?", (ref,)).fetchone()
        if row is None:
            return None
        return control_pb2.BuildHistoryRecord.FromString(row[0])

    def active(self, ref: str) -> control_pb2.BuildHistoryRecord | None:
        return self._active.get(ref)

    def completed(self) -> list[control_pb2.BuildHistoryRecord]:
        with self._db_lock:
            rows = self._db.execute("SELECT data FROM records").fetchall()
        return [control_pb2.BuildHistoryRecord.FromString(r[0]) for r in rows]

    def referenced_digests(self) -> set[str]:
        """Every blob digest a stored or active record points at (image-store GC must keep those it
        holds, e.g. exported manifests, or ``buildx history export`` of that record fails)."""
        out: set[str] = set()
        for rec in [*self.completed(), *self._active.values()]:
            out |= {d.digest for d in record_descriptors(rec)}
        return out

    # -- events ----------------------------------------------------------------------------------

    def _publish(self, ev: control_pb2.BuildHistoryEvent) -> None:
        for q in list(self._subscribers):
            q.put_nowait(ev)

    async def started(self, rec: control_pb2.BuildHistoryRecord) -> None:
        """``rec`` is the live record the build keeps filling in (listeners get copies)."""
        self._active[rec.Ref] = rec
        self._publish(control_pb2.BuildHistoryEvent(type=STARTED, record=rec))

    async def complete(self, rec: control_pb2.BuildHistoryRecord) -> None:
        copy = control_pb2.BuildHistoryRecord()
        copy.CopyFrom(rec)
        self._active.pop(rec.Ref, None)
        self._put(copy)
        self._publish(control_pb2.BuildHistoryEvent(type=COMPLETE, record=copy))
        await self.gc()

    async def update_ref(self, ref: str, change: Callable[[Record], None]) -> Record:
        rec = self.get(ref)
        if rec is None:
            raise NotFound(f"build record {ref} not found")
        change(rec)
        rec.Generation += 1
        if rec.Ref != ref:
            raise InvalidArgument("a build record's ref cannot change")
        self._put(rec)
        self._publish(control_pb2.BuildHistoryEvent(type=COMPLETE, record=rec))
        return rec

    def _put(self, rec: control_pb2.BuildHistoryRecord) -> None:
        completed = rec.CompletedAt.ToNanoseconds() / 1e9 if rec.HasField("CompletedAt") else time.time()
        with self._db_lock:
            self._db.execute("INSERT OR REPLACE INTO records (ref, data, completed_at, pinned) "
                             "VALUES (?,?,?,?)",
                             (rec.Ref, rec.SerializeToString(), completed, int(rec.pinned)))

    # -- deleting --------------------------------------------------------------------------------

    async def delete(self, ref: str) -> None:
        if self.get(ref) is None:
            raise NotFound(f"build record {ref} not found")
        await self.finalize(ref)
        self._delete(ref)

    def _delete(self, ref: str) -> bool:
        if self._listening.get(ref):
            self._deleted.add(ref)
            return False
        self._deleted.discard(ref)
        rec = self.get(ref)
        with self._db_lock:
            self._db.execute("DELETE FROM records WHERE ref=?", (ref,))
        self._publish(control_pb2.BuildHistoryEvent(type=DELETED,
                                                    record=control_pb2.BuildHistoryRecord(Ref=ref)))
        if rec is not None:
            self._drop_blobs(d.digest for d in record_descriptors(rec))
        return True

    def _drop_blobs(self, digests: Iterable[str]) -> None:
        """Remove blobs no remaining or active record points at (blobs outside the history store,
        e.g. exported image manifests, are not ours to remove)."""
        wanted = set(digests)
        if not wanted:
            return
        for rec in [*self.completed(), *self._active.values()]:
            wanted -= {d.digest for d in record_descriptors(rec)}
        for dgst in wanted:
            try:
                self.blobs.delete(dgst)
            except NotFound:
                pass
            except Exception:  # noqa: BLE001
                log.warning("cannot remove history blob %s", dgst, exc_info=True)

    async def gc(self) -> None:
        """Apply ``[history]`` limits: remove unpinned records beyond the newest ``max_entries``
        that are also older than ``max_age``."""
        # This runs after every build: through the index it reads only the records that go (and,
        # once some are old enough, counts the younger ones), not every record.
        cutoff = time.time() - self.limits.max_age
        with self._db_lock:
            if self._db.execute("SELECT 1 FROM records WHERE pinned=0 AND completed_at < ? LIMIT 1",
                                (cutoff,)).fetchone() is None:
                return
            young = self._db.execute("SELECT count(*) FROM records WHERE pinned=0 AND completed_at >= ?",
                                     (cutoff,)).fetchone()[0]
            # the old ones among the newest max_entries stay
            refs = [r[0] for r in self._db.execute(
                "SELECT ref FROM records WHERE pinned=0 AND completed_at < ? ORDER BY completed_at DESC "
                "LIMIT -1 OFFSET ?", (cutoff, max(0, self.limits.max_entries - young))).fetchall()]
        for ref in refs:
            self._delete(ref)

    # -- finalizing ------------------------------------------------------------------------------

    def acquire_finalizer(self, ref: str) -> tuple[asyncio.Event, Callable[[], None]]:
        """(trigger, done) for a completed build still collecting its trace."""
        fin = _Finalizer()
        self._finalizers[ref] = fin

        def done() -> None:
            fin.done.set()
            if self._finalizers.get(ref) is fin:
                del self._finalizers[ref]

        return fin.trigger, done

    def finalize_all(self) -> None:
        """Every completed build still collecting its trace stops waiting for late spans (at
        shutdown: none can come any more, and each waited up to ``recorder.TRACE_WAIT_SECONDS``)."""
        for fin in self._finalizers.values():
            fin.trigger.set()

    async def finalize(self, ref: str) -> None:
        fin = self._finalizers.get(ref)
        if fin is None:
            return
        fin.trigger.set()
        await fin.done.wait()

    # -- listening -------------------------------------------------------------------------------

    async def listen(self, req: control_pb2.BuildHistoryRequest) -> AsyncIterator[Event]:
        if req.Limit < 0:
            raise InvalidArgument(f"invalid limit {req.Limit}")
        queue: asyncio.Queue = asyncio.Queue()
        self._subscribers.add(queue)
        ref = req.Ref
        if ref:
            if ref in self._deleted:
                self._subscribers.discard(queue)
                raise NotFound(f"ref {ref} is deleted")
            self._listening[ref] = self._listening.get(ref, 0) + 1
        try:
            actives = [Event(type=STARTED, record=r) for r in list(self._active.values())
                       if (not ref or r.Ref == ref) and r.Ref not in self._deleted]
            for ev in actives:
                yield ev
            if not req.ActiveOnly:
                if ref:
                    rec = self.get(ref)
                    stored = [rec] if rec is not None else []
                else:
                    stored = self.completed()
                events = [control_pb2.BuildHistoryEvent(type=COMPLETE, record=r) for r in stored
                          if r.Ref not in self._deleted]
                for ev in filter_events(events, list(req.Filter), req.Limit):
                    yield ev
            if req.EarlyExit:
                return
            while True:
                ev = await queue.get()
                if ev is None:
                    return
                if ref and ev.record.Ref != ref:
                    continue
                yield ev
        finally:
            self._subscribers.discard(queue)
            if ref:
                self._listening[ref] -= 1
                if not self._listening[ref]:
                    del self._listening[ref]
                    if ref in self._deleted:
                        self._delete(ref)
