"""``moby.buildkit.v1.Control``: the daemon's main API."""

from __future__ import annotations

import datetime
import functools
import logging

import grpc

from buildkitpy import __version__, exporter
from buildkitpy.api import control_pb2, control_pb2_grpc, ops_pb2, worker_pb2
from buildkitpy.errors import (
    BuildkitpyError,
    InvalidArgument,
    PermissionDenied,
    SessionNotFound,
    Unimplemented,
    abort_with,
)
from buildkitpy.gateway.bridge import GatewayBridge
from buildkitpy.jobs import Job, JobRegistry

log = logging.getLogger(__name__)

# Like BuildKit: Status waits this long for its Solve to appear.
STATUS_WAIT_SECONDS = 6.0
# Entitlements that need the daemon's allowance as well as the client's request.
INSECURE_ENTITLEMENTS = {"network.host", "security.insecure", "device"}


def _handled(method):
    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except BuildkitpyError as exc:
            await abort_with(context, exc)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad call never takes the daemon down
            log.exception("Control.%s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")

    return wrapper


def version_pb() -> worker_pb2.BuildkitVersion:
    return worker_pb2.BuildkitVersion(package="github.com/buildkitpy/buildkitpy", version=__version__,
                                      revision="", dockerfileVersion=__version__)


class ControlService(control_pb2_grpc.ControlServicer):
    def __init__(self, *, worker, solver, jobs: JobRegistry, sessions, worker_record) -> None:
        self.worker = worker
        self.solver = solver
        self.jobs = jobs
        self.sessions = sessions
        self._worker_record = worker_record

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
        records = [_usage_pb(u) for u in self.worker.disk_usage()]
        return control_pb2.DiskUsageResponse(record=records)

    async def Prune(self, request, context):
        try:
            removed = self.worker.prune(all=request.all, keep_duration_ns=request.keepDuration,
                                        filters=list(request.filter))
            for usage in removed:
                yield _usage_pb(usage)
        except BuildkitpyError as exc:
            await abort_with(context, exc)

    async def ListenBuildHistory(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "build history is not supported yet")

    @_handled
    async def UpdateBuildHistory(self, request, context):
        raise Unimplemented("build history is not supported yet")

    # -- sessions and builds ---------------------------------------------------------------------

    async def Session(self, request_iterator, context):
        async for msg in self.sessions.serve(request_iterator, context):
            yield msg

    async def Status(self, request, context):
        try:
            job = await self.jobs.get(request.Ref, STATUS_WAIT_SECONDS)
        except BuildkitpyError as exc:
            await abort_with(context, exc)
            return
        now = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
        await context.send_initial_metadata((("buildkit-current-timestamp", now),))
        async for msg in job.progress.subscribe():
            yield msg

    @_handled
    async def Solve(self, request, context):
        exporters = list(request.Exporters)
        if not exporters and request.ExporterDeprecated:
            exporters = [control_pb2.Exporter(Type=request.ExporterDeprecated,
                                              Attrs=request.ExporterAttrsDeprecated)]
        resolved = [exporter.resolve(e.Type) for e in exporters]  # unknown types fail before work
        if request.Cache.Exports or request.Cache.Imports or request.Cache.ExportRefDeprecated:
            raise Unimplemented("cache import/export is not supported yet")
        entitlements = frozenset(request.Entitlements)
        for ent in sorted(entitlements & INSECURE_ENTITLEMENTS):
            if ent not in self.worker.insecure_entitlements:
                raise PermissionDenied(
                    f"granting entitlement {ent} is not allowed by build daemon configuration")

        job = Job(ref=request.Ref, session_id=request.Session, frontend_attrs=dict(request.FrontendAttrs),
                  entitlements=entitlements)
        job.bridge = GatewayBridge(job, self.solver, frontend_inputs=dict(request.FrontendInputs))
        await self.jobs.create(job)
        try:
            session = None
            if request.Session and exporters:
                try:
                    session = await self.sessions.get(request.Session, timeout=5.0)
                except SessionNotFound:
                    session = None
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
            response: dict[str, str] = {}
            for index, (exp, run) in enumerate(zip(exporters, resolved, strict=True)):
                response.update(await run(exporter.ExportContext(
                    index=index, attrs=dict(exp.Attrs), result=result, bridge=job.bridge,
                    session=session, progress=job.progress)))
            return control_pb2.SolveResponse(ExporterResponse=response)
        finally:
            job.bridge.close()
            await self.jobs.finish(job)


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


def _usage_pb(usage) -> control_pb2.UsageRecord:
    rec = control_pb2.UsageRecord(ID=usage.id, Mutable=usage.mutable, InUse=usage.in_use,
                                  Size=usage.size, UsageCount=usage.usage_count,
                                  Description=usage.description, RecordType=usage.record_type,
                                  Shared=usage.shared, Parents=list(usage.parents))
    if usage.created_at:
        rec.CreatedAt.FromNanoseconds(int(usage.created_at * 1e9))
    if usage.last_used_at:
        rec.LastUsedAt.FromNanoseconds(int(usage.last_used_at * 1e9))
    return rec
