"""What a frontend sees of the daemon: the LLBBridge API as a Python protocol.

A frontend written against :class:`FrontendClient` runs unchanged in-process (:class:`InProcessClient`,
straight onto the job's :class:`~buildkitpy.gateway.bridge.GatewayBridge`) and standalone in a
frontend image (:class:`buildkitpy.gateway.grpcclient.GrpcClient`, LLBBridge over stdio). Refs are
:class:`~buildkitpy.gateway.bridge.ResultRef` (an id and the definition it was solved from) and
results :class:`~buildkitpy.gateway.bridge.FrontendResult` on both paths.
"""

from __future__ import annotations

from typing import Any, Protocol

from buildkitpy.api import ops_pb2
from buildkitpy.gateway.bridge import FrontendResult, GatewayBridge
from buildkitpy.llb.platform import Platform


class FrontendClient(Protocol):
    # The build's client session (local sources, secrets, ...) and the frontend's options.
    session_id: str
    opts: dict[str, str]
    # The LLB caps the daemon accepts and the LLBBridge caps it serves.
    llb_caps: frozenset[str]
    gateway_caps: frozenset[str]
    # The worker's platforms, its default first: BUILDPLATFORM (BuildKit's BuildOpts().Workers).
    build_platforms: list[Platform]

    async def solve(self, *, definition: ops_pb2.Definition | None = None, frontend: str = "",
                    frontend_opt: dict[str, str] | None = None,
                    frontend_inputs: dict[str, ops_pb2.Definition] | None = None,
                    evaluate: bool = False) -> FrontendResult: ...

    async def read_file(self, ref_id: str, path: str, offset: int = 0, length: int = 0) -> bytes: ...

    async def resolve_image_config(self, ref: str, platform: Any = None, resolve_mode: str = "",
                                   log_name: str = "") -> tuple[str, bytes]: ...

    async def inputs(self) -> dict[str, ops_pb2.Definition]: ...

    async def warn(self, vertex: str, message: str, detail: list[bytes] | None = None, *,
                   level: int = 1, url: str = "", info: ops_pb2.SourceInfo | None = None,
                   ranges: list[ops_pb2.Range] | None = None) -> None: ...


class InProcessClient:
    """:class:`FrontendClient` for a frontend running inside the daemon."""

    def __init__(self, bridge: GatewayBridge, opts: dict[str, str],
                 inputs: dict[str, ops_pb2.Definition]) -> None:
        from buildkitpy import caps

        self._bridge = bridge
        self._inputs = dict(inputs)
        self.session_id = bridge.session_id
        self.opts = dict(opts)
        worker = bridge.solver.worker
        self.llb_caps = frozenset(c.ID for c in caps.llb_caps(can_exec=worker.executor is not None))
        self.gateway_caps = frozenset(c.ID for c in caps.gateway_caps())
        self.build_platforms = [Platform(p["os"], p["architecture"], p.get("variant", ""))
                                for p in worker.platforms]

    async def solve(self, *, definition: ops_pb2.Definition | None = None, frontend: str = "",
                    frontend_opt: dict[str, str] | None = None,
                    frontend_inputs: dict[str, ops_pb2.Definition] | None = None,
                    evaluate: bool = False) -> FrontendResult:
        return await self._bridge.solve(definition=definition, frontend=frontend,
                                        frontend_opt=frontend_opt, frontend_inputs=frontend_inputs,
                                        evaluate=evaluate)

    async def read_file(self, ref_id: str, path: str, offset: int = 0, length: int = 0) -> bytes:
        return await self._bridge.read_file(ref_id, path, offset, length)

    async def resolve_image_config(self, ref: str, platform: Any = None, resolve_mode: str = "",
                                   log_name: str = "") -> tuple[str, bytes]:
        return await self._bridge.resolve_image_config(ref, platform, resolve_mode, log_name)

    async def inputs(self) -> dict[str, ops_pb2.Definition]:
        return dict(self._inputs)

    async def warn(self, vertex: str, message: str, detail: list[bytes] | None = None, *,
                   level: int = 1, url: str = "", info: ops_pb2.SourceInfo | None = None,
                   ranges: list[ops_pb2.Range] | None = None) -> None:
        self._bridge.warn(vertex, message, detail, level=level, url=url, info=info, ranges=ranges)
