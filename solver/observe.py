"""What the scheduler tells an observer about each vertex (tracing, why-a-step-rebuilt).

The scheduler wraps each vertex's work in ``observer.vertex_scope(job, vertex)`` (a tracing span)
and, once the vertex is settled (loaded from the cache or run), awaits ``observer.settled(facts)``
with the facts its cache decision was based on. ``Solver.observer`` is None when nobody listens.
The observer must not raise (failures are its own to log) and must not keep the snapshots.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from buildkitpy.snapshot.api import ImmutableSnapshot
from buildkitpy.solver.cachekey import CacheMap, OutputKeys
from buildkitpy.solver.loader import Vertex

if TYPE_CHECKING:
    from buildkitpy.solver.solver import Job


@dataclass
class StepFacts:
    job: Job
    vertex: Vertex
    input_names: list[str]  # the names of the vertexes feeding each input
    cache_map: CacheMap
    input_keys: list[OutputKeys]
    # borrowed for the duration of ``settled``; None for inputs whose result was not loaded (a hit
    # whose inputs were never needed)
    inputs: list[ImmutableSnapshot | None]
    content: list[str | None] | None  # per input: content checksum, when it was computed
    cached: bool  # loaded from the cache (or produced by a concurrent build) instead of run
    lookup_skipped: bool  # no-cache, ignore-cache or an always-run op: no cache lookup was made
    op: object = None  # the vertex's op implementation (sources keep what they resolved: pins)
    outputs: list[ImmutableSnapshot] | None = None  # the vertex's results (borrowed, as ``inputs``)


class StepObserver(Protocol):
    def vertex_scope(self, job: Job, vertex: Vertex) -> AbstractContextManager[object]:
        """Entered around all the work on one vertex (sees its exception, if any)."""

    async def settled(self, facts: StepFacts) -> None:
        """A vertex's result is known."""

    async def settled_many(self, job: Job, facts: list[StepFacts]) -> None:
        """The results of many vertices are known at once (those below a hit, cached), each
        outside its ``vertex_scope``: the observer opens what it needs itself."""
