"""The build-history parts of ``Control``: UpdateBuildHistory, Status replays and completion."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

import anyio

from buildkitpy.api import control_pb2
from buildkitpy.history import statusblob
from buildkitpy.history.recorder import BuildRecording, HistoryRecorder
from buildkitpy.history.store import HistoryStore

log = logging.getLogger(__name__)

REPLAY_BATCH = 256


class ActiveJobs(Protocol):
    def active(self) -> list:  # list[buildkitpy.jobs.Job]
        ...


async def update(store: HistoryStore, request: control_pb2.UpdateBuildHistoryRequest) -> None:
    if request.Delete:
        await store.finalize(request.Ref)
        await store.delete(request.Ref)
        return
    if request.Finalize:
        await store.finalize(request.Ref)
        return
    pinned = request.Pinned
    await store.update_ref(request.Ref, lambda rec: setattr(rec, "pinned", pinned))


def stored_logs(recorder: HistoryRecorder | None, ref: str,
                jobs: ActiveJobs) -> AsyncIterator[control_pb2.StatusResponse] | None:
    """The logs of a completed build from its history record, or None (not recorded, or running)."""
    if recorder is None or not ref or any(j.ref == ref for j in jobs.active()):
        return None
    rec = recorder.store.get(ref)
    if rec is None or not rec.logs.digest:
        return None
    blobs = recorder.store.blobs
    digest = rec.logs.digest

    async def replay() -> AsyncIterator[control_pb2.StatusResponse]:
        f = await anyio.to_thread.run_sync(blobs.open, digest)
        try:
            messages = statusblob.read_status(f)

            def batch() -> list[control_pb2.StatusResponse]:
                return [m for _, m in zip(range(REPLAY_BATCH), messages, strict=False)]

            while chunk := await anyio.to_thread.run_sync(batch):
                for msg in chunk:
                    yield msg
        finally:
            f.close()

    return replay()


async def complete(recording: BuildRecording, failure: BaseException | None) -> None:
    """Store the record; a history failure is logged, never turned into the build's error."""
    try:
        with anyio.CancelScope(shield=True):
            await recording.complete(failure)
    except Exception:  # noqa: BLE001
        log.exception("cannot record build %s in the history", recording.ref)


def solve_span(recorder: HistoryRecorder | None, ref: str,
               metadata: Iterable[tuple[str, str | bytes]] | None) -> AbstractContextManager:
    """The ``Control/Solve`` server span (continuing the client's traceparent) while the build runs."""
    if recorder is None or recorder.spans is None:
        return nullcontext()
    return recorder.spans.solve(ref, metadata or ())


def span(name: str) -> AbstractContextManager:
    """A child span of the current one (exporters run inside the Solve span)."""
    from buildkitpy.history.tracing import tracer

    return tracer().start_as_current_span(name)


def current_trace_id() -> str:
    """The trace id of the span active in this task (the Solve call's), as 32 hex digits."""
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""
