"""``moby.buildkit.v1.frontend.LLBBridge`` over gRPC: a thin adapter onto ``GatewayBridge``.

On the daemon's sockets the bridge is found through the ``buildkit-controlapi-buildid`` metadata
that buildctl/buildx send with every call of a client-side build; for a frontend container the
service is bound to one bridge directly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc

from buildkitpy import caps
from buildkitpy.api import gateway_pb2, gateway_pb2_grpc
from buildkitpy.errors import NotFound, Unimplemented, abort_for, from_rpc_status, unary_handler
from buildkitpy.gateway import containers
from buildkitpy.gateway.bridge import FrontendResult, GatewayBridge

log = logging.getLogger(__name__)

BUILD_ID_METADATA = "buildkit-controlapi-buildid"
# BuildKit's forwarder waits this long for the Solve carrying the same ref to register.
BUILD_ID_WAIT_SECONDS = 3.0

BridgeResolver = Callable[[grpc.aio.ServicerContext], Awaitable[GatewayBridge]]


_handled = unary_handler("LLBBridge")


def jobs_resolver(jobs) -> BridgeResolver:
    """Find the bridge of the client-side build named by the call's build-id metadata."""

    async def resolve(context: grpc.aio.ServicerContext) -> GatewayBridge:
        build_id = ""
        for key, value in context.invocation_metadata() or ():
            if key.lower() == BUILD_ID_METADATA:
                build_id = value
        if not build_id:
            raise NotFound(f"no {BUILD_ID_METADATA} metadata: LLBBridge calls must name their build")
        try:
            job = await jobs.get(build_id, BUILD_ID_WAIT_SECONDS, include_finished=False)
        except NotFound:
            raise NotFound(f"no active build with id {build_id}") from None
        if job.bridge is None:
            raise NotFound(f"build {build_id} is not a gateway build")
        return job.bridge

    return resolve


class LLBBridgeService(gateway_pb2_grpc.LLBBridgeServicer):
    def __init__(self, resolve_bridge: BridgeResolver, worker_records: Callable[[], list],
                 can_exec: Callable[[], bool]) -> None:
        self._resolve = resolve_bridge
        self._worker_records = worker_records
        self._can_exec = can_exec

    @_handled
    async def Ping(self, request, context):
        await self._resolve(context)
        return gateway_pb2.PongResponse(FrontendAPICaps=caps.gateway_caps(),
                                        LLBCaps=caps.llb_caps(can_exec=self._can_exec()),
                                        Workers=self._worker_records())

    @_handled
    async def Solve(self, request, context):
        bridge = await self._resolve(context)
        result = await bridge.solve(
            definition=request.Definition if request.HasField("Definition") else None,
            frontend=request.Frontend, frontend_opt=dict(request.FrontendOpt),
            frontend_inputs=dict(request.FrontendInputs), evaluate=request.Evaluate)
        if request.Final:
            raise Unimplemented("the legacy Final solve path is not supported; use Return")
        if request.allowResultReturn:
            pb = bridge.to_pb(result)
            if not request.allowResultArrayRef:
                pb = _legacy_refs(pb)
            return gateway_pb2.SolveResponse(result=pb)
        ref = result.ref.id if result.ref is not None else ""
        return gateway_pb2.SolveResponse(ref=ref)

    @_handled
    async def Return(self, request, context):
        bridge = await self._resolve(context)
        if request.HasField("error") and request.error.code != 0:
            bridge.set_return(error=from_rpc_status(request.error))
        else:
            result = bridge.from_pb(request.result) if request.HasField("result") else FrontendResult()
            bridge.set_return(result)
        return gateway_pb2.ReturnResponse()

    @_handled
    async def ReadFile(self, request, context):
        bridge = await self._resolve(context)
        data = await bridge.read_file(request.Ref, request.FilePath,
                                      request.Range.Offset if request.HasField("Range") else 0,
                                      request.Range.Length if request.HasField("Range") else 0)
        return gateway_pb2.ReadFileResponse(Data=data)

    @_handled
    async def ReadDir(self, request, context):
        bridge = await self._resolve(context)
        entries = await bridge.read_dir(request.Ref, request.DirPath, request.IncludePattern)
        return gateway_pb2.ReadDirResponse(entries=entries)

    @_handled
    async def StatFile(self, request, context):
        bridge = await self._resolve(context)
        return gateway_pb2.StatFileResponse(stat=await bridge.stat_file(request.Ref, request.Path))

    @_handled
    async def Evaluate(self, request, context):
        bridge = await self._resolve(context)
        ref = bridge.ref(request.Ref)
        if ref is not None:
            await bridge.evaluate(ref)
        return gateway_pb2.EvaluateResponse()

    @_handled
    async def Inputs(self, request, context):
        bridge = await self._resolve(context)
        return gateway_pb2.InputsResponse(Definitions=bridge.frontend_inputs)

    @_handled
    async def Warn(self, request, context):
        bridge = await self._resolve(context)
        bridge.warn(request.digest, request.short.decode(errors="replace"), list(request.detail),
                    level=request.level, url=request.url,
                    info=request.info if request.HasField("info") else None, ranges=list(request.ranges))
        return gateway_pb2.WarnResponse()

    @_handled
    async def ResolveImageConfig(self, request, context):
        bridge = await self._resolve(context)
        digest, config = await bridge.resolve_image_config(request.Ref, _platform(request),
                                                           request.ResolveMode, request.LogName)
        return gateway_pb2.ResolveImageConfigResponse(Digest=digest, Config=config, Ref=request.Ref)

    @_handled
    async def ResolveSourceMeta(self, request, context):
        bridge = await self._resolve(context)
        identifier = request.Source.identifier
        if not identifier.startswith("docker-image://"):
            raise Unimplemented(f"resolving source metadata of {identifier.split(':', 1)[0]!r} sources "
                                "is not supported yet")
        ref = identifier[len("docker-image://"):]
        digest, config = await bridge.resolve_image_config(ref, _platform(request), request.ResolveMode,
                                                           request.LogName)
        return gateway_pb2.ResolveSourceMetaResponse(
            Source=request.Source,
            Image=gateway_pb2.ResolveSourceImageResponse(Digest=digest, Config=config))

    @_handled
    async def NewContainer(self, request, context):
        bridge = await self._resolve(context)
        await containers.new_container(bridge, request)
        return gateway_pb2.NewContainerResponse()

    @_handled
    async def ReleaseContainer(self, request, context):
        bridge = await self._resolve(context)
        await containers.release_container(bridge, request.ContainerID)
        return gateway_pb2.ReleaseContainerResponse()

    async def ExecProcess(self, request_iterator, context):
        try:
            bridge = await self._resolve(context)
        except BaseException as exc:  # noqa: BLE001
            await abort_for(context, exc, "LLBBridge.ExecProcess")
            return
        outgoing: asyncio.Queue[gateway_pb2.ExecMessage | None] = asyncio.Queue(maxsize=64)

        async def run() -> None:
            try:
                await containers.exec_process(bridge, request_iterator, outgoing.put)
            finally:
                await outgoing.put(None)

        task = asyncio.ensure_future(run())
        try:
            while (msg := await outgoing.get()) is not None:
                yield msg
            await task
        except BaseException as exc:  # noqa: BLE001
            task.cancel()
            if isinstance(exc, asyncio.CancelledError | GeneratorExit):
                raise
            await abort_for(context, exc, "LLBBridge.ExecProcess")

    @_handled
    async def ReadFileContainer(self, request, context):
        raise Unimplemented("interactive containers (gateway.exec) are not supported yet")

    @_handled
    async def ReadDirContainer(self, request, context):
        raise Unimplemented("interactive containers (gateway.exec) are not supported yet")

    @_handled
    async def StatFileContainer(self, request, context):
        raise Unimplemented("interactive containers (gateway.exec) are not supported yet")


def _platform(request):
    """The request's platform as ours, or None for the worker's default."""
    if not request.HasField("Platform") or not request.Platform.OS:
        return None
    from buildkitpy.llb.platform import Platform

    p = request.Platform
    return Platform(p.OS, p.Architecture, p.Variant)


def _legacy_refs(pb: gateway_pb2.Result) -> gateway_pb2.Result:
    """Rewrite ref/refs into the id-only forms for clients without ``proto.refarray``."""
    out = gateway_pb2.Result(metadata=pb.metadata)
    if pb.WhichOneof("result") == "refs":
        for key, ref in pb.refs.refs.items():
            out.refsDeprecated.refs[key] = ref.id
    else:
        out.refDeprecated = pb.ref.id
    return out
