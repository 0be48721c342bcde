"""The solver's observer (``solver.observe.StepObserver``): a span per vertex, why-rebuild reports."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

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
        if self.provenance is not None and self.provenance.watching(facts.job.id):
            try:  # (in a thread: it reads each output's layer chain)
                await anyio.to_thread.run_sync(self.provenance.step_settled, facts.job.id, facts.vertex,
                                               facts.op, facts.outputs)
            except Exception:  # noqa: BLE001 - provenance must never fail a step
                log.exception("provenance capture failed for %s", facts.vertex.digest)
        if self.rebuilds is not None:
            await self.rebuilds.settled(facts)
