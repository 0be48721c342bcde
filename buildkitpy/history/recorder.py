"""Recording one build into the history, the way BuildKit's solver does (llbsolver/history.go).

``HistoryRecorder.start(...)`` at the beginning of a Solve publishes a ``STARTED`` record (ref,
frontend, attrs, exporters, start time) and returns a ``BuildRecording``. While the build runs,
exporters and attestation producers attach things to it:

- ``await rec.add_blob(data, media_type, annotations)`` stores a blob in the history's content
  store (readable through the Content service) and returns its ``Descriptor``;
- ``rec.add_attestation(desc, result_key="")`` lists it under ``Result.Attestations`` (or
  ``Results[result_key].Attestations`` for a named result of a multi-platform build);
- ``rec.set_result_descriptor(exporter_index, desc)`` records what an exporter produced (an image
  manifest or index descriptor; the blob may live in the image content store);
- ``rec.set_exporter_response(response)``.

Completion hooks (``HistoryRecorder.add_completion_hook``) run when the build ends, before the
record is stored, with the recording and the build's error (None on success) — the place to make
provenance from the finished build. ``await rec.complete(error=...)`` then writes the logs blob (full
step output), the error, step counts and warnings, stores the record (``COMPLETE``) and keeps
collecting the trace until the record is finalized (``UpdateBuildHistory{Finalize}``) or 3 seconds
pass.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import anyio

from buildkitpy.api import control_pb2
from buildkitpy.content.store import ContentStore
from buildkitpy.errors import NotFound, to_rpc_status, unwrap
from buildkitpy.history import statusblob
from buildkitpy.history.store import HistoryStore
from buildkitpy.history.tracing import BuildSpans, render_stubs
from buildkitpy.progress import ProgressBus, now_timestamp
from buildkitpy.solver.steplog import log_folder

if TYPE_CHECKING:
    from buildkitpy.attest.capture import ProvenanceCollector

log = logging.getLogger(__name__)

ERROR_MEDIA_TYPE = "application/vnd.googeapis.google.rpc.status+proto"  # sic, as BuildKit writes it
TRACE_MEDIA_TYPE = "application/vnd.buildkit.otlp.json.v0"
TRACE_WAIT_SECONDS = 3.0
REBUILDS_KEY = "buildkitpy.rebuilds"  # ExporterResponse key of the why-rebuild report (JSON)


class TraceSource(Protocol):
    """Spans of one trace id, collected while a build runs (``history.tracing.TraceRecorder``)."""

    def record(self, trace_id: str) -> Callable[[], list[dict]]:
        """Start keeping spans of ``trace_id``; the returned function stops and hands them over."""


class RebuildSource(Protocol):
    """Why-rebuild reports per build (``history.rebuild.RebuildRecorder``)."""

    def take(self, build_ref: str) -> list[dict]:
        """The reports of a finished build (and forget them)."""


CompletionHook = Callable[["BuildRecording", BaseException | None], Awaitable[None]]


class HistoryRecorder:
    """Daemon-wide: the store, where step logs live, and the optional trace and rebuild sources."""

    def __init__(self, store: HistoryStore, root: Path, *, traces: TraceSource | None = None,
                 rebuilds: RebuildSource | None = None, spans: BuildSpans | None = None) -> None:
        self.store = store
        self.root = Path(root)
        self.traces = traces
        self.rebuilds = rebuilds
        self.spans = spans
        self._hooks: list[CompletionHook] = []
        self._background: set[asyncio.Task] = set()
        # Where clients can read blobs from (set by the daemon: history blobs, image content).
        self.content_stores: Callable[[], list[ContentStore]] | None = None
        # The daemon's provenance collector (buildkitpy.attest.capture.ProvenanceCollector), if any.
        self.provenance: ProvenanceCollector | None = None

    def has_blob(self, digest: str) -> bool:
        """Whether a blob is readable through the Content service (history or image store)."""
        stores = self.content_stores() if self.content_stores is not None else [self.store.blobs]
        for store in stores:
            try:
                if store.exists(digest):
                    return True
            except Exception:  # noqa: BLE001 - a malformed digest is simply not there
                return False
        return False

    def add_completion_hook(self, hook: CompletionHook) -> None:
        self._hooks.append(hook)

    async def start(self, *, ref: str, frontend: str, frontend_attrs: Mapping[str, str],
                    exporters: list[control_pb2.Exporter], progress: ProgressBus,
                    trace_id: str = "") -> BuildRecording:
        rec = control_pb2.BuildHistoryRecord(Ref=ref, Frontend=frontend, FrontendAttrs=dict(frontend_attrs),
                                             CreatedAt=now_timestamp())
        for e in exporters:
            rec.Exporters.add(Type=e.Type, Attrs=dict(e.Attrs))
        stop_trace = self.traces.record(trace_id) if (self.traces is not None and trace_id) else None
        recording = BuildRecording(self, rec, progress, stop_trace)
        await self.store.started(rec)
        return recording

    async def wait_background(self) -> None:
        """Let pending trace writes finish (shutdown and tests)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)


class BuildRecording:
    def __init__(self, recorder: HistoryRecorder, record: control_pb2.BuildHistoryRecord,
                 progress: ProgressBus, stop_trace: Callable[[], list[dict]] | None) -> None:
        self.recorder = recorder
        self.record = record
        self.progress = progress
        self._stop_trace = stop_trace
        self._lock = threading.Lock()
        self._result_metadata: dict[str, str] = {}
        self._exporter_response: dict[str, str] = {}
        self.completed = False

    @property
    def ref(self) -> str:
        return self.record.Ref

    # -- attachments -----------------------------------------------------------------------------

    async def add_blob(self, data: bytes, media_type: str,
                       annotations: Mapping[str, str] | None = None) -> control_pb2.Descriptor:
        blobs = self.recorder.store.blobs
        digest = await anyio.to_thread.run_sync(blobs.write_bytes, data)
        return control_pb2.Descriptor(media_type=media_type, digest=digest, size=len(data),
                                      annotations=dict(annotations or {}))

    def add_attestation(self, desc: control_pb2.Descriptor, *, result_key: str = "") -> None:
        with self._lock:
            info = self.record.Results[result_key] if result_key else self.record.Result
            info.Attestations.append(desc)

    def set_result_descriptor(self, exporter_index: int, desc: control_pb2.Descriptor) -> None:
        """What exporter ``exporter_index`` produced; the first also fills the deprecated field."""
        with self._lock:
            res = self.record.Result
            res.Results[exporter_index].CopyFrom(desc)
            if not res.ResultDeprecated.digest or exporter_index == min(res.Results):
                res.ResultDeprecated.CopyFrom(desc)

    def set_exporter_result(self, exporter_index: int, response: Mapping[str, str]) -> None:
        """The exported image's descriptor (``containerimage.descriptor``) as the exporter's
        result, when its blob is readable through the Content service (as ``buildx history export``
        needs)."""
        raw = response.get("containerimage.descriptor")
        if not raw:
            return
        try:
            d = json.loads(base64.b64decode(raw))
            desc = control_pb2.Descriptor(media_type=d["mediaType"], digest=d["digest"], size=int(d["size"]),
                                          annotations=d.get("annotations") or {})
        except (ValueError, KeyError, TypeError):
            log.warning("build %s: exporter %d returned an unreadable descriptor", self.ref, exporter_index)
            return
        if self.recorder.has_blob(desc.digest):
            self.set_result_descriptor(exporter_index, desc)

    def set_result_metadata(self, metadata: Mapping[str, bytes | str]) -> None:
        for k, v in metadata.items():
            self._result_metadata[k] = v.decode(errors="replace") if isinstance(v, bytes) else v

    def set_exporter_response(self, response: Mapping[str, str]) -> None:
        self._exporter_response.update(response)

    # -- completion ------------------------------------------------------------------------------

    async def complete(self, error: BaseException | None = None) -> None:
        """Fill in the rest (the progress bus must be closed) and store the record."""
        if self.completed:
            return
        self.completed = True
        rec = self.record
        rec.CompletedAt.CopyFrom(now_timestamp())
        for hook in self.recorder._hooks:
            try:
                await hook(self, error)
            except Exception:  # noqa: BLE001 - a failing attachment must not lose the record
                log.exception("build history completion hook failed for %s", rec.Ref)
        response = {**self._result_metadata, **self._exporter_response}
        if self.recorder.rebuilds is not None:
            reports = self.recorder.rebuilds.take(rec.Ref)
            if reports:
                response[REBUILDS_KEY] = json.dumps(reports, separators=(",", ":"))
        if response:
            rec.ExporterResponse.update(response)
        try:
            await self._write_logs()
        except Exception:  # noqa: BLE001
            log.exception("cannot store the logs of build %s", rec.Ref)
        if error is not None:
            await self._write_error(error)
        store = self.recorder.store
        trigger, done = store.acquire_finalizer(rec.Ref)
        await store.complete(rec)
        if self._stop_trace is None:
            done()
            return
        task = asyncio.get_running_loop().create_task(self._finish_trace(trigger, done))
        self.recorder._background.add(task)
        task.add_done_callback(self.recorder._background.discard)

    async def _write_logs(self) -> None:
        messages = [m async for m in self.progress.subscribe()]
        log_dir = log_folder(self.recorder.root, self.record.Ref)
        blobs = self.recorder.store.blobs

        def write() -> statusblob.StatusSummary:
            tmp = blobs.ingest_path()
            try:
                with open(tmp, "wb") as f:
                    summary = statusblob.write_status(
                        f, statusblob.with_full_logs(messages, log_dir if log_dir.is_dir() else None))
                blobs.adopt(tmp, summary.digest)
            finally:
                if tmp.exists():
                    os.unlink(tmp)
            return summary

        summary = await anyio.to_thread.run_sync(write)
        rec = self.record
        rec.logs.CopyFrom(control_pb2.Descriptor(media_type=statusblob.MEDIA_TYPE, digest=summary.digest,
                                                 size=summary.size))
        rec.numCachedSteps = summary.cached_steps
        rec.numCompletedSteps = summary.completed_steps
        rec.numTotalSteps = summary.total_steps
        rec.numWarnings = summary.warnings

    async def _write_error(self, error: BaseException) -> None:
        status = to_rpc_status(unwrap(error))
        if isinstance(unwrap(error), asyncio.CancelledError):
            status.code, status.message = 1, "context canceled"
        try:
            desc = await self.add_blob(status.SerializeToString(), ERROR_MEDIA_TYPE)
            self.record.externalError.CopyFrom(desc)
        except Exception:  # noqa: BLE001
            log.exception("cannot store the error of build %s", self.record.Ref)
        del status.details[:]
        self.record.error.CopyFrom(status)

    async def _finish_trace(self, trigger: asyncio.Event, done: Callable[[], None]) -> None:
        try:
            try:
                await asyncio.wait_for(trigger.wait(), TRACE_WAIT_SECONDS)
            except TimeoutError:
                pass
            stop = self._stop_trace
            assert stop is not None

            def render() -> bytes:  # (in a thread: a span per vertex makes a big graph's trace long)
                return render_stubs(stop()).encode()
            data = await anyio.to_thread.run_sync(render)
            if not data:
                return
            desc = await self.add_blob(data, TRACE_MEDIA_TYPE)
            await self.recorder.store.update_ref(self.record.Ref, lambda r: r.trace.CopyFrom(desc))
        except NotFound:
            pass  # the record was deleted meanwhile
        except Exception:  # noqa: BLE001
            log.exception("cannot store the trace of build %s", self.record.Ref)
        finally:
            done()
