"""``gateway.v0``: run a frontend image in a container and serve it LLBBridge over its stdio.

As BuildKit's gateway frontend: the image named by the ``source`` option is resolved and pulled
through the worker's registry client, its entrypoint (default ``/run``) runs in a runc container
with the image's env and working directory plus ``BUILDKIT_FRONTEND_OPT_<n>=key=value`` for every
option, ``BUILDKIT_SESSION_ID``, ``BUILDKIT_WORKERS`` and ``BUILDKIT_EXPORTEDPRODUCT``, and the
frontend's own definition at ``/run/config/buildkit/metadata/frontend.bin``. The image's
``moby.buildkit.frontend.caps`` label must cover the caps the build asks for (``frontend.caps``,
and ``moby.buildkit.frontend.inputs`` when inputs are passed). Unlike BuildKit (which uses the
worker's network unless the image has ``moby.buildkit.frontend.network.none``), frontends get no
network: everything they need goes through the bridge.

The frontend talks to a child of the build's bridge (its own inputs, Return and containers; the
build's refs), so what it returns stays valid after its container is gone. A frontend that exits
without returning, writes something that is not gRPC, or is cancelled fails the build with a clear
error; its container and every container it created are removed in all cases.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import grpc

from buildkitpy import llb
from buildkitpy.api import gateway_pb2_grpc, ops_pb2, worker_pb2
from buildkitpy.errors import BuildkitpyError, InvalidArgument, SolveError, Unimplemented
from buildkitpy.gateway.bridge import FrontendResult, GatewayBridge

log = logging.getLogger(__name__)

FRONTEND_NAME = "gateway.v0"
EXPORTED_PRODUCT = "buildkit"  # what frontends compare against, as buildkitd sets it
METADATA_MOUNT = "/run/config/buildkit/metadata"
CAPS_LABEL = "moby.buildkit.frontend.caps"
NETWORK_NONE_LABEL = "moby.buildkit.frontend.network.none"
INPUTS_CAP = "moby.buildkit.frontend.inputs"
# After Return, a frontend gets this long to exit before it is killed.
EXIT_GRACE_SECONDS = 10.0
_STDERR_TAIL_LINES = 20


class FrontendFailed(SolveError):
    """The frontend process ended without handing over a result."""


def register(worker_records: Callable[[], list[worker_pb2.WorkerRecord]]) -> None:
    """Make ``gateway.v0`` (and so ``# syntax=``) available; ``worker_records`` is what
    ``BUILDKIT_WORKERS`` and the frontend's ``Ping`` describe."""
    from buildkitpy.gateway import bridge

    runner = ContainerFrontend(worker_records)
    bridge.FRONTENDS[FRONTEND_NAME] = runner.solve


def _named_context_override(source: str, opts: dict[str, str]) -> str:
    """The image a ``context:NAME`` option (``--build-context``) puts in place of the frontend
    image, looked up as BuildKit does (familiar name, ``::platform`` first)."""
    try:  # the name dockerui's NamedContext looks up: the familiar name without ":latest"
        name = llb.reference.parse_normalized(source).familiar().removesuffix(":latest")
    except (ValueError, llb.LLBError) as exc:
        raise InvalidArgument(f"invalid context name {source}: {exc}") from None
    platform = llb.default_platform().normalized()
    for key in (f"context:{name}::{platform}", f"context:{name}"):
        spec = opts.get(key)
        if spec is None:
            continue
        kind, _, value = spec.partition(":")
        if kind != "docker-image":
            raise Unimplemented(f"frontend image {source}: only docker-image:// named contexts can replace "
                                f"a frontend image (got {spec})")
        return value.removeprefix("//")
    return source


def _caps_set(value: str) -> set[str]:
    return {c.strip() for c in value.split(",") if c.strip()}


def _workers_json(records: list[worker_pb2.WorkerRecord]) -> str:
    """``BUILDKIT_WORKERS``: BuildKit's ``[]client.WorkerInfo`` JSON."""
    return json.dumps([{
        "ID": r.ID, "Labels": dict(r.Labels),
        "Platforms": [{"architecture": p.Architecture, "os": p.OS,
                       **({"variant": p.Variant} if p.Variant else {})} for p in r.platforms],
    } for r in records], separators=(",", ":"))


class ContainerFrontend:
    def __init__(self, worker_records: Callable[[], list[worker_pb2.WorkerRecord]]) -> None:
        self._worker_records = worker_records

    async def solve(self, bridge: GatewayBridge, opts: dict[str, str],
                    inputs: dict[str, ops_pb2.Definition]) -> FrontendResult:
        source = opts.get("source", "")
        if not source:
            raise InvalidArgument("no source specified for gateway")
        source = _named_context_override(source, opts)
        worker = bridge.solver.worker
        if worker.executor is None:
            raise Unimplemented(f"frontend image {source}: running frontend images needs runc, which "
                                "this daemon does not have")
        try:
            image_ref = llb.reference.parse_normalized(source)
        except InvalidArgument as exc:
            raise InvalidArgument(f"invalid frontend image {source!r}: {exc}") from None
        digest, config_bytes = await bridge.resolve_image_config(source)
        try:
            image_config = json.loads(config_bytes).get("config") or {}
        except (ValueError, AttributeError):
            raise InvalidArgument(f"frontend image {source}: its image config is not valid JSON") from None
        labels = image_config.get("Labels") or {}
        self._check_caps(source, labels, opts, inputs)

        pinned = f"{image_ref.name}@{digest}" if digest else source
        state = llb.image(pinned)
        definition = llb.marshal(state)
        image = bridge.new_ref(definition)
        assert image is not None
        snapshot = await bridge.evaluate(image)

        args = list(image_config.get("Entrypoint") or []) or ["/run"]
        env = list(image_config.get("Env") or [])
        env += [f"BUILDKIT_FRONTEND_OPT_{i}={k}={v}" for i, (k, v) in enumerate(opts.items())]
        env += [f"BUILDKIT_SESSION_ID={bridge.session_id}",
                f"BUILDKIT_WORKERS={_workers_json(self._worker_records())}",
                f"BUILDKIT_EXPORTEDPRODUCT={EXPORTED_PRODUCT}"]
        child = bridge.child(frontend_inputs=inputs)
        try:
            return await self._run(bridge, child, source, snapshot, definition, args, env,
                                   image_config.get("WorkingDir") or "/")
        finally:
            with anyio.CancelScope(shield=True):
                await child.release_containers()
            child.close()

    @staticmethod
    def _check_caps(source: str, labels: dict[str, str], opts: dict[str, str],
                    inputs: dict[str, ops_pb2.Definition]) -> None:
        offered = _caps_set(labels.get(CAPS_LABEL, ""))
        wanted = _caps_set(opts.get("frontend.caps", ""))
        if inputs:
            wanted.add(INPUTS_CAP)
        for cap in sorted(wanted - offered):
            raise Unimplemented(f"unsupported frontend capability {cap} (frontend image {source})")

    async def _run(self, bridge: GatewayBridge, child: GatewayBridge, source: str, snapshot: Any,
                   definition: ops_pb2.Definition, args: list[str], env: list[str],
                   cwd: str) -> FrontendResult:
        from buildkitpy.executor.spec import ExecSpec, Mount, NetworkMode
        from buildkitpy.gateway.service import LLBBridgeService
        from buildkitpy.gateway.stdio import serve_over_pipes
        from buildkitpy.solver.asyncutil import blocking

        worker = bridge.solver.worker

        async def resolve(_context: grpc.aio.ServicerContext) -> GatewayBridge:
            return child

        def add_services(server: grpc.aio.Server) -> None:
            gateway_pb2_grpc.add_LLBBridgeServicer_to_server(
                LLBBridgeService(resolve, self._worker_records, lambda: True), server)

        stderr_tail: deque[bytes] = deque(maxlen=_STDERR_TAIL_LINES)
        partial = bytearray()

        def on_stderr(chunk: bytes) -> None:
            partial.extend(chunk)
            *lines, rest = bytes(partial).split(b"\n")
            stderr_tail.extend(lines)
            partial[:] = rest[-4096:]
            for line in lines:
                log.debug("frontend %s: %s", source, line.decode(errors="replace"))

        rootfs_snapshot = await blocking(worker.snapshots.new_mutable, snapshot, f"frontend {source}")
        try:
            with tempfile.TemporaryDirectory(prefix="frontend-metadata-", dir=worker.root) as md:
                Path(md, "frontend.bin").write_bytes(definition.SerializeToString())
                Path(md, "frontend.bin").chmod(0o400)
                mount = rootfs_snapshot.mount()
                rootfs = Path(await blocking(mount.__enter__))
                try:
                    spec = ExecSpec(rootfs=rootfs, args=args, env=env, cwd=cwd,
                                    network=NetworkMode.NONE,
                                    mounts=[Mount(md, METADATA_MOUNT, "bind",
                                                  ("rbind", "ro", "nosuid", "nodev", "noexec"))])
                    async with serve_over_pipes(add_services, worker.root / "frontend-sockets") as conn:
                        code = await self._run_until_returned(worker, spec, conn, child, on_stderr)
                finally:
                    await blocking(mount.__exit__, None, None, None)
        finally:
            with anyio.CancelScope(shield=True):
                await blocking(rootfs_snapshot.release)
        if partial:
            stderr_tail.append(bytes(partial))
        if child.has_returned():
            return await child.wait_return()
        tail = b"\n".join(stderr_tail).decode(errors="replace").strip()
        if conn.closed_by_server.is_set() and conn.received:
            why = "wrote data that is not the gateway's gRPC protocol to its stdout"
        else:
            why = f"exited with code {code} without returning a result"
        raise FrontendFailed(f"frontend {source} {why}" + (f"; its last output:\n{tail}" if tail else ""))

    @staticmethod
    async def _run_until_returned(worker: Any, spec: Any, conn: Any, child: GatewayBridge,
                                  on_stderr: Callable[[bytes], None]) -> int:
        """Run the frontend until it exits, it has returned and had its grace period, or its
        connection broke (garbage on stdout: then it is killed)."""
        code = -1
        async with anyio.create_task_group() as tg:
            async def run() -> None:
                nonlocal code
                try:
                    code = await worker.executor.run(spec, stdout=conn.feed, stderr=on_stderr,
                                                     stdin=conn.output())
                except BuildkitpyError as exc:
                    raise SolveError(f"frontend container failed to start: {exc}") from None
                tg.cancel_scope.cancel()

            async def watch() -> None:
                await conn.closed_by_server.wait()
                # the server hung up on it: whatever it does next cannot reach us
                await anyio.sleep(0.5)
                code_when_killed = 137
                nonlocal code
                code = code_when_killed
                tg.cancel_scope.cancel()

            async def grace_after_return() -> None:
                await child.wait_returned()
                await anyio.sleep(EXIT_GRACE_SECONDS)
                tg.cancel_scope.cancel()

            tg.start_soon(run)
            tg.start_soon(watch)
            tg.start_soon(grace_after_return)
        return code
