"""The solver's observer (``solver.observe.StepObserver``): a span per vertex, why-rebuild reports."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

import anyio
from opentelemetry import trace

from buildkitpy.attest.capture import ProvenanceCollector
from buildkitpy.history.rebuild import RebuildRecorder
from buildkitpy.history.tracing import BuildSpans, tracer
from buildkitpy.solver.loader import Vertex
from buildkitpy.solver.observe import StepFacts

log = logging.getLogger(__name__)
T = TypeVar("T")


class BuildObserver:
    def __init__(self, spans: BuildSpans | None, rebuilds: RebuildRecorder | None,
                 provenance: ProvenanceCollector | None = None) -> None:
        self.spans = spans
        self.rebuilds = rebuilds
        self.provenance = provenance
        self._batch: _ThreadBatch[tuple[StepFacts, bool]] = _ThreadBatch(self._settle_batch)

    @contextmanager
    def vertex_scope(self, job, vertex: Vertex) -> Iterator[object]:  # noqa: ANN001 - solver.Job
        """A span named after the vertex, child of its build's Solve span (also when the solver runs
        for a client-side frontend's LLBBridge call, outside the Solve call's task)."""
        parent = self.spans.parent_context(job.id) if self.spans is not None else None
        with tracer().start_as_current_span(vertex.name or vertex.digest, context=parent,
                                            attributes={"vertex": vertex.digest, "op": vertex.kind}) as span:
            yield span

    async def settled(self, facts: StepFacts) -> None:
        span = trace.get_current_span()
        span.set_attribute("cached", facts.cached)
        await self._settle([facts])

    async def settled_many(self, job, facts: list[StepFacts]) -> None:  # noqa: ANN001 - solver.Job
        parent = self.spans.parent_context(job.id) if self.spans is not None else None
        t = tracer()
        spans = [t.start_span(f.vertex.name or f.vertex.digest, context=parent,
                              attributes={"vertex": f.vertex.digest, "op": f.vertex.kind, "cached": f.cached})
                 for f in facts]
        try:
            await self._settle(facts)
        finally:
            for span in spans:
                span.end()

    async def _settle(self, facts: list[StepFacts]) -> None:
        provenance = self.provenance
        items = [(f, provenance is not None and provenance.watching(f.job.id)) for f in facts]
        if self.rebuilds is not None or any(watched for _, watched in items):
            await self._batch.run(items)

    def _settle_batch(self, items: list[tuple[StepFacts, bool]]) -> None:
        """The blocking part of settling vertices (in the batch's worker thread): each watched
        output's layer chain for provenance, the steps' fingerprints for rebuild reports."""
        for facts, watched in items:
            if watched and self.provenance is not None:
                try:
                    self.provenance.step_settled(facts.job.id, facts.vertex, facts.op, facts.outputs)
                except Exception:  # noqa: BLE001 - provenance must never fail a step
                    log.exception("provenance capture failed for %s", facts.vertex.digest)
        if self.rebuilds is not None:
            self.rebuilds.settle_many([facts for facts, _ in items])


class _ThreadBatch(Generic[T]):
    """Hands items to ``work`` in a worker thread, one trip for all the items queued meanwhile:
    the vertices of a graph settle together (a cached graph settles hundreds at once), and a
    thread trip each cost more than the work. ``work`` must not raise."""

    def __init__(self, work: Callable[[list[T]], None]) -> None:
        self._work = work
        self._pending: list[tuple[list[T], asyncio.Event]] = []
        self._flusher: asyncio.Task | None = None

    async def run(self, items: list[T]) -> None:
        done = asyncio.Event()
        self._pending.append((items, done))
        loop = asyncio.get_running_loop()
        if self._flusher is None or self._flusher.done() or self._flusher.get_loop() is not loop:
            self._flusher = loop.create_task(self._flush())
        # The items borrow the vertices' snapshots: their caller may not go (and release them)
        # before the work is done, even when cancelled.
        with anyio.CancelScope(shield=True):
            await done.wait()

    async def _flush(self) -> None:
        while self._pending:
            await asyncio.sleep(0)  # let the vertices settling now queue their items
            batch, self._pending = self._pending, []
            try:
                await anyio.to_thread.run_sync(self._work, [item for items, _ in batch for item in items])
            finally:
                for _, done in batch:
                    done.set()
