"""Automatic garbage collection: the worker's GC policies (``[[worker.oci.gcpolicy]]`` in
``buildkitd.toml``, or BuildKit's defaults) applied after every build and at startup.

BuildKit runs its policies at most once a minute after builds, so the cache can sit far above
``maxUsedSpace`` for a while (its issue #1962). Here every build is followed by a check (coalesced:
a build finishing while one runs schedules one more), and the check runs a full pass whenever a
pass could remove anything, so once it is done the cache is back under the ceiling, except for what
running builds hold. Prune requests and GC passes never overlap.

A full pass reads every record (every snapshot, the blobs kept for each, the cache mount trees)
and the whole content store, so running one after every build made a build's cost grow with the
daemon's state. The check instead costs the same whatever the state:

- a policy removes only records unused for its ``keepDuration``: each full pass notes, per policy,
  when the earliest record it left may be that old (at once if one already is: a build held it;
  records made later become old later), and until then the policy has nothing to remove;
- past that time, a policy without a size limit may remove something, so the check runs a pass.
  One with a size limit (``maxUsedSpace``, ``reservedSpace``, ``minFreeSpace``) removes nothing
  while the total is within the bytes it keeps (``usage.keep_bytes``): the check compares an upper
  bound of the total, the snapshot manager's running sum of snapshot sizes plus every blob in the
  content store (kept as blobs come and go; a record counts only its own blobs) plus the cache
  mounts' size (measured again only when a build has used a cache mount or one appeared). Over
  the limit by that bound, it runs the pass; so nothing is left above a limit that the pass would
  have brought down, and a pass that finds the real total within the limit removes nothing.

The totals are kept in memory and added up when the daemon starts (which runs a full pass). Prune
requests are always exact full passes. Blobs nothing refers to any more are deleted by full passes
and prunes only; until then they count in the bound.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import anyio

from buildkitpy.api import worker_pb2
from buildkitpy.control import usage
from buildkitpy.control.filters import parse_all

log = logging.getLogger(__name__)


def passes_from_policies(policies: Sequence[worker_pb2.GCPolicy]) -> list[usage.PruneOptions]:
    return [usage.PruneOptions(all=p.all, filters=tuple(p.filters), keep_duration=p.keepDuration / 1e9,
                               reserved_space=p.reservedSpace, max_used_space=p.maxUsedSpace,
                               min_free_space=p.minFreeSpace) for p in policies]


class GarbageCollector:
    def __init__(self, worker: usage.UsageWorker, cache: usage.CacheRecords, *,
                 passes: Sequence[usage.PruneOptions] = (), cache_mounts: Path | None = None,
                 busy: Callable[[], bool] = lambda: False, quiesce: usage.Quiesce | None = None,
                 cache_mount_generation: Callable[[], int | None] | None = None) -> None:
        self.worker = worker
        self.cache = cache
        self.passes = list(passes)
        self.cache_mounts = cache_mounts
        self.busy = busy
        self.quiesce = quiesce  # JobRegistry.quiesced: no build starts while blobs are deleted
        self.cache_mount_generation = cache_mount_generation  # CacheMounts.generation
        self.lock = threading.Lock()  # one prune or GC pass at a time
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._force = True  # the first pass (at startup) is a full one
        self._aged: list[float] = []  # per policy: from when a record may be old enough for it
        self._mounts: tuple[object, int] | None = None  # (what the size was measured at, the size)
        self.runs = 0  # completed automatic checks

    def prune(self, options: usage.PruneOptions, *, busy: bool) -> list[usage.Usage]:
        """A client's Prune request (blocking: call through a thread)."""
        with self.lock:
            self._mounts = None
            return usage.prune(self.worker, self.cache, options, busy=busy, cache_mounts=self.cache_mounts,
                               quiesce=self.quiesce)

    def disk_usage(self, filters: Sequence[str], *, age_limit: float = 0.0) -> list[usage.Usage]:
        return usage.disk_usage(self.worker, self.cache, filters, age_limit=age_limit,
                                cache_mounts=self.cache_mounts)

    def trigger(self) -> None:
        """Schedule a pass of every policy (from the event loop; returns at once)."""
        if not self.passes:
            return
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def wait_idle(self) -> None:
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def _run(self) -> None:
        while True:
            self._again = False
            try:
                removed = await anyio.to_thread.run_sync(self._pass)
                if removed:
                    log.info("gc: removed %d records (%d bytes)", len(removed), sum(r.size for r in removed))
            except Exception:
                log.exception("gc pass failed")
            self.runs += 1
            if not self._again:
                return

    def _pass(self) -> list[usage.Usage]:
        with self.lock:
            if not self._force and not self._due():
                return []
            started = time.time()
            self._mounts = None
            removed, left = usage.run_passes(self.worker, self.cache, self.passes, busy=self.busy(),
                                             cache_mounts=self.cache_mounts, quiesce=self.quiesce)
            self._aged = [self._first_expiry(opts, left, started) for opts in self.passes]
            self._force = False
            log.debug("gc: full pass over %d records in %.3f s", len(left) + len(removed),
                      time.time() - started)
            return removed

    def _due(self) -> bool:
        """Whether a full pass could remove anything now (see the module docstring)."""
        now = time.time()
        tracked: int | None = None
        free: int | None = None
        for opts, aged in zip(self.passes, self._aged, strict=True):
            if now < aged:
                continue  # nothing it may remove is old enough yet
            if not usage.has_size_limit(opts):
                return True
            if tracked is None:
                tracked = usage.tracked_bytes(self.worker)
                if tracked is None:
                    return True  # no running totals: only a full pass can tell
                tracked += self._cache_mount_bytes()
            if opts.min_free_space and free is None:
                free = usage.free_bytes(self.worker.root)
            if tracked > usage.keep_bytes(tracked, free or 0, opts):
                return True
        return False

    @staticmethod
    def _first_expiry(opts: usage.PruneOptions, left: list[usage.Usage], started: float) -> float:
        """From when a pass of ``opts`` may find a record old enough to remove (its keepDuration):
        a record left now when it has not been used for that long (at once if it already has: a
        build held it), one made later not before ``started`` plus the keepDuration."""
        if opts.keep_duration <= 0:
            return 0.0
        flt = parse_all(list(opts.filters))
        first = started + opts.keep_duration
        for r in left:
            if usage.selected(r, opts, flt) or usage.selected(replace(r, in_use=not r.in_use), opts, flt):
                first = min(first, r.last_used_at + opts.keep_duration if r.last_used_at else 0.0)
        return first

    def _cache_mount_bytes(self) -> int:
        """The cache mounts' size, walked again only when a build may have changed them."""
        root = self.cache_mounts
        try:
            names = tuple(sorted(os.listdir(root))) if root is not None else ()
        except FileNotFoundError:
            names = ()
        if not names:
            return 0
        generation = self.cache_mount_generation() if self.cache_mount_generation is not None else None
        key = (generation, names)
        if generation is not None and self._mounts is not None and self._mounts[0] == key:
            return self._mounts[1]
        size = usage.cache_mount_bytes(root)
        self._mounts = (key, size) if generation is not None else None
        return size
