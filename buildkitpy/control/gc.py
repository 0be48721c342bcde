"""Automatic garbage collection: the worker's GC policies (``[[worker.oci.gcpolicy]]`` in
``buildkitd.toml``, or BuildKit's defaults) applied after every build and at startup.

BuildKit runs its policies at most once a minute after builds, so the cache can sit far above
``maxUsedSpace`` for a while (its issue #1962). Here a pass follows every build (coalesced: a build
finishing while a pass runs schedules one more), so once the pass is done the cache is back under
the ceiling, except for what running builds hold. Prune requests and GC passes never overlap.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio

from buildkitpy.api import worker_pb2
from buildkitpy.control import usage

log = logging.getLogger(__name__)


def passes_from_policies(policies: Sequence[worker_pb2.GCPolicy]) -> list[usage.PruneOptions]:
    return [usage.PruneOptions(all=p.all, filters=tuple(p.filters), keep_duration=p.keepDuration / 1e9,
                               reserved_space=p.reservedSpace, max_used_space=p.maxUsedSpace,
                               min_free_space=p.minFreeSpace) for p in policies]


class GarbageCollector:
    def __init__(self, worker: usage.UsageWorker, cache: usage.CacheRecords, *,
                 passes: Sequence[usage.PruneOptions] = (), cache_mounts: Path | None = None,
                 busy: Callable[[], bool] = lambda: False, quiesce: usage.Quiesce | None = None) -> None:
        self.worker = worker
        self.cache = cache
        self.passes = list(passes)
        self.cache_mounts = cache_mounts
        self.busy = busy
        self.quiesce = quiesce  # JobRegistry.quiesced: no build starts while blobs are deleted
        self.lock = threading.Lock()  # one prune or GC pass at a time
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self.runs = 0  # completed automatic passes

    def prune(self, options: usage.PruneOptions, *, busy: bool) -> list[usage.Usage]:
        """A client's Prune request (blocking: call through a thread)."""
        with self.lock:
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
            return usage.prune_passes(self.worker, self.cache, self.passes, busy=self.busy(),
                                      cache_mounts=self.cache_mounts, quiesce=self.quiesce)
