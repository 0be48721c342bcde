"""The solver's public face: ``Solver(worker).solve(definition, job) -> Result``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import anyio

from buildkitpy.api import ops_pb2
from buildkitpy.progress import ProgressBus
from buildkitpy.snapshot.api import ImmutableSnapshot
from buildkitpy.solver.cache import SQLiteCacheStorage
from buildkitpy.solver.cachekey import CacheKey
from buildkitpy.solver.cachestorage import CacheStorage
from buildkitpy.solver.contenthash import ChecksumStore
from buildkitpy.solver.core import SolverCore
from buildkitpy.solver.loader import load_definition
from buildkitpy.solver.observe import StepObserver
from buildkitpy.solver.scheduler import Build


@dataclass
class Job:
    id: str
    progress: ProgressBus
    session_ids: list[str] = field(default_factory=list)
    no_cache: bool = False
    entitlements: frozenset[str] = frozenset()
    # Read-only cache layers (cache imports, ``--cache-from``) this build looks keys up in, stacked
    # over the solver's own store: ``buildkitpy.solver.cachestorage`` describes what a layer provides.
    cache_layers: list[CacheStorage] = field(default_factory=list)
    # Remote cache imports/exports of this build (buildkitpy.remotecache.jobcache.JobCache), or None.
    remote_cache: Any = None


@dataclass
class Result:
    ref: ImmutableSnapshot | None  # the caller releases it
    metadata: dict[str, bytes] = field(default_factory=dict)
    # The cache keys of ``ref`` (fast key first), each with its inputs' keys: what a cache
    # exporter walks. Empty when the result is not cacheable or there is no result.
    cache_keys: list[CacheKey] = field(default_factory=list)


class Solver:
    """One per worker. Holds the persistent cache, checksum memo and cache mounts, and the solver
    core that dedupes identical work across the builds running on it."""

    def __init__(self, worker) -> None:  # noqa: ANN001 - buildkitpy.worker.Worker
        from buildkitpy.solver.ops.cachemounts import CacheMounts
        from buildkitpy.solver.ops.local_reuse import SharedKeyIndex

        self.worker = worker
        root = worker.root
        root.mkdir(parents=True, exist_ok=True)
        self.cache = SQLiteCacheStorage(root / "cache.db", worker.snapshots)
        self.checksums = ChecksumStore(root / "cache.db")
        self.cache_mounts = CacheMounts(root / "cachemounts")
        self.local_sources = SharedKeyIndex(root)  # the previous copy of each local source
        self._limiter: anyio.CapacityLimiter | None = None
        self.core = SolverCore(self.cache, lambda: self.limiter)
        self.last_build: Build | None = None
        # Told about every vertex (tracing, why-rebuild): buildkitpy.solver.observe.StepObserver.
        self.observer: StepObserver | None = None

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        """How many vertices execute at once, across builds: ``max_parallelism``, or any number when
        it is 0 (BuildKit's default: its semaphore exists only when max-parallelism is set)."""
        if self._limiter is None:
            n = int(self.worker.max_parallelism)
            self._limiter = anyio.CapacityLimiter(n if n > 0 else math.inf)
        return self._limiter

    async def solve(self, definition: ops_pb2.Definition, job: Job) -> Result:
        graph = load_definition(definition)
        if graph.result is None:
            return Result(ref=None)
        build = Build(self, graph, job)
        self.last_build = build
        ref = await build.run()
        keys = build.result_keys
        return Result(ref=ref, cache_keys=list(keys.keys) if keys is not None else [])

    def close(self) -> None:
        self.cache.close()
        self.checksums.close()
        self.local_sources.close()
