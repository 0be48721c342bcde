"""Wiring the history, its Content service and tracing into the daemon."""

from __future__ import annotations

from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

from buildkitpy.api import content_pb2_grpc
from buildkitpy.attest.capture import ProvenanceCollector
from buildkitpy.content.store import ContentStore
from buildkitpy.history.content_service import ContentService
from buildkitpy.history.observer import BuildObserver
from buildkitpy.history.rebuild import RebuildRecorder
from buildkitpy.history.recorder import HistoryRecorder
from buildkitpy.history.store import HistoryLimits, HistoryStore
from buildkitpy.history.tracing import BuildSpans, TraceReceiver, TraceRecorder, install


class HistoryServices:
    def __init__(self, cfg, worker, solver) -> None:  # noqa: ANN001 - daemon Config, Worker, Solver
        self.worker = worker
        limits = HistoryLimits(max_age=cfg.history.max_age, max_entries=cfg.history.max_entries)
        self.store = HistoryStore(Path(cfg.root), limits)
        self.traces = TraceRecorder()
        install(self.traces)
        self.spans = BuildSpans()
        self.rebuilds = RebuildRecorder(Path(cfg.root), self._build_args)
        self.recorder = HistoryRecorder(self.store, Path(cfg.root), traces=self.traces, spans=self.spans,
                                        rebuilds=self.rebuilds)
        self.recorder.content_stores = self.content_stores
        worker.content_roots.append(self.store.referenced_digests)
        self.provenance = ProvenanceCollector()
        self.recorder.provenance = self.provenance
        solver.observer = BuildObserver(self.spans, self.rebuilds, self.provenance)

    def _build_args(self, ref: str) -> dict[str, str] | None:
        rec = self.store.active(ref)
        return {k: v for k, v in rec.FrontendAttrs.items() if k.startswith("build-arg:")} if rec else None

    def content_stores(self) -> list[ContentStore]:
        """History blobs first, then the image content store (exported manifests, pulled blobs)."""
        return [self.store.blobs, self.worker.image_puller.store]

    def serve(self, server: grpc.aio.Server) -> None:
        content_pb2_grpc.add_ContentServicer_to_server(ContentService(self.content_stores), server)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceReceiver(self.traces), server)
        self.store.start_gc()

    async def close(self) -> None:
        self.store.finalize_all()  # the traces are written now, not after their window for late spans
        await self.recorder.wait_background()
        self.traces.shutdown()
        self.store.close()
        self.rebuilds.close()


def open_history(cfg, worker, solver) -> HistoryServices:  # noqa: ANN001
    return HistoryServices(cfg, worker, solver)
