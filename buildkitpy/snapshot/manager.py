"""The snapshot manager: overlayfs layer chains with SQLite metadata, or full copies as a fallback.

On disk, under ``<root>``::

    snapshots/metadata.db      one row per snapshot (WAL)
    snapshots/<id>/fs          overlay mode: the snapshot's own layer (an overlay upper dir)
                               copy mode: the snapshot's full tree
    snapshots/<id>/work        overlay workdir while the snapshot is mutable
    snapshots/<id>/diff        copy mode: its own layer, computed when a merge/diff needs it
    snapshots/<id>/shared.json inodes of its layer hard-linked from older layers (``record_shared``)
    mounts/<id>[.rw]           shared, reference-counted mount points

Every snapshot records ``layers``: the ids of the snapshots whose own layers make up its tree,
lowest first. A merge or a diff of a child against its ancestor is just a new list over existing
layers, so neither copies data in overlay mode.

Layers may share inodes: a copy into a layer made from scratch hard-links the regular files of a
single-layer source whose metadata it keeps (``solver.ops.fscopy``), which is safe because no
layer directory is written after its commit (writes go to a new overlay upper; the local source
syncs into a new snapshot on top of the previous one and replaces entries by unlink + create). What
must not happen is one inode at two paths of one tree, which the tree's readers (a container's
``stat``, tar writers, copies) would take for a hard link: every such layer records its shared
inodes, and ``merge`` stacks, instead of a layer that shares an inode with another layer of the
merge, a private copy of it. Chains cannot meet the case: only a layer without lowers receives
links, and layers made on top of others are overlay uppers (copy-up makes new inodes).

Crash safety: data is created before its row and a row is deleted before its data, so a row never
points at missing data; a restart removes rows of mutable snapshots (no process can still hold
them), rows whose data vanished, and directories without a row. The database is written without a
sync per transaction (WAL, ``synchronous=NORMAL``, as the build cache's): a power cut may lose its
last transactions, which those same checks repair, while each sync cost 3-25 ms here under the lock
every build's snapshot calls take (and the snapshots' files are not synced either).
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from buildkitpy.snapshot import layer as layerops
from buildkitpy.snapshot.api import LinkLayer, LinkSource
from buildkitpy.snapshot.fs import copy_tree, disk_usage, remove_tree
from buildkitpy.snapshot.mount import (
    OVERLAYFS_SUPER_MAGIC,
    MountError,
    OverlayStack,
    fs_magic,
    mount_overlay,
    mounted_under,
    sys_umount,
)

OVERLAY = "overlay"
COPY = "copy"
# Usage stats (last use, handle count) are written at most this often, in one transaction: they
# only order the GC, so a crash may lose the last second of them, while a write (an fsync) per
# handle taken made every cache hit of a big graph wait on the disk.
USAGE_FLUSH_SECONDS = 1.0
SHARED_FILE = "shared.json"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id TEXT PRIMARY KEY,
    parent TEXT,
    kind TEXT NOT NULL CHECK (kind IN ('active', 'committed')),
    layers TEXT NOT NULL,
    has_data INTEGER NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    last_used REAL NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    computed_diff INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class SnapshotInUseError(RuntimeError):
    """The snapshot is referenced (handles, mounts or other snapshots built on it)."""


@dataclass(frozen=True)
class SnapshotUsage:
    """One snapshot's disk usage record (for Control.DiskUsage)."""

    id: str
    parent: str | None
    mutable: bool
    in_use: bool
    size: int
    description: str
    created: float
    last_used: float
    dependencies: tuple[str, ...] = ()  # the snapshots it is built on (its parent, merged layers)
    usage_count: int = 0  # handles taken on it (cache hits included)


@dataclass(frozen=True)
class _Record:
    id: str
    parent: str | None
    kind: str
    layers: list[str]
    has_data: bool
    description: str
    created: float
    last_used: float
    size: int
    computed_diff: bool = False  # its own layer came from diff(): may hold whiteouts at any depth
    # the snapshots it needs (its layers and parent), sorted: made once (every GC pass lists them)
    needs: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        deps = set(self.layers)
        if self.parent:
            deps.add(self.parent)
        deps.discard(self.id)
        object.__setattr__(self, "needs", tuple(sorted(deps)))

    def dependencies(self) -> set[str]:
        return set(self.needs)


@dataclass
class _ActiveMount:
    path: Path
    count: int
    stack: OverlayStack | None  # None: the path is a plain directory, nothing to unmount
    # While the mount or unmount runs outside the manager's lock: an event set when it is done.
    busy: threading.Event | None = None


def _dedupe_keep_last(ids: list[str]) -> list[str]:
    """Drop earlier repeats of a layer: applying a layer again after others re-asserts all its
    entries and whiteouts, so only its last position matters (and overlay rejects repeats)."""
    seen: set[str] = set()
    out: list[str] = []
    for layer_id in reversed(ids):
        if layer_id not in seen:
            seen.add(layer_id)
            out.append(layer_id)
    return list(reversed(out))


class ImmutableRef:
    """A handle on a committed snapshot (implements ``api.ImmutableSnapshot``)."""

    def __init__(self, manager: OverlaySnapshotManager, record: _Record) -> None:
        self._manager = manager
        self.id = record.id
        self.parent_id = record.parent
        self._released = False

    def layers(self) -> list[Path]:
        return self._manager._layer_paths(self.id)

    def layer_dirs(self) -> list[str]:
        return self._manager._layer_dir_strs(self.id)

    @contextmanager
    def mount(self) -> Iterator[Path]:
        self._check()
        path = self._manager._acquire_mount(self.id, writable=False)
        try:
            yield path
        finally:
            self._manager._release_mount(self.id, writable=False)

    def size(self) -> int:
        return self._manager._record(self.id).size

    def clone(self) -> ImmutableRef:
        self._check()
        return self._manager.get(self.id)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._manager._unref(self.id)

    def _check(self) -> None:
        if self._released:
            raise RuntimeError(f"snapshot handle {self.id} was released")

    def __repr__(self) -> str:
        return f"ImmutableRef({self.id!r})"


class MutableRef:
    """A writable snapshot (implements ``api.MutableSnapshot``)."""

    def __init__(self, manager: OverlaySnapshotManager, snapshot_id: str) -> None:
        self._manager = manager
        self.id = snapshot_id
        self._done = False

    @contextmanager
    def mount(self) -> Iterator[Path]:
        self._check()
        path = self._manager._acquire_mount(self.id, writable=True)
        try:
            yield path
        finally:
            self._manager._release_mount(self.id, writable=True)

    def commit(self) -> ImmutableRef:
        self._check()
        ref = self._manager._commit(self.id)
        self._done = True
        return ref

    def release(self) -> None:
        if not self._done:
            self._done = True
            self._manager._discard(self.id)

    def _check(self) -> None:
        if self._done:
            raise RuntimeError(f"mutable snapshot {self.id} was already committed or released")

    def __repr__(self) -> str:
        return f"MutableRef({self.id!r})"


class OverlaySnapshotManager:
    """Implements ``api.SnapshotManager``.

    ``mode`` is ``"overlay"``, ``"copy"`` or ``"auto"`` (overlay when ``<root>`` can hold overlay
    upper dirs and mounting works, else copy). The mode of an existing root is kept.
    """

    def __init__(self, root: Path, *, mode: str = "auto") -> None:
        if mode not in ("auto", OVERLAY, COPY):
            raise ValueError(f"unknown snapshot mode {mode!r} (want auto, overlay or copy)")
        self.root = Path(root).absolute()
        self._snapshots_dir = self.root / "snapshots"
        self._mounts_dir = self.root / "mounts"
        self._empty_dir = self.root / "empty"
        for d in (self._snapshots_dir, self._mounts_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._empty_dir.mkdir(mode=0o755, exist_ok=True)
        self._lock = threading.RLock()
        self._layer_lock = threading.Lock()
        self._refs: dict[str, int] = {}
        self._usage: dict[str, tuple[float, int]] = {}  # id → (last use, new uses) not written yet
        self._usage_written = time.monotonic()
        self._mounts: dict[str, _ActiveMount] = {}
        self._shared: dict[str, dict[int, str]] = {}  # layer id → its SHARED_FILE, as read
        self._db = sqlite3.connect(self._snapshots_dir / "metadata.db", check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # see the module docstring
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(snapshots)")}
        if "usage_count" not in columns:  # roots made before usage counts were kept
            self._db.execute("ALTER TABLE snapshots ADD COLUMN usage_count INTEGER NOT NULL DEFAULT 0")
        # Every row, mirrored in memory (this manager is its database's only writer: the root is
        # locked to one daemon): a record is read for every handle taken and every layer chain,
        # and all of them for every GC pass.
        self._records: dict[str, _Record] = {
            r[0]: self._row_to_record(r)
            for r in self._db.execute(f"SELECT {self._COLUMNS} FROM snapshots").fetchall()}
        self._counts: dict[str, int] = dict(
            self._db.execute("SELECT id, usage_count FROM snapshots").fetchall())
        # The sum of every record's size, kept as records come, grow and go (the GC's check after
        # a build reads it instead of every record).
        self._bytes = sum(r.size for r in self._records.values())
        self.mode = self._choose_mode(mode)
        self._recover()

    # ----------------------------------------------------------------- public API

    def new_mutable(self, parent: ImmutableRef | None, description: str = "") -> MutableRef:
        sid = self._new_id()
        parent_rec = self._record(parent.id) if parent is not None else None
        if parent_rec is not None and parent_rec.kind != "committed":
            raise ValueError(f"parent snapshot {parent_rec.id} is not committed")
        data = self._data_dir(sid)
        data.mkdir()
        (data / "fs").mkdir(mode=0o755)
        if self.mode == OVERLAY:
            (data / "work").mkdir(mode=0o700)
        elif parent_rec is not None:
            copy_tree(self._data_dir(parent_rec.id) / "fs", data / "fs")
        layers = (parent_rec.layers if parent_rec else []) + [sid]
        now = time.time()
        self._insert(_Record(sid, parent_rec.id if parent_rec else None, "active", layers, True,
                             description, now, now, 0))
        return MutableRef(self, sid)

    def get(self, snapshot_id: str) -> ImmutableRef:
        with self._lock:
            rec = self._record_or_none(snapshot_id)
            if rec is None or rec.kind != "committed":
                raise KeyError(f"no committed snapshot {snapshot_id!r}")
            self._refs[snapshot_id] = self._refs.get(snapshot_id, 0) + 1
            self._note_use(snapshot_id, 1)
            return ImmutableRef(self, rec)

    def merge(self, inputs: list[ImmutableRef], description: str = "") -> ImmutableRef:
        if not inputs:
            raise ValueError("merge needs at least one input")
        if len(inputs) == 1:
            return inputs[0].clone()
        layers = _dedupe_keep_last([lid for ref in inputs for lid in self._record(ref.id).layers])
        copies: list[str] = []
        try:
            return self._new_view(self._unshare(layers, copies), description)
        finally:
            for sid in copies:
                self._unref(sid)

    def diff(self, lower: ImmutableRef | None, upper: ImmutableRef, description: str = "") -> ImmutableRef:
        upper_rec = self._record(upper.id)
        if lower is None:
            return upper.clone()
        lower_rec = self._record(lower.id)
        if lower_rec.layers == upper_rec.layers:
            return self._new_view([], description)
        if upper_rec.layers[:len(lower_rec.layers)] == lower_rec.layers:
            return self._new_view(upper_rec.layers[len(lower_rec.layers):], description)
        return self._new_computed_diff(lower, upper, description)

    def link_source(self, snapshot: ImmutableRef) -> LinkSource | None:
        rec = self._record(snapshot.id)
        if self.mode != OVERLAY or rec.kind != "committed" or not rec.layers:
            return None
        return LinkSource(tuple(LinkLayer(lid, self._layer_dir(lid), self._shared_inodes(lid))
                                for lid in reversed(rec.layers)))

    def link_target(self, mutable: MutableRef) -> bool:
        rec = self._record(mutable.id)
        return self.mode == OVERLAY and rec.kind == "active" and rec.layers == [rec.id]

    def record_shared(self, mutable: MutableRef, shared: Mapping[int, str]) -> None:
        if not shared:
            return
        data = self._data_dir(mutable.id)
        tmp = data / (SHARED_FILE + ".tmp")
        tmp.write_text(json.dumps({str(ino): layer for ino, layer in shared.items()}))
        os.replace(tmp, data / SHARED_FILE)
        with self._lock:
            self._shared[mutable.id] = dict(shared)

    def walk_ids(self) -> Iterator[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM snapshots WHERE kind='committed' ORDER BY created").fetchall()
        yield from (r[0] for r in rows)

    def delete(self, snapshot_id: str) -> None:
        """Remove a committed snapshot; SnapshotInUseError if held, mounted or built upon."""
        with self._lock:
            rec = self._record(snapshot_id)
            if rec.kind != "committed":
                raise SnapshotInUseError(f"snapshot {snapshot_id} is mutable and owned by its handle")
            self._check_unused(rec, self._all_records())
            data = self._drop_record(snapshot_id)
        remove_tree(data)

    def prune(self, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Delete every committed snapshot not in ``keep``, not held and not needed by another
        snapshot (repeating until nothing more can go). Returns the removed ids."""
        removed: list[str] = []
        data: list[Path] = []
        with self._lock:
            records = {r.id: r for r in self._all_records()}
            progress = True
            while progress:
                progress = False
                needed = {dep for r in records.values() for dep in r.needs}
                for rec in list(records.values()):
                    if (rec.kind != "committed" or rec.id in keep or rec.id in needed
                            or self._refs.get(rec.id) or self._is_mounted(rec.id)):
                        continue
                    data.append(self._drop_record(rec.id))
                    del records[rec.id]
                    removed.append(rec.id)
                    progress = True
        for path in data:
            remove_tree(path)
        return removed

    def total_size(self) -> int:
        """The sum of every snapshot's size (what ``usage`` reports, added up), without listing them."""
        with self._lock:
            return self._bytes

    def usage(self) -> list[SnapshotUsage]:
        with self._lock:
            return [self._usage_of(r) for r in self._all_records()]

    def usage_of(self, snapshot_id: str) -> SnapshotUsage | None:
        """One snapshot's ``usage`` record (None if there is no such snapshot)."""
        with self._lock:
            rec = self._record_or_none(snapshot_id)
            return self._usage_of(rec) if rec is not None else None

    def _usage_of(self, r: _Record) -> SnapshotUsage:
        return SnapshotUsage(r.id, r.parent, r.kind == "active",
                             r.kind == "active" or bool(self._refs.get(r.id)) or self._is_mounted(r.id),
                             r.size, r.description, r.created, r.last_used,
                             r.needs,
                             self._counts.get(r.id, 0) + self._usage.get(r.id, (0.0, 0))[1])

    def close(self) -> None:
        """Unmount everything this manager mounted and close the database."""
        with self._lock:
            for key, active in list(self._mounts.items()):
                if active.stack is not None:
                    active.stack.unmount()
                    self._remove_mount_dir(active.path)
                del self._mounts[key]
            self._write_usage()
            self._db.close()

    # ----------------------------------------------------------------- metadata

    def _new_id(self) -> str:
        return secrets.token_hex(8)

    def _data_dir(self, snapshot_id: str) -> Path:
        return self._snapshots_dir / snapshot_id

    def _note_use(self, snapshot_id: str, uses: int) -> None:
        """Record a use now (under ``_lock``); the database gets it with the next batch."""
        self._usage[snapshot_id] = (time.time(), self._usage.get(snapshot_id, (0.0, 0))[1] + uses)
        if time.monotonic() - self._usage_written >= USAGE_FLUSH_SECONDS:
            self._write_usage()

    def _write_usage(self) -> None:
        with self._lock:
            pending, self._usage = self._usage, {}
            self._usage_written = time.monotonic()
            if not pending:
                return
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "UPDATE snapshots SET last_used=MAX(last_used, ?), usage_count=usage_count+? WHERE id=?",
                    [(last, uses, sid) for sid, (last, uses) in pending.items()])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            for sid, (last, uses) in pending.items():
                if (rec := self._records.get(sid)) is not None:
                    self._records[sid] = replace(rec, last_used=max(rec.last_used, last))
                    self._counts[sid] = self._counts.get(sid, 0) + uses

    @staticmethod
    def _row_to_record(row: tuple) -> _Record:
        sid, parent, kind, layers, has_data, desc, created, last_used, size, computed = row
        return _Record(sid, parent, kind, json.loads(layers), bool(has_data), desc, created, last_used, size,
                       bool(computed))

    def _with_pending_use(self, rec: _Record) -> _Record:
        pending = self._usage.get(rec.id)
        return rec if pending is None or pending[0] <= rec.last_used else replace(rec, last_used=pending[0])

    _COLUMNS = "id, parent, kind, layers, has_data, description, created, last_used, size, computed_diff"

    def _record_or_none(self, snapshot_id: str) -> _Record | None:
        with self._lock:
            rec = self._records.get(snapshot_id)
            return self._with_pending_use(rec) if rec is not None else None

    def _record(self, snapshot_id: str) -> _Record:
        rec = self._record_or_none(snapshot_id)
        if rec is None:
            raise KeyError(f"no snapshot {snapshot_id!r}")
        return rec

    def _all_records(self) -> list[_Record]:
        with self._lock:
            return [self._with_pending_use(r) for r in self._records.values()]

    def _insert(self, rec: _Record) -> None:
        with self._lock:
            self._db.execute(f"INSERT INTO snapshots ({self._COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                             (rec.id, rec.parent, rec.kind, json.dumps(rec.layers), int(rec.has_data),
                              rec.description, rec.created, rec.last_used, rec.size, int(rec.computed_diff)))
            self._records[rec.id] = rec
            self._bytes += rec.size
            self._counts[rec.id] = 0

    def _delete_record(self, snapshot_id: str) -> None:
        """Row first, then data: a crash in between leaves an orphan dir, never a dangling row."""
        remove_tree(self._drop_record(snapshot_id))

    def _drop_record(self, snapshot_id: str) -> Path:
        """The row and what is kept of it in memory, under the lock; the data dir, to remove after
        the lock is let go: removing a big tree under it held up every snapshot call of every build
        (the local source makes its snapshot on the event loop). Ids are never reused, and a crash
        before the removal leaves an orphan dir, which the next start removes."""
        self._db.execute("DELETE FROM snapshots WHERE id=?", (snapshot_id,))
        if (rec := self._records.pop(snapshot_id, None)) is not None:
            self._bytes -= rec.size
        self._counts.pop(snapshot_id, None)
        self._usage.pop(snapshot_id, None)
        self._shared.pop(snapshot_id, None)
        return self._data_dir(snapshot_id)

    def _check_unused(self, rec: _Record, records: list[_Record]) -> None:
        if self._refs.get(rec.id):
            raise SnapshotInUseError(f"snapshot {rec.id} has {self._refs[rec.id]} open handle(s)")
        if self._is_mounted(rec.id):
            raise SnapshotInUseError(f"snapshot {rec.id} is mounted")
        users = [r.id for r in records if rec.id in r.needs]
        if users:
            raise SnapshotInUseError(f"snapshot {rec.id} is needed by {', '.join(sorted(users))}")

    def _unref(self, snapshot_id: str) -> None:
        with self._lock:
            count = self._refs.get(snapshot_id, 0) - 1
            if count > 0:
                self._refs[snapshot_id] = count
            else:
                self._refs.pop(snapshot_id, None)

    # ----------------------------------------------------------------- mode and recovery

    def _choose_mode(self, requested: str) -> str:
        row = self._db.execute("SELECT value FROM settings WHERE key='mode'").fetchone()
        if row is not None:
            stored = row[0]
            if requested not in ("auto", stored):
                raise ValueError(
                    f"{self.root} holds {stored}-mode snapshots; cannot open it in {requested} mode")
            return stored
        mode = requested if requested != "auto" else (OVERLAY if self._overlay_works() else COPY)
        self._db.execute("INSERT INTO settings (key, value) VALUES ('mode', ?)", (mode,))
        return mode

    def _overlay_works(self) -> bool:
        """Whether an overlay with its upper dir under ``<root>`` mounts (not on overlayfs, have
        CAP_SYS_ADMIN, kernel has overlay)."""
        try:
            if fs_magic(self._snapshots_dir) == OVERLAYFS_SUPER_MAGIC:
                return False
        except OSError:
            return False
        probe = self._snapshots_dir / ".probe"
        remove_tree(probe)
        try:
            for name in ("l1", "l2", "upper", "work", "merged"):
                (probe / name).mkdir(parents=True)
            (probe / "l1" / "f").write_text("1")
            try:
                stack = mount_overlay(probe / "merged", [probe / "l1", probe / "l2"], upper=probe / "upper",
                                      work=probe / "work", base=self.root)
            except (MountError, OSError):
                return False
            try:
                ok = (probe / "merged" / "f").read_text() == "1"
                (probe / "merged" / "f").unlink()
                ok = ok and layerops.is_whiteout(os.lstat(probe / "upper" / "f"))
            finally:
                stack.unmount()
            return ok
        finally:
            remove_tree(probe)

    def _recover(self) -> None:
        for point in mounted_under(self._mounts_dir):
            sys_umount(point)
        for entry in self._mounts_dir.iterdir():
            remove_tree(entry)
        with self._lock:
            for rec in self._all_records():
                if rec.kind == "active":
                    self._delete_record(rec.id)
            # Rows whose data is gone, then rows built on removed rows, until stable.
            changed = True
            while changed:
                changed = False
                records = self._all_records()
                ids = {r.id for r in records}
                for rec in records:
                    missing_data = rec.has_data and not (self._data_dir(rec.id) / "fs").is_dir()
                    if missing_data or not rec.dependencies() <= ids:
                        self._delete_record(rec.id)
                        changed = True
            known = {r.id for r in self._all_records()}
            for entry in self._snapshots_dir.iterdir():
                if entry.name.startswith("metadata.db"):
                    continue
                if entry.name not in known:
                    remove_tree(entry)
                    continue
                remove_tree(entry / "work")
                remove_tree(entry / "diff.tmp")

    # ----------------------------------------------------------------- layers, views, diffs

    def _layer_dir(self, layer_id: str) -> Path:
        """The directory holding snapshot ``layer_id``'s own changes (whiteouts included)."""
        data = self._data_dir(layer_id)
        if self.mode == OVERLAY:
            return data / "fs"
        diff = data / "diff"
        with self._layer_lock:
            if not diff.is_dir():
                rec = self._record(layer_id)
                base = self._data_dir(rec.parent) / "fs" if rec.parent else None
                tmp = data / "diff.tmp"
                remove_tree(tmp)
                tmp.mkdir()
                layerops.diff_trees(base, data / "fs", tmp)
                os.rename(tmp, diff)
        return diff

    def _layer_paths(self, snapshot_id: str) -> list[Path]:
        rec = self._record(snapshot_id)
        if self.mode == COPY:
            return [self._data_dir(snapshot_id) / "fs"]
        return [self._layer_dir(lid) for lid in rec.layers]

    def _layer_dir_strs(self, snapshot_id: str) -> list[str]:
        """``_layer_paths`` as strings, in overlay mode without a Path per layer (a cached graph's
        500 steps have chains of ~20 layers each, and their Paths were most of noting them)."""
        if self.mode != OVERLAY:
            return [str(p) for p in self._layer_paths(snapshot_id)]
        rec = self._record(snapshot_id)
        base = str(self._snapshots_dir)
        return [f"{base}/{lid}/fs" for lid in rec.layers]

    def lower_layers(self, layer: Path) -> list[Path] | None:
        """The layers beneath ``layer`` in the chain it was created on (its own snapshot's
        ``layers`` minus itself): a layer's changes are relative to them even when a merge
        restacks it."""
        if self.mode != OVERLAY or layer.name != "fs":
            return None
        with self._lock:
            rec = self._record_or_none(layer.parent.name)
        if rec is None or rec.computed_diff or not rec.layers or rec.layers[-1] != rec.id:
            return None
        return [self._layer_dir(lid) for lid in rec.layers[:-1]]

    def _new_view(self, layers: list[str], description: str) -> ImmutableRef:
        """A committed snapshot made of existing layers (a merge, or a diff along one chain)."""
        sid = self._new_id()
        has_data = False
        size = 0
        if self.mode == COPY:
            data = self._data_dir(sid)
            (data / "fs").mkdir(parents=True, mode=0o755)
            layerops.materialize([self._layer_dir(lid) for lid in layers], data / "fs")
            has_data = True
            size = disk_usage(data / "fs")
        now = time.time()
        rec = _Record(sid, None, "committed", layers, has_data, description, now, now, size)
        with self._lock:
            self._insert(rec)
            self._refs[sid] = self._refs.get(sid, 0) + 1
        return ImmutableRef(self, rec)

    def _shared_inodes(self, layer_id: str) -> dict[int, str]:
        with self._lock:
            known = self._shared.get(layer_id)
        if known is not None:
            return known
        try:
            raw = json.loads((self._data_dir(layer_id) / SHARED_FILE).read_text())
        except FileNotFoundError:
            raw = {}
        shared = {int(ino): layer for ino, layer in raw.items()}
        with self._lock:
            self._shared[layer_id] = shared
        return shared

    def _unshare(self, layers: list[str], copies: list[str]) -> list[str]:
        """``layers`` with every layer that shares an inode with another of them (one that first
        held it, or an earlier layer sharing it too) replaced by a private copy of it (appended to
        ``copies``, each holding a reference until the caller's view needs it)."""
        if self.mode != OVERLAY:
            return layers
        shared = {lid: self._shared_inodes(lid) for lid in layers}
        if not any(shared.values()):
            return layers
        present = set(layers)
        held: set[int] = set()  # inodes shared into the layers kept so far
        out = []
        for lid in layers:
            inodes = shared[lid]
            if any(ino in held or (origin in present and origin != lid) for ino, origin in inodes.items()):
                lid = self._private_copy(lid)
                copies.append(lid)
            else:
                held.update(inodes)
            out.append(lid)
        return out

    def _private_copy(self, layer_id: str) -> str:
        """A new committed layer with the contents of ``layer_id``, a layer without lowers (only
        those receive links), in inodes of its own (``cp -a`` keeps only the links inside it)."""
        sid = self._new_id()
        data = self._data_dir(sid)
        data.mkdir()
        copy_tree(self._layer_dir(layer_id), data / "fs")
        now = time.time()
        with self._lock:
            self._insert(_Record(sid, None, "committed", [sid], True, f"private copy of {layer_id}", now,
                                 now, disk_usage(data / "fs")))
            self._refs[sid] = self._refs.get(sid, 0) + 1
        return sid

    def _new_computed_diff(self, lower: ImmutableRef, upper: ImmutableRef, description: str) -> ImmutableRef:
        sid = self._new_id()
        data = self._data_dir(sid)
        (data / "fs").mkdir(parents=True, mode=0o755)
        out = data / "fs" if self.mode == OVERLAY else data / "diff"
        out.mkdir(exist_ok=True, mode=0o755)
        with lower.mount() as lower_path, upper.mount() as upper_path:
            layerops.diff_trees(lower_path, upper_path, out)
        if self.mode == COPY:
            layerops.materialize([out], data / "fs")
        now = time.time()
        rec = _Record(sid, None, "committed", [sid], True, description, now, now, disk_usage(data),
                      computed_diff=True)
        with self._lock:
            self._insert(rec)
            self._refs[sid] = self._refs.get(sid, 0) + 1
        return ImmutableRef(self, rec)

    # ----------------------------------------------------------------- mutable lifecycle

    def _commit(self, snapshot_id: str) -> ImmutableRef:
        with self._lock:
            if self._is_mounted(snapshot_id):
                raise SnapshotInUseError(f"cannot commit {snapshot_id}: it is still mounted")
            rec = self._record(snapshot_id)
            if rec.kind != "active":
                raise RuntimeError(f"snapshot {snapshot_id} is already committed")
        data = self._data_dir(snapshot_id)
        size = disk_usage(data / "fs")
        with self._lock:
            now = time.time()
            self._db.execute("UPDATE snapshots SET kind='committed', size=?, last_used=? WHERE id=?",
                             (size, now, snapshot_id))
            rec = replace(self._records[snapshot_id], kind="committed", size=size, last_used=now)
            self._bytes += size - self._records[snapshot_id].size
            self._records[snapshot_id] = rec
            self._refs[snapshot_id] = self._refs.get(snapshot_id, 0) + 1
        remove_tree(data / "work")
        return ImmutableRef(self, rec)

    def _discard(self, snapshot_id: str) -> None:
        with self._lock:
            if self._is_mounted(snapshot_id):
                raise SnapshotInUseError(f"cannot release {snapshot_id}: it is still mounted")
            data = self._drop_record(snapshot_id)
        remove_tree(data)

    # ----------------------------------------------------------------- mounts

    def _is_mounted(self, snapshot_id: str) -> bool:
        return snapshot_id in self._mounts or f"{snapshot_id}.rw" in self._mounts

    def _acquire_mount(self, snapshot_id: str, *, writable: bool) -> Path:
        """The path of the snapshot's (shared, counted) mount. mount(2) and umount(2) run outside
        the manager's lock, which every build's snapshot calls take: an overlay unmount took ~4 ms
        and 16 concurrent builds queued behind each other's. The key stays taken meanwhile
        (``busy``), so a second user of the same mount waits for it and commit or prune still see
        it mounted."""
        key = f"{snapshot_id}.rw" if writable else snapshot_id
        while True:
            with self._lock:
                active = self._mounts.get(key)
                if active is None:
                    active, lowers, upper = self._plan_mount(snapshot_id, key, writable)
                    self._mounts[key] = active
                    self._note_use(snapshot_id, 0)
                    if active.busy is None:
                        return active.path
                    break
                if active.busy is None:
                    active.count += 1
                    return active.path
                busy = active.busy
            busy.wait()
        data = self._data_dir(snapshot_id)
        try:
            active.path.mkdir(exist_ok=True)
            stack = mount_overlay(active.path, lowers, upper=data / "fs" if upper else None,
                                  work=data / "work" if upper else None, base=self.root)
        except BaseException:
            with self._lock:
                del self._mounts[key]
            self._settle(active)
            raise
        active.stack = stack
        self._settle(active)
        return active.path

    def _plan_mount(self, snapshot_id: str, key: str,
                    writable: bool) -> tuple[_ActiveMount, list[Path], bool]:
        """Under the lock: the entry for a new mount, and for an overlay still to mount (``busy``)
        its lower dirs and whether it has an upper one."""
        rec = self._record(snapshot_id)
        data = self._data_dir(snapshot_id)
        if self.mode == COPY:
            return _ActiveMount(data / "fs", 1, None), [], False
        if writable:
            lowers = [self._layer_dir(lid) for lid in rec.layers if lid != snapshot_id]
            if not lowers:
                return _ActiveMount(data / "fs", 1, None), [], False
            return _ActiveMount(self._mounts_dir / key, 1, None, threading.Event()), lowers, True
        lowers = [self._layer_dir(lid) for lid in rec.layers]
        if not lowers:
            return _ActiveMount(self._empty_dir, 1, None), [], False
        if len(lowers) == 1 and rec.layers == [snapshot_id] and not rec.computed_diff:
            # A layer written from scratch has no whiteouts: its dir is the tree itself.
            return _ActiveMount(lowers[0], 1, None), [], False
        if len(lowers) == 1:  # hide whiteouts: overlay over an empty dir
            lowers = [self._empty_dir, lowers[0]]
        return _ActiveMount(self._mounts_dir / key, 1, None, threading.Event()), lowers, False

    def _settle(self, active: _ActiveMount) -> None:
        with self._lock:
            busy, active.busy = active.busy, None
        if busy is not None:
            busy.set()

    def _release_mount(self, snapshot_id: str, *, writable: bool) -> None:
        key = f"{snapshot_id}.rw" if writable else snapshot_id
        with self._lock:
            active = self._mounts.get(key)
            if active is None:
                return
            active.count -= 1
            if active.count > 0:
                return
            if active.stack is None:
                del self._mounts[key]
                return
            active.busy = threading.Event()
        try:
            active.stack.unmount()
            self._remove_mount_dir(active.path)
        finally:
            with self._lock:
                del self._mounts[key]
            self._settle(active)

    @staticmethod
    def _remove_mount_dir(path: Path) -> None:
        try:
            os.rmdir(path)
        except OSError:
            pass


class CopySnapshotManager(OverlaySnapshotManager):
    """The copy-based variant: every mutable snapshot is a full copy of its parent's tree."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, mode=COPY)
