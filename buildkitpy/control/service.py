"""``moby.buildkit.v1.Control``: the daemon's main API."""

from __future__ import annotations

import asyncio
import datetime
import logging

import anyio
import grpc

from buildkitpy import __version__, exporter
from buildkitpy.api import control_pb2, control_pb2_grpc, ops_pb2, worker_pb2
from buildkitpy.attest.build import BuildProvenance
from buildkitpy.control import usage
from buildkitpy.control.gc import GarbageCollector
from buildkitpy.errors import (
    BuildkitpyError,
    EntitlementDenied,
    InvalidArgument,
    SessionNotFound,
    Unimplemented,
    abort_for,
    abort_with,
    unary_handler,
)
from buildkitpy.gateway.bridge import GatewayBridge
from buildkitpy.history import control as history_api
from buildkitpy.history.recorder import HistoryRecorder
from buildkitpy.jobs import Job, JobRegistry
from buildkitpy.remotecache.control import CacheRun

log = logging.getLogger(__name__)

# Like BuildKit: Status waits this long for its Solve to appear.
STATUS_WAIT_SECONDS = 6.0
# Entitlements that need the daemon's allowance as well as the client's request.
INSECURE_ENTITLEMENTS = {"network.host", "security.insecure", "device"}


_handled = unary_handler("Control")


def version_pb() -> worker_pb2.BuildkitVersion:
    return worker_pb2.BuildkitVersion(package="github.com/buildkitpy/buildkitpy", version=__version__,
                                      revision="", dockerfileVersion=__version__)


class ControlService(control_pb2_grpc.ControlServicer):
    def __init__(self, *, worker, solver, jobs: JobRegistry, sessions, worker_record,
                 history: HistoryRecorder | None = None, gc: GarbageCollector | None = None) -> None:
        self.worker = worker
        self.solver = solver
        self.jobs = jobs
        self.sessions = sessions
        self._worker_record = worker_record
        self.history = history
        self.gc = gc or GarbageCollector(worker, solver.cache, busy=lambda: bool(jobs.active()),
                                         quiesce=jobs.quiesced)
        self._solves: set[asyncio.Task] = set()  # the Solve calls running, for wait_solves

    # -- introspection ---------------------------------------------------------------------------

    @_handled
    async def Info(self, request, context):
        return control_pb2.InfoResponse(buildkitVersion=version_pb())

    @_handled
    async def ListWorkers(self, request, context):
        record = self._worker_record()
        for flt in request.filter:
            if not _worker_matches(record, flt):
                return control_pb2.ListWorkersResponse()
        return control_pb2.ListWorkersResponse(record=[record])

    @_handled
    async def DiskUsage(self, request, context):
        records = await anyio.to_thread.run_sync(
            lambda: self.gc.disk_usage(list(request.filter), age_limit=request.ageLimit / 1e9))
        return control_pb2.DiskUsageResponse(record=[_usage_pb(u) for u in records])

    async def Prune(self, request, context):
        try:
            options = usage.PruneOptions(
                all=request.all, filters=tuple(request.filter), keep_duration=request.keepDuration / 1e9,
                reserved_space=request.reservedSpace, max_used_space=request.maxUsedSpace,
                min_free_space=request.minFreeSpace)
            removed = await anyio.to_thread.run_sync(
                lambda: self.gc.prune(options, busy=bool(self.jobs.active())))
        except BaseException as exc:  # noqa: BLE001
            await abort_for(context, exc, "Control.Prune")
            return
        for record in removed:
            yield _usage_pb(record)

    async def ListenBuildHistory(self, request, context):
        if self.history is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "build history is disabled")
        await context.send_initial_metadata((("buildkit-current-timestamp", _now_rfc3339()),))
        try:
            async for event in self.history.store.listen(request):
                yield event
        except Exception as exc:  # noqa: BLE001 - a client going away (GeneratorExit) is not an error
            await abort_for(context, exc, "Control.ListenBuildHistory")

    @_handled
    async def UpdateBuildHistory(self, request, context):
        if self.history is None:
            raise Unimplemented("build history is disabled")
        await history_api.update(self.history.store, request)
        return control_pb2.UpdateBuildHistoryResponse()

    # -- sessions and builds ---------------------------------------------------------------------

    async def Session(self, request_iterator, context):
        async for msg in self.sessions.serve(request_iterator, context):
            yield msg

    async def Status(self, request, context):
        # A finished build replays its history record's logs (complete step output, also after a
        # restart); a running one streams live.
        stored = history_api.stored_logs(self.history, request.Ref, self.jobs)
        if stored is not None:
            await context.send_initial_metadata((("buildkit-current-timestamp", _now_rfc3339()),))
            async for msg in stored:
                yield msg
            return
        try:
            job = await self.jobs.get(request.Ref, STATUS_WAIT_SECONDS)
        except BuildkitpyError as exc:
            await abort_with(context, exc)
            return
        await context.send_initial_metadata((("buildkit-current-timestamp", _now_rfc3339()),))
        async for msg in job.progress.subscribe(batch=True):
            yield msg

    @_handled
    async def Solve(self, request, context):
        task = asyncio.current_task()
        if task is not None:
            self._solves.add(task)
        try:
            with history_api.solve_span(self.history, request.Ref, context.invocation_metadata()):
                return await self._solve(request, context)
        finally:
            self._solves.discard(task)  # type: ignore[arg-type]

    async def wait_solves(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the Solve calls still running to end (at shutdown, once
        the gRPC server cancelled them: each still writes its history record, in a worker thread,
        and a thread started after the daemon's main task is gone keeps the process alive).
        Returns whether none is left."""
        pending = [task for task in self._solves if not task.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        return not any(not task.done() for task in self._solves)

    async def _solve(self, request, context):
        entitlements = frozenset(request.Entitlements)
        job = Job(ref=request.Ref, session_id=request.Session, frontend_attrs=dict(request.FrontendAttrs),
                  entitlements=entitlements)
        job.bridge = GatewayBridge(job, self.solver, frontend_inputs=dict(request.FrontendInputs))
        # Registered before anything can fail, so Status (started at the same time) finds the job,
        # sees the error and ends, instead of waiting for a job that never appears.
        await self.jobs.create(job)
        exporters = list(request.Exporters)
        if not exporters and request.ExporterDeprecated:
            exporters = [control_pb2.Exporter(Type=request.ExporterDeprecated,
                                              Attrs=request.ExporterAttrsDeprecated)]
        recording = None
        provenance: BuildProvenance | None = None
        cache: CacheRun | None = None
        failure: BaseException | None = None
        try:
            if self.history is not None and not request.Internal:
                recording = job.history = await self.history.start(
                    ref=request.Ref, frontend=request.Frontend, frontend_attrs=request.FrontendAttrs,
                    exporters=exporters, progress=job.progress, trace_id=history_api.current_trace_id())
            provenance = BuildProvenance(request.Ref, request.Frontend, request.FrontendAttrs,
                                         getattr(self.history, "provenance", None))
            job.provenance = provenance.capture
            resolved = [exporter.resolve(e.Type) for e in exporters]  # unknown types fail before work
            for e in exporters:  # and so do bad attrs (a bad --output fails at once)
                exporter.validate(e.Type, dict(e.Attrs))
            cache = CacheRun.from_request(request.Cache, request.FrontendAttrs)  # bad entries fail early
            for ent in sorted(entitlements & INSECURE_ENTITLEMENTS):
                if ent not in self.worker.insecure_entitlements:
                    raise EntitlementDenied(
                        f"granting entitlement {ent} is not allowed by build daemon configuration")
            session = None
            if request.Session and exporters:
                try:
                    session = await self.sessions.get(request.Session, timeout=5.0)
                except SessionNotFound:
                    session = None
            if cache.active:
                cache_session = session
                if cache_session is None and request.Session:
                    try:
                        cache_session = await self.sessions.get(request.Session, timeout=5.0)
                    except SessionNotFound:
                        cache_session = None
                await cache.start(self.worker, cache_session, job.bridge.solver_job, job.progress,
                                  cache_mounts=getattr(self.solver, "cache_mounts", None),
                                  storage=getattr(self.solver, "cache", None))
            if request.HasField("Definition") and getattr(request.Definition, "def"):
                result = await job.bridge.solve(definition=request.Definition)
            elif request.Frontend:
                result = await job.bridge.solve(frontend=request.Frontend,
                                                frontend_opt=dict(request.FrontendAttrs),
                                                frontend_inputs=dict(request.FrontendInputs))
            elif request.HasField("Definition"):
                result = await job.bridge.solve(definition=ops_pb2.Definition())
            else:
                result = await job.bridge.wait_return()
            # The result is built even when nothing exports it (a failing step fails the build),
            # and before any exporter starts, as BuildKit does.
            for ref in result.all_refs():
                await job.bridge.evaluate(ref)
            await provenance.collect(job.bridge, result)  # the frontend's attestations (SBOM scans)
            if recording is not None:
                recording.set_result_metadata(result.metadata)
            provenance.result_ready(result, self.worker)
            response: dict[str, str] = {}
            for index, (exp, run) in enumerate(zip(exporters, resolved, strict=True)):
                with history_api.span(f"export {exp.Type}"):
                    exported = await run(exporter.ExportContext(
                        index=index, attrs=dict(exp.Attrs), result=result, bridge=job.bridge,
                        session=session, progress=job.progress,
                        provenance=provenance.for_exporter(exp.Type)))
                if recording is not None:
                    recording.set_exporter_result(index, exported)
                response.update(exported)
            response.update(await cache.export(result.all_refs(), job.progress))
            if recording is not None:
                recording.set_exporter_response(response)
                await provenance.record(recording)
            return control_pb2.SolveResponse(ExporterResponse=response)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await job.bridge.release_containers()
                if cache is not None:
                    await cache.close()
            job.bridge.close()
            if provenance is not None:
                provenance.close()
            await self.jobs.finish(job)
            try:
                if recording is not None:
                    await history_api.complete(recording, failure)
            finally:
                # Once the record is complete: the pass (a worker thread, holding the GIL much of
                # its time) no longer delays the end of the build its client waits for.
                self.gc.trigger()


def _now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


def _worker_matches(record: worker_pb2.WorkerRecord, flt: str) -> bool:
    """The subset of containerd filter syntax buildctl sends (``key==value`` / ``key!=value``)."""
    for op in ("==", "!="):
        if op in flt:
            key, value = (s.strip() for s in flt.split(op, 1))
            if key == "id":
                actual = {record.ID}
            elif key.startswith("labels."):
                actual = {record.Labels.get(key[len("labels."):], "")}
            elif key == "platforms":
                actual = {f"{p.OS}/{p.Architecture}" + (f"/{p.Variant}" if p.Variant else "")
                          for p in record.platforms}
            else:
                raise InvalidArgument(f"unsupported worker filter {flt!r}")
            return (value in actual) == (op == "==")
    raise InvalidArgument(f"invalid worker filter {flt!r}")


def _usage_pb(record: usage.Usage) -> control_pb2.UsageRecord:
    out = control_pb2.UsageRecord(ID=record.id, Mutable=record.mutable, InUse=record.in_use,
                                  Size=record.size, UsageCount=record.usage_count,
                                  Description=record.description, RecordType=record.record_type,
                                  Shared=record.shared, Parents=list(record.parents))
    if record.created_at:
        out.CreatedAt.FromNanoseconds(int(record.created_at * 1e9))
    if record.last_used_at:
        out.LastUsedAt.FromNanoseconds(int(record.last_used_at * 1e9))
    return out
