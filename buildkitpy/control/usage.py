"""Disk usage and pruning (``buildctl du`` / ``buildctl prune``, ``docker buildx du/prune``, the
daemon's GC policies) over the build cache, with BuildKit's semantics (``cache/manager.go``).

The records are the snapshots (a snapshot's size counts its own layer plus the content-store blobs
kept for it: the registry blob it was unpacked from, the blobs it was exported as) and the
persistent cache mounts (type ``exec.cachemount``). A record is in use while a build holds it or
a record built on it; only records nothing uses or builds on can go, so prune works from the leaves
down, as BuildKit does. Filters use containerd's syntax (``buildkitpy.control.filters``).

Prune with ``max-used-space``, ``reserved-space`` or ``min-free-space`` deletes the least recently
used record first, one at a time, until the total is below the target; without them it deletes
everything matching. Blobs and cache mount directories are deleted only while no build runs
(``busy`` false); a later prune or GC pass collects them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from buildkitpy.control.filters import Filter, parse_all
from buildkitpy.errors import BuildkitpyError
from buildkitpy.snapshot.fs import remove_tree

if TYPE_CHECKING:
    from buildkitpy.image.layerblobs import BlobCache
    from buildkitpy.image.pull import ImagePuller

log = logging.getLogger(__name__)

TYPE_REGULAR = "regular"
TYPE_SOURCE_LOCAL = "source.local"
TYPE_GIT_CHECKOUT = "source.git.checkout"
TYPE_CACHE_MOUNT = "exec.cachemount"
TYPE_INTERNAL = "internal"
TYPE_FRONTEND = "frontend"

# Snapshot descriptions the ops write, and the BuildKit record type each stands for.
_TYPE_BY_DESCRIPTION = (("local source for ", TYPE_SOURCE_LOCAL), ("git snapshot for ", TYPE_GIT_CHECKOUT))


@dataclass
class Usage:
    """A disk-usage record (``UsageRecord`` on the wire)."""

    id: str
    size: int = 0
    mutable: bool = False
    in_use: bool = False
    usage_count: int = 0
    description: str = ""
    record_type: str = TYPE_REGULAR
    shared: bool = False
    parents: list[str] = field(default_factory=list)
    created_at: float = 0.0
    last_used_at: float = 0.0
    dependencies: tuple[str, ...] = ()  # every snapshot it is built on (parents of parents too)


@dataclass(frozen=True)
class PruneOptions:
    """One prune pass (a ``PruneRequest`` or a ``[[worker.oci.gcpolicy]]``)."""

    all: bool = False
    filters: tuple[str, ...] = ()
    keep_duration: float = 0.0  # seconds: keep records used more recently than this
    reserved_space: int = 0  # never prune below this many bytes
    max_used_space: int = 0  # prune down to this many bytes
    min_free_space: int = 0  # prune until the disk has this much free


class SnapshotStore(Protocol):
    def usage(self) -> list[Any]: ...  # buildkitpy.snapshot.manager.SnapshotUsage
    def delete(self, snapshot_id: str) -> None: ...


class CacheRecords(Protocol):
    def snapshot_ids(self) -> set[str]: ...
    def forget_snapshot(self, snapshot_id: str) -> None: ...


class UsageWorker(Protocol):
    root: Path

    # read-only: as a plain (mutable) member the protocol would demand exactly SnapshotStore
    # (invariance), and the worker's SnapshotManager is a SnapshotStore, not the protocol itself
    @property
    def snapshots(self) -> SnapshotStore: ...

    @property
    def image_puller(self) -> ImagePuller: ...

    @property
    def blob_cache(self) -> BlobCache: ...


# -- records ---------------------------------------------------------------------------------------

def _record_type(description: str) -> str:
    for prefix, kind in _TYPE_BY_DESCRIPTION:
        if description.startswith(prefix):
            return kind
    return TYPE_REGULAR


def _blob_sizes(worker: UsageWorker) -> dict[str, int]:
    """Snapshot id -> bytes of the content-store blobs kept for it (pulled and exported layers)."""
    store = worker.image_puller.store
    pairs = list(worker.image_puller.chains.layer_blob_records())
    pairs += [(key.split("/", 1)[0], digest) for key, digest in worker.blob_cache.entries()]
    sizes: dict[str, int] = {}
    counted: set[str] = set()
    for sid, digest in pairs:
        if digest in counted:
            continue
        try:
            size = store.info(digest).size
        except BuildkitpyError:
            continue
        counted.add(digest)
        sizes[sid] = sizes.get(sid, 0) + size
    return sizes


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total


def _cache_mount_records(root: Path | None) -> list[Usage]:
    if root is None or not root.is_dir():
        return []
    out = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        st = entry.stat()
        out.append(Usage(id=entry.name, size=_tree_size(entry), mutable=True, usage_count=1,
                         description=f"cached mount {entry.name}", record_type=TYPE_CACHE_MOUNT,
                         created_at=st.st_ctime, last_used_at=st.st_mtime))
    return out


def tracked_bytes(worker: UsageWorker) -> int | None:
    """At least the total size of the snapshot records (``records`` without cache mounts), read
    from running totals in constant time: every snapshot's size plus every blob in the content
    store (a record counts only the blobs kept for it). None when the worker keeps no such totals."""
    total_size = getattr(worker.snapshots, "total_size", None)
    if total_size is None or getattr(worker, "root", None) is None:
        return None
    return int(total_size()) + worker.image_puller.store.stored_bytes()


def cache_mount_bytes(root: Path | None) -> int:
    """The total size of the cache mount records (walks their trees)."""
    return sum(r.size for r in _cache_mount_records(root))


def records(worker: UsageWorker, cache: CacheRecords, cache_mounts: Path | None = None) -> list[Usage]:
    """Every record, in use or not, with BuildKit's in-use rule: held by a build, or under a record
    that is."""
    cached = cache.snapshot_ids()
    snaps = worker.snapshots.usage()
    blobs = _blob_sizes(worker) if hasattr(worker, "root") else {}
    out: dict[str, Usage] = {}
    held: set[str] = set()
    for u in snaps:
        # The cache's own handle on a snapshot does not put it in use (a build's would; the
        # snapshot manager counts handles without owners, so a cached snapshot held by a running
        # build shows as free here; deleting it then fails and is skipped).
        if u.in_use and (u.mutable or u.id not in cached):
            held.add(u.id)
        deps = tuple(getattr(u, "dependencies", ()) or ((u.parent,) if u.parent else ()))
        out[u.id] = Usage(
            id=u.id, size=u.size + blobs.get(u.id, 0), mutable=u.mutable,
            usage_count=max(1, getattr(u, "usage_count", 0)), description=u.description,
            record_type=_record_type(u.description),
            parents=[u.parent] if u.parent else list(deps), created_at=u.created,
            last_used_at=u.last_used, dependencies=deps)
    for sid in held:
        for dep in (sid, *out[sid].dependencies):
            if dep in out:
                out[dep].in_use = True
    return list(out.values()) + _cache_mount_records(cache_mounts)


def _adaptor(record: Usage):
    def field_of(path: list[str]) -> tuple[str, bool]:
        key = path[0] if path else ""
        if key == "id":
            return record.id, bool(record.id)
        if key == "parents":
            return ";".join(record.parents), bool(record.parents)
        if key == "description":
            return record.description, bool(record.description)
        if key == "type":
            return record.record_type, bool(record.record_type)
        if key in ("inuse", "mutable", "immutable", "shared", "private"):
            present = {"inuse": record.in_use, "mutable": record.mutable, "immutable": not record.mutable,
                       "shared": record.shared, "private": not record.shared}[key]
            return "", present
        return "", False  # unknown fields are absent, as in BuildKit

    return field_of


def _matches(flt: Filter, record: Usage) -> bool:
    return flt.match(_adaptor(record))


def disk_usage(worker: UsageWorker, cache: CacheRecords, filters: Sequence[str], *,
               age_limit: float = 0.0, cache_mounts: Path | None = None) -> list[Usage]:
    """The records matching ``filters``; with ``age_limit`` (seconds) only those not used within it."""
    flt = parse_all(list(filters))
    now = time.time()
    out = [r for r in records(worker, cache, cache_mounts) if _matches(flt, r)]
    if age_limit > 0:
        out = [r for r in out if not r.last_used_at or r.last_used_at <= now - age_limit]
    return sorted(out, key=lambda r: (r.created_at, r.id))


# -- prune -----------------------------------------------------------------------------------------

def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def has_size_limit(opts: PruneOptions) -> bool:
    return bool(opts.max_used_space or opts.reserved_space or opts.min_free_space)


def keep_bytes(total: int, free: int, opts: PruneOptions) -> int:
    """How many bytes of cache a pass may leave (0: no size limit), as BuildKit computes it.

    ``total - keep_bytes(total, ...)`` never decreases as ``total`` grows, so a pass with a size
    limit that has nothing to remove at an upper bound of the total has nothing to remove at the
    total either (``control.gc`` relies on it)."""
    if not has_size_limit(opts):
        return 0
    keep = opts.max_used_space
    excess = opts.min_free_space - free
    if opts.min_free_space and excess > 0:
        keep = total - excess if keep == 0 else min(keep, total - excess)
    elif opts.min_free_space and keep == 0:
        keep = total  # enough free space: nothing to do
    return max(keep, opts.reserved_space)


Quiesce = Callable[[], AbstractContextManager[bool]]
"""Entered around blob deletion: yields whether no build runs, and no build starts until it is left
(``JobRegistry.quiesced``)."""


def prune(worker: UsageWorker, cache: CacheRecords, options: PruneOptions = PruneOptions(), *,
          busy: bool = True, cache_mounts: Path | None = None, quiesce: Quiesce | None = None) -> list[Usage]:
    """One prune pass, then content-store collection. Returns the records removed."""
    return prune_passes(worker, cache, [options], busy=busy, cache_mounts=cache_mounts, quiesce=quiesce)


def prune_passes(worker: UsageWorker, cache: CacheRecords, passes: Iterable[PruneOptions], *,
                 busy: bool, cache_mounts: Path | None = None, quiesce: Quiesce | None = None) -> list[Usage]:
    """Every pass in order (BuildKit applies all GC policies this way), then content collection.

    ``busy`` (builds were running when the pass began) spares cache mounts; blobs are deleted only
    inside ``quiesce`` when it says no build runs (without it: only when not ``busy``)."""
    return run_passes(worker, cache, passes, busy=busy, cache_mounts=cache_mounts, quiesce=quiesce)[0]


def run_passes(worker: UsageWorker, cache: CacheRecords, passes: Iterable[PruneOptions], *,
               busy: bool, cache_mounts: Path | None = None,
               quiesce: Quiesce | None = None) -> tuple[list[Usage], list[Usage]]:
    """``prune_passes``, returning the records removed and the records left."""
    removed: list[Usage] = []
    # The records are read once for all the passes (BuildKit's defaults are four): what a pass
    # removes is gone for the next, nothing else changes in between. Reading them (every snapshot's
    # row, blob sizes, cache mount trees) was most of a pass, and a pass follows every build.
    live: list[Usage] | None = None
    for opts in passes:
        if live is None:
            live = records(worker, cache, cache_mounts)
        gone = _prune_once(worker, cache, opts, live, busy=busy, cache_mounts=cache_mounts)
        if gone:
            ids = {r.id for r in gone}
            live = [r for r in live if r.id not in ids]
        removed += gone
    gc = collect_content(worker, quiesce=quiesce or (lambda: nullcontext(not busy)))
    if gc is not None and gc.deleted:
        log.info("prune: deleted %d unreferenced content blobs (%d bytes)", len(gc.deleted), gc.freed)
    return removed, live or []


def _prune_once(worker: UsageWorker, cache: CacheRecords, opts: PruneOptions, current: list[Usage], *,
                busy: bool, cache_mounts: Path | None) -> list[Usage]:
    flt = parse_all(list(opts.filters))
    now = time.time()
    live = {r.id: r for r in current}
    total = sum(r.size for r in live.values() if not r.shared)
    limit = keep_bytes(total, free_bytes(worker.root) if opts.min_free_space else 0, opts)
    cutoff = now - opts.keep_duration if opts.keep_duration > 0 else None
    removed: list[Usage] = []
    failed: set[str] = set()
    while True:
        # (BuildKit stops only below the limit, so "enough free space" still deletes one record)
        if limit and total <= limit:
            break
        needed = {dep for r in live.values() for dep in r.dependencies}
        candidates = []
        for r in live.values():
            if r.in_use or r.id in needed or r.id in failed:
                continue
            if cutoff is not None and r.last_used_at and r.last_used_at > cutoff:
                continue
            if r.record_type == TYPE_CACHE_MOUNT and busy:
                continue  # a running build may be using the directory
            if selected(r, opts, flt):
                candidates.append(r)
        if not candidates:
            break
        if limit:  # GC mode: the least recently (and least often) used first, one at a time
            candidates = [min(candidates, key=lambda r: (r.last_used_at, r.usage_count))]
        for r in candidates:
            if _remove(worker, cache, r, cache_mounts):
                removed.append(replace(r, in_use=False))
                total -= r.size
                del live[r.id]
            else:
                failed.add(r.id)
    return removed


def selected(record: Usage, opts: PruneOptions, flt: Filter) -> bool:
    """Whether a pass of ``opts`` (filters ``flt``) may remove ``record`` once it is old enough and
    nothing uses it."""
    if not opts.all and (record.record_type in (TYPE_INTERNAL, TYPE_FRONTEND) or record.shared):
        return False
    return _matches(flt, record)


def _remove(worker: UsageWorker, cache: CacheRecords, record: Usage, cache_mounts: Path | None) -> bool:
    if record.record_type == TYPE_CACHE_MOUNT:
        if cache_mounts is None:
            return False
        remove_tree(cache_mounts / record.id)
        return True
    cache.forget_snapshot(record.id)
    try:
        worker.snapshots.delete(record.id)
    except (KeyError, RuntimeError) as exc:  # gone meanwhile, or a build took it (SnapshotInUseError)
        log.debug("prune: keeping %s: %s", record.id, exc)
        return False
    return True


def collect_content(worker: UsageWorker, *, quiesce: Quiesce):
    """Content-store garbage collection for workers that have a content store (``root``)."""
    if getattr(worker, "root", None) is None or not hasattr(worker.snapshots, "usage"):
        return None
    from buildkitpy.image.gc import collect

    puller = worker.image_puller
    with quiesce() as idle:  # the live set is read and blobs deleted with no build starting
        live = {u.id for u in worker.snapshots.usage()}
        return collect(puller.store, puller.chains, worker.blob_cache, live,
                       content_roots=getattr(worker, "content_roots", ()), busy=not idle)
