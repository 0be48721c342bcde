"""Disk usage and pruning (``buildctl du`` / ``buildctl prune``) over snapshots and cache records;
prune then collects the content store's garbage (``buildkitpy.image.gc``)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from buildkitpy.errors import InvalidArgument

log = logging.getLogger(__name__)


@dataclass
class Usage:
    """A disk-usage record (``UsageRecord`` on the wire)."""

    id: str
    size: int = 0
    mutable: bool = False
    in_use: bool = False
    usage_count: int = 0
    description: str = ""
    record_type: str = "regular"
    shared: bool = False
    parents: list[str] = field(default_factory=list)
    created_at: float = 0.0
    last_used_at: float = 0.0


def _records(worker, cache) -> list[Usage]:
    cached = cache.snapshot_ids()
    out = []
    for u in worker.snapshots.usage():
        # The cache's own handle on a snapshot does not make it "in use" (a running build's would,
        # but the snapshot manager counts handles without owners; prune never deletes held ones).
        in_use = u.in_use and (u.mutable or u.id not in cached)
        out.append(Usage(id=u.id, size=u.size, mutable=u.mutable, in_use=in_use,
                         usage_count=1, description=u.description,
                         parents=[u.parent] if u.parent else [], created_at=u.created,
                         last_used_at=u.last_used))
    return out


def _matches(record: Usage, filters: list[str]) -> bool:
    for flt in filters:
        key, op, value = _parse_filter(flt)
        actual = {"id": record.id, "type": record.record_type, "description": record.description,
                  "inuse": str(record.in_use).lower(), "mutable": str(record.mutable).lower()}.get(key)
        if actual is None:
            raise InvalidArgument(f"unsupported filter key {key!r} in {flt!r}")
        ok = {"==": actual == value, "!=": actual != value, "~=": value in actual}[op]
        if not ok:
            return False
    return True


def _parse_filter(flt: str) -> tuple[str, str, str]:
    for op in ("==", "!=", "~="):
        if op in flt:
            key, value = flt.split(op, 1)
            return key.strip(), op, value.strip()
    raise InvalidArgument(f"invalid filter {flt!r} (want key==value, key!=value or key~=value)")


def disk_usage(worker, cache, filters: list[str]) -> list[Usage]:
    return [r for r in _records(worker, cache) if _matches(r, filters)]


def prune(worker, cache, *, all: bool, keep_duration: float, filters: list[str],
          busy: bool = True) -> list[Usage]:
    """Drop cache records for snapshots no build is using (older than ``keep_duration``, matching
    ``filters``), then delete every snapshot nothing needs any more, then the records and content
    blobs only those snapshots needed (blobs only when no build is running: ``busy`` false).
    Returns the snapshots removed."""
    before = {r.id: r for r in _records(worker, cache)}
    cutoff = time.time() - keep_duration if keep_duration > 0 else None
    for record in before.values():
        if record.in_use or not _matches(record, filters):
            continue
        if cutoff is not None and record.last_used_at > cutoff:
            continue
        cache.forget_snapshot(record.id)
    removed = worker.snapshots.prune(set())
    gc = collect_content(worker, busy=busy)
    if gc is not None and gc.deleted:
        log.info("prune: deleted %d unreferenced content blobs (%d bytes)", len(gc.deleted), gc.freed)
    return [before[i] for i in removed if i in before]


def collect_content(worker, *, busy: bool):
    """Content-store garbage collection for workers that have a content store (``root``)."""
    if getattr(worker, "root", None) is None or not hasattr(worker.snapshots, "usage"):
        return None
    from buildkitpy.image.gc import collect

    return collect(worker, busy=busy)
