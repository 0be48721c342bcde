"""The solver's observer (``solver.observe.StepObserver``): a span per vertex, why-rebuild reports."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import anyio
from opentelemetry import trace

from buildkitpy.attest.capture import ProvenanceCollector
from buildkitpy.history.rebuild import RebuildRecorder
from buildkitpy.history.tracing import BuildSpans, tracer
from buildkitpy.solver.loader import Vertex
from buildkitpy.solver.observe import StepFacts

log = logging.getLogger(__name__)


class BuildObserver:
    def __init__(self, spans: BuildSpans | None, rebuilds: RebuildRecorder | None,
                 provenance: ProvenanceCollector | None = None) -> None:
        self.spans = spans
        self.rebuilds = rebuilds
        self.provenance = provenance
        self._batch = _ThreadBatch()

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
        work = self._work(facts)
        if work:
            await self._batch.run(work)

    async def settled_many(self, job, facts: list[StepFacts]) -> None:  # noqa: ANN001 - solver.Job
        parent = self.spans.parent_context(job.id) if self.spans is not None else None
        t = tracer()
        spans = [t.start_span(f.vertex.name or f.vertex.digest, context=parent,
                              attributes={"vertex": f.vertex.digest, "op": f.vertex.kind, "cached": f.cached})
                 for f in facts]
        try:
            work = [fn for f in facts for fn in self._work(f)]
            if work:
                await self._batch.run(work)
        finally:
            for span in spans:
                span.end()

    def _work(self, facts: StepFacts) -> list[Callable[[], None]]:
        """The blocking part of settling a vertex (in the batch's worker thread)."""
        work: list[Callable[[], None]] = []
        if self.provenance is not None and self.provenance.watching(facts.job.id):
            work.append(partial(self._capture, self.provenance, facts))
        if self.rebuilds is not None:
            work.append(partial(self.rebuilds.settle, facts))
        return work

    @staticmethod
    def _capture(provenance: ProvenanceCollector, facts: StepFacts) -> None:
        try:  # (it reads each output's layer chain)
            provenance.step_settled(facts.job.id, facts.vertex, facts.op, facts.outputs)
        except Exception:  # noqa: BLE001 - provenance must never fail a step
            log.exception("provenance capture failed for %s", facts.vertex.digest)


class _ThreadBatch:
    """Runs blocking work in a worker thread, one trip for all the work queued meanwhile: the
    vertices of a graph settle together (a cached graph settles hundreds at once), and a thread
    trip each cost more than the work. The work must not raise."""

    def __init__(self) -> None:
        self._pending: list[tuple[list[Callable[[], None]], asyncio.Event]] = []
        self._flusher: asyncio.Task | None = None

    async def run(self, work: list[Callable[[], None]]) -> None:
        done = asyncio.Event()
        self._pending.append((work, done))
        loop = asyncio.get_running_loop()
        if self._flusher is None or self._flusher.done() or self._flusher.get_loop() is not loop:
            self._flusher = loop.create_task(self._flush())
        # The work borrows the vertex's snapshots: its caller may not go (and release them) before
        # the work is done, even when cancelled.
        with anyio.CancelScope(shield=True):
            await done.wait()

    async def _flush(self) -> None:
        while self._pending:
            await asyncio.sleep(0)  # let the vertices settling now queue their work
            batch, self._pending = self._pending, []

            def run_all(batch: list[tuple[list[Callable[[], None]], asyncio.Event]] = batch) -> None:
                for work, _ in batch:
                    for fn in work:
                        fn()
            try:
                await anyio.to_thread.run_sync(run_all)
            finally:
                for _, done in batch:
                    done.set()
