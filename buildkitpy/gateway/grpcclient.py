"""A frontend's side of LLBBridge over gRPC: :class:`GrpcClient` implements
:class:`~buildkitpy.gateway.client.FrontendClient`, and :func:`run_from_environment` is the main of a
frontend image, as BuildKit's grpcclient: options from ``BUILDKIT_FRONTEND_OPT_<n>=key=value``, the
session from ``BUILDKIT_SESSION_ID``, the connection on stdin/stdout, the outcome handed back with
``Return``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc

from buildkitpy.api import gateway_pb2, gateway_pb2_grpc, ops_pb2
from buildkitpy.errors import BuildkitpyError, from_rpc_status, to_rpc_status
from buildkitpy.gateway.bridge import FrontendResult, ResultRef, attestations_from_pb, attestations_to_pb
from buildkitpy.llb.platform import Platform

log = logging.getLogger(__name__)

OPT_PREFIX = "BUILDKIT_FRONTEND_OPT_"
STATUS_DETAILS_KEY = "grpc-status-details-bin"


def opts_from_environment(environ: Mapping[str, str]) -> dict[str, str]:
    opts: dict[str, str] = {}
    for name, value in environ.items():
        if name.startswith(OPT_PREFIX) and name[len(OPT_PREFIX):].isdigit():
            key, _, val = value.partition("=")
            opts[key] = val
    return opts


def _as_error(exc: grpc.aio.AioRpcError) -> BuildkitpyError:
    """The daemon's error with its rich status (vertex, source details) kept for Return."""
    from google.rpc import status_pb2

    for key, value in exc.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY:
            return from_rpc_status(status_pb2.Status.FromString(value))
    return from_rpc_status(status_pb2.Status(code=exc.code().value[0], message=exc.details() or ""))


class GrpcClient:
    def __init__(self, stub: gateway_pb2_grpc.LLBBridgeStub, opts: dict[str, str], session_id: str,
                 pong: gateway_pb2.PongResponse) -> None:
        self._stub = stub
        self.opts = opts
        self.session_id = session_id
        self.llb_caps = frozenset(c.ID for c in pong.LLBCaps if c.Enabled)
        self.gateway_caps = frozenset(c.ID for c in pong.FrontendAPICaps if c.Enabled)
        self.workers = list(pong.Workers)
        self.build_platforms = [Platform(p.OS, p.Architecture, p.Variant)
                                for p in (self.workers[0].platforms if self.workers else [])]

    @classmethod
    async def connect(cls, channel: grpc.aio.Channel, opts: dict[str, str], session_id: str) -> GrpcClient:
        stub = gateway_pb2_grpc.LLBBridgeStub(channel)
        pong = await cls._call(stub.Ping(gateway_pb2.PingRequest()))
        return cls(stub, opts, session_id, pong)

    @staticmethod
    async def _call(call: Awaitable[Any]) -> Any:
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            raise _as_error(exc) from None

    async def solve(self, *, definition: ops_pb2.Definition | None = None, frontend: str = "",
                    frontend_opt: dict[str, str] | None = None,
                    frontend_inputs: dict[str, ops_pb2.Definition] | None = None,
                    evaluate: bool = False) -> FrontendResult:
        request = gateway_pb2.SolveRequest(Frontend=frontend, FrontendOpt=frontend_opt or {},
                                           FrontendInputs=frontend_inputs or {}, Evaluate=evaluate,
                                           allowResultReturn=True, allowResultArrayRef=True)
        if definition is not None:
            request.Definition.CopyFrom(definition)
        response = await self._call(self._stub.Solve(request))
        return _result_from_pb(response.result)

    async def read_file(self, ref_id: str, path: str, offset: int = 0, length: int = 0) -> bytes:
        request = gateway_pb2.ReadFileRequest(Ref=ref_id, FilePath=path)
        if offset or length:
            request.Range.Offset = offset
            request.Range.Length = length
        return (await self._call(self._stub.ReadFile(request))).Data

    async def resolve_image_config(self, ref: str, platform: Any = None, resolve_mode: str = "",
                                   log_name: str = "") -> tuple[str, bytes]:
        request = gateway_pb2.ResolveImageConfigRequest(Ref=ref, ResolveMode=resolve_mode, LogName=log_name)
        if platform is not None:
            request.Platform.OS = platform.os
            request.Platform.Architecture = platform.architecture
            request.Platform.Variant = platform.variant or ""
        response = await self._call(self._stub.ResolveImageConfig(request))
        return response.Digest, response.Config

    async def inputs(self) -> dict[str, ops_pb2.Definition]:
        if "frontend.inputs" not in self.gateway_caps:
            return {}
        response = await self._call(self._stub.Inputs(gateway_pb2.InputsRequest()))
        return dict(response.Definitions)

    async def warn(self, vertex: str, message: str, detail: list[bytes] | None = None, *,
                   level: int = 1, url: str = "", info: ops_pb2.SourceInfo | None = None,
                   ranges: list[ops_pb2.Range] | None = None) -> None:
        await self._call(self._stub.Warn(gateway_pb2.WarnRequest(
            digest=vertex, level=level, short=message.encode(), detail=list(detail or ()), url=url,
            info=info, ranges=list(ranges or ()))))

    async def return_result(self, result: FrontendResult) -> None:
        await self._call(self._stub.Return(gateway_pb2.ReturnRequest(result=_result_to_pb(result))))

    async def return_error(self, err: BaseException) -> None:
        await self._call(self._stub.Return(gateway_pb2.ReturnRequest(error=to_rpc_status(err))))


def _result_from_pb(pb: gateway_pb2.Result) -> FrontendResult:
    def ref(r: gateway_pb2.Ref) -> ResultRef | None:
        return ResultRef(id=r.id, definition=getattr(r, "def")) if r.id else None

    metadata = dict(pb.metadata)
    attestations = attestations_from_pb(pb, ref)
    if pb.WhichOneof("result") == "refs":
        return FrontendResult(refs={k: ref(v) for k, v in pb.refs.refs.items()}, metadata=metadata,
                              attestations=attestations)
    return FrontendResult(ref=ref(pb.ref), metadata=metadata, attestations=attestations)


def _result_to_pb(result: FrontendResult) -> gateway_pb2.Result:
    def ref(r: ResultRef | None) -> gateway_pb2.Ref:
        return gateway_pb2.Ref(id=r.id, **{"def": r.definition}) if r is not None else gateway_pb2.Ref()

    out = gateway_pb2.Result(metadata=result.metadata)
    if result.refs is not None:
        for key, value in result.refs.items():
            out.refs.refs[key].CopyFrom(ref(value))
    else:
        out.ref.CopyFrom(ref(result.ref))
    attestations_to_pb(result, out)
    return out


Build = Callable[[GrpcClient], Awaitable[FrontendResult]]


async def run_from_environment(build: Build) -> int:
    """Run ``build`` as a frontend image's main: connect over stdio, build, Return. The exit status
    is 0 once the outcome (result or error) is handed over, 1 if even that failed."""
    from buildkitpy.errors import unwrap
    from buildkitpy.gateway.stdio import stdio_channel

    opts = opts_from_environment(os.environ)
    session_id = os.environ.get("BUILDKIT_SESSION_ID", "")
    async with stdio_channel() as channel:
        try:
            client = await GrpcClient.connect(channel, opts, session_id)
        except BuildkitpyError as exc:
            print(f"frontend: cannot reach the LLBBridge on stdio: {exc}", file=sys.stderr)
            return 1
        try:
            result = await build(client)
        except Exception as exc:  # noqa: BLE001 - every failure is handed to the daemon
            err = unwrap(exc)
            if not isinstance(err, BuildkitpyError):
                log.error("frontend failed", exc_info=err)
            await client.return_error(err)
            return 0
        await client.return_result(result)
        return 0
