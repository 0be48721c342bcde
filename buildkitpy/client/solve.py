"""Running a build against the daemon, the way buildctl does it.

Two flows share one engine (:func:`_run`):

- :func:`build` — buildctl's ``client.Build``: ``Control.Solve`` with no frontend and no definition,
  while this client acts as the frontend over ``LLBBridge`` (``Ping``, ``Solve{Frontend or
  Definition}``, ``Return``) on the same connection, keyed by the ``buildkit-controlapi-buildid``
  header.
- :func:`solve` — the plain path of other clients: ``Control.Solve`` with ``Definition`` or
  ``Frontend`` + ``FrontendAttrs``, no LLBBridge.

Around the solve: a session serving the local dirs, outputs, secrets and registry auth, and a
``Control.Status`` stream feeding a progress callback. The status stream is allowed to drain after
the solve ends (EOF, or 5 s without messages) so the failing step is printed before the error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import grpc

from buildkitpy.api import control_pb2, gateway_pb2, ops_pb2
from buildkitpy.client.options import (
    EXPORTER_LOCAL,
    STDOUT_DEST,
    CacheOptionsEntry,
    ExportEntry,
    OptionError,
)
from buildkitpy.client.rpc_errors import (
    BuildkitError,
    from_rpc_error,
    from_status,
    status_from_rpc_error,
)

if TYPE_CHECKING:
    from buildkitpy.client.connection import Client

BUILD_ID_HEADER = "buildkit-controlapi-buildid"
PING_TIMEOUT = 15.0
# After Solve returns, a silent Status stream is given up after this long (as buildctl does).
STATUS_INACTIVITY_TIMEOUT = 5.0
# When our gateway part fails, Control.Solve should fail too; it gets this long to do so.
GATEWAY_FAILURE_GRACE = 5.0

_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"

StatusCallback = Callable[[control_pb2.StatusResponse], None]


def new_build_ref() -> str:
    """A random 25-character base36 id, like BuildKit's ``identity.NewID``."""
    value = secrets.randbits(128)
    digits = []
    while value:
        value, digit = divmod(value, 36)
        digits.append(_BASE36[digit])
    return "".join(reversed(digits)).rjust(25, "0")


@dataclass
class SolveOpt:
    """What to build and where results go (the fields of buildctl's ``client.SolveOpt`` we use)."""

    exports: list[ExportEntry] = field(default_factory=list)
    local_dirs: dict[str, Path] = field(default_factory=dict)
    frontend: str = ""
    frontend_attrs: dict[str, str] = field(default_factory=dict)
    cache_exports: list[CacheOptionsEntry] = field(default_factory=list)
    cache_imports: list[CacheOptionsEntry] = field(default_factory=list)
    secrets: dict[str, bytes] = field(default_factory=dict)
    ssh: list[Any] = field(default_factory=list)  # agents to forward (options.SSHAgentConfig)
    entitlements: list[str] = field(default_factory=list)
    ref: str = ""
    shared_key: str = ""
    internal: bool = False
    proxy_network: bool = False
    attachables: list[Any] = field(default_factory=list)  # extra session attachables
    registry_auth: bool = True
    # The id of a session some other client serves (the Engine API's /build with a client's
    # session): no session of our own is opened, so nothing above may need one.
    session_id: str = ""


@dataclass
class SolveResult:
    ref: str
    exporter_response: dict[str, str]
    # Metadata of the gateway result (build flow only), e.g. ``result.txt`` of a subrequest.
    gateway_metadata: dict[str, bytes] = field(default_factory=dict)


def ignore_cache_everywhere(definition: ops_pb2.Definition) -> None:
    """``--no-cache`` for an LLB definition: mark every op's metadata ``ignore_cache``."""
    for op_bytes in getattr(definition, "def"):
        dgst = "sha256:" + hashlib.sha256(op_bytes).hexdigest()
        definition.metadata[dgst].ignore_cache = True


def local_names_in(definition: ops_pb2.Definition) -> list[str]:
    """The ``local://<name>`` sources a definition reads."""
    names = []
    for op_bytes in getattr(definition, "def"):
        op = ops_pb2.Op()
        try:
            op.ParseFromString(op_bytes)
        except Exception as exc:  # protobuf raises DecodeError; keep the cause in the message
            raise OptionError(f"failed to parse llb proto op: {exc}") from exc
        if op.WhichOneof("op") == "source" and op.source.identifier.startswith("local://"):
            names.append(op.source.identifier[len("local://"):])
    return names


def dirs_shared_key(local_dirs: dict[str, Path]) -> str:
    """A session shared key naming this machine's local dirs (as buildx sets one): the daemon reuses
    its previous copy of a directory only for the same key, so unrelated trees are never diffed."""
    import socket

    names = sorted(f"{name}={Path(path).absolute()}" for name, path in local_dirs.items())
    if not names:
        return ""
    return hashlib.sha256("\0".join([socket.gethostname(), *names]).encode()).hexdigest()


def _synced_dirs(definition: ops_pb2.Definition | None, local_dirs: dict[str, Path]) -> dict[str, Path]:
    if definition is None:
        return dict(local_dirs)
    out = {}
    for name in local_names_in(definition):
        if name not in local_dirs:
            raise OptionError(f"local directory {name} not enabled")
        out[name] = local_dirs[name]
    return out


def _cache_entries(entries: list[CacheOptionsEntry]) -> list[control_pb2.CacheOptionsEntry]:
    return [control_pb2.CacheOptionsEntry(Type=e.type, Attrs=e.attrs) for e in entries]


def _frontend_attrs(opt: SolveOpt, *, gateway: bool) -> dict[str, str]:
    attrs = dict(opt.frontend_attrs)
    if (opt.frontend or gateway) and opt.cache_imports:
        attrs["cache-imports"] = json.dumps([{"Type": e.type, "Attrs": e.attrs} for e in opt.cache_imports],
                                            separators=(",", ":"))
    return attrs


def solve_request(opt: SolveOpt, *, ref: str, session_id: str, definition: ops_pb2.Definition | None,
                  gateway: bool) -> control_pb2.SolveRequest:
    """The ``Control.Solve`` request, field for field like buildctl's."""
    req = control_pb2.SolveRequest(
        Ref=ref,
        Session=session_id,
        Frontend="" if gateway else opt.frontend,
        FrontendAttrs=_frontend_attrs(opt, gateway=gateway),
        Cache=control_pb2.CacheOptions(Exports=_cache_entries(opt.cache_exports),
                                       Imports=_cache_entries(opt.cache_imports)),
        Entitlements=list(opt.entitlements),
        Internal=opt.internal,
        ProxyNetwork=opt.proxy_network,
    )
    if definition is not None and not gateway:
        req.Definition.CopyFrom(definition)
    for i, ex in enumerate(opt.exports):
        req.Exporters.add(Type=ex.type, Attrs=ex.attrs)
        if i == 0:
            req.ExporterDeprecated = ex.type
            req.ExporterAttrsDeprecated.update(ex.attrs)
    return req


class _Outputs:
    """The FileSend targets of the exporters that write back to us, keyed by exporter index."""

    def __init__(self, exports: list[ExportEntry]) -> None:
        self.exports = exports

    def targets(self) -> dict[str | int, Any]:
        from buildkitpy.session import filesync

        targets: dict[str | int, Any] = {}
        for i, ex in enumerate(self.exports):
            if ex.output_dir is not None:
                if ex.type != EXPORTER_LOCAL:
                    raise OptionError(f"output directory is not supported by {ex.type} exporter")
                targets[str(i)] = filesync.LocalDirTarget(ex.output_dir)
            elif ex.output_file == STDOUT_DEST:
                targets[str(i)] = filesync.WriterTarget(sys.stdout.buffer)
            elif ex.output_file is not None:
                targets[str(i)] = filesync.FileTarget(ex.output_file)
        return targets

    def close(self) -> None:
        sys.stdout.flush()


def _attachables(opt: SolveOpt, dirs: dict[str, Path], send_targets: Mapping[str | int, Any]) -> list[Any]:
    from buildkitpy.session import filesync
    from buildkitpy.session.secrets import SecretsAttachable

    out: list[Any] = []
    if opt.registry_auth:
        try:
            from buildkitpy.session.auth import AuthAttachable
        except ImportError:  # registry auth is optional for local builds
            pass
        else:
            out.append(AuthAttachable())
    if dirs:
        out.append(filesync.FileSyncAttachable(dirs))
    if send_targets:
        out.append(filesync.FileSendAttachable(send_targets))
    if opt.secrets:
        out.append(SecretsAttachable(opt.secrets))
    if opt.ssh:
        from buildkitpy.session.sshforward import SSHAttachable, SSHConfigError, configs_from

        try:
            out.append(SSHAttachable(configs_from(opt.ssh)))
        except SSHConfigError as exc:
            raise OptionError(str(exc)) from None
    out.extend(opt.attachables)
    return out


async def build(client: Client, opt: SolveOpt, *, definition: ops_pb2.Definition | None = None,
                on_status: StatusCallback | None = None) -> SolveResult:
    """buildctl's ``client.Build``: this client is the frontend through LLBBridge.

    ``LLBBridge.Solve`` gets ``opt.frontend`` with the attrs, or ``definition`` when there is no
    frontend; its result is handed back with ``Return``.
    """
    if not opt.frontend and definition is None:
        raise OptionError("please specify --frontend or pipe LLB definition to stdin")
    try:
        await client.list_workers()
    except BuildkitError as exc:
        raise exc.with_context("listing workers for Build") from None
    return await _run(client, opt, definition, gateway=True, on_status=on_status)


async def solve(client: Client, opt: SolveOpt, *, definition: ops_pb2.Definition | None = None,
                on_status: StatusCallback | None = None) -> SolveResult:
    """``Control.Solve`` alone: ``definition`` xor ``opt.frontend``."""
    if not opt.frontend and definition is None:
        raise OptionError("invalid empty definition")
    if opt.frontend and definition is not None:
        raise OptionError(f"invalid definition for frontend {opt.frontend}")
    return await _run(client, opt, definition, gateway=False, on_status=on_status)


async def _run(client: Client, opt: SolveOpt, definition: ops_pb2.Definition | None, *, gateway: bool,
               on_status: StatusCallback | None) -> SolveResult:
    from buildkitpy.client import cachedirs
    from buildkitpy.client.connection import MAX_MESSAGE_SIZE
    from buildkitpy.session.client import ClientSession

    if definition is not None and definition.ByteSize() > MAX_MESSAGE_SIZE:
        raise OptionError(f"the LLB definition is {definition.ByteSize() / (1 << 20):.1f} MiB, more than "
                          f"the {MAX_MESSAGE_SIZE >> 20} MiB one gRPC message to the daemon can carry "
                          "(buildkitd's limit too)")
    ref = opt.ref or new_build_ref()
    dirs = _synced_dirs(None if gateway else definition, opt.local_dirs)
    outputs = _Outputs(opt.exports)
    attachables: list[Any] = []
    try:
        attachables = _attachables(opt, dirs, outputs.targets())
        try:
            cache_dirs = cachedirs.prepare(opt.cache_exports, opt.cache_imports)
        except cachedirs.CacheDirError as exc:
            raise OptionError(str(exc)) from None
        if cache_dirs is not None:
            attachables.append(cache_dirs)
        session: ClientSession | None = None
        if opt.session_id:
            if attachables:
                raise OptionError("a build in a session another client serves cannot also serve local "
                                  "dirs, outputs, secrets or registry auth")
        else:
            session = ClientSession(attachables, shared_key=opt.shared_key or dirs_shared_key(opt.local_dirs))
        session_id = opt.session_id if session is None else session.session_id
        request = solve_request(opt, ref=ref, session_id=session_id, definition=definition, gateway=gateway)
        run = _BuildRun(client, ref, on_status)
        async with anyio.create_task_group() as tg:
            tg.start_soon(run.pump_status)
            try:
                running: Any = contextlib.nullcontext()
                if session is not None:
                    running = (session.run(client.control) if client.session_dialer is None
                               else session.run_dialed(client.session_dialer))
                async with running:
                    async with anyio.create_task_group() as solving:
                        if gateway:
                            solving.start_soon(run.act_as_frontend, opt, definition, request.FrontendAttrs,
                                               solving.cancel_scope)
                        await run.control_solve(request, solving.cancel_scope)
            except BuildkitError as exc:
                run.solve_error = run.solve_error or exc
            except grpc.RpcError as exc:
                run.solve_error = run.solve_error or from_rpc_error(exc, context="failed to solve")
            except Exception as exc:
                if run.solve_error is None:
                    run.solve_error = BuildkitError(str(exc) or type(exc).__name__,
                                                    context="failed to start session")
            finally:
                run.solve_done.set()
    finally:
        outputs.close()
        for attachable in attachables:  # e.g. the private ssh-agent of forwarded key files
            close = getattr(attachable, "close", None)
            if callable(close):
                close()
    error = run.solve_error or run.gateway_error or run.status_error
    if error is not None:
        raise error
    assert run.response is not None
    cachedirs.finish(opt.cache_exports, dict(run.response.ExporterResponse))
    return SolveResult(ref=ref, exporter_response=dict(run.response.ExporterResponse),
                       gateway_metadata=run.gateway_metadata)


class _BuildRun:
    """The concurrent parts of one build and what each ended with."""

    def __init__(self, client: Client, ref: str, on_status: StatusCallback | None) -> None:
        self.client = client
        self.ref = ref
        self.on_status = on_status
        self.solve_done = anyio.Event()
        self.response: control_pb2.SolveResponse | None = None
        self.solve_error: BaseException | None = None
        self.gateway_error: BaseException | None = None
        self.status_error: BaseException | None = None
        self.gateway_metadata: dict[str, bytes] = {}
        self._last_status = time.monotonic()

    async def control_solve(self, request: control_pb2.SolveRequest, scope: anyio.CancelScope) -> None:
        try:
            self.response = await self.client.control.Solve(request)
        except grpc.RpcError as exc:
            self.solve_error = from_rpc_error(exc, context="failed to solve")
            scope.cancel()  # the frontend part has nothing left to do
        finally:
            self.solve_done.set()

    async def pump_status(self) -> None:
        call = self.client.control.Status(control_pb2.StatusRequest(Ref=self.ref))
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._stop_when_idle, tg.cancel_scope)
            try:
                async for msg in call:
                    self._last_status = time.monotonic()
                    if self.on_status is not None:
                        self.on_status(msg)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.CANCELLED:
                    self.status_error = from_rpc_error(exc, context="failed to receive status")
            finally:
                call.cancel()
            tg.cancel_scope.cancel()

    async def _stop_when_idle(self, scope: anyio.CancelScope) -> None:
        await self.solve_done.wait()
        self._last_status = max(self._last_status, time.monotonic() - STATUS_INACTIVITY_TIMEOUT / 2)
        while True:
            idle = time.monotonic() - self._last_status
            if idle >= STATUS_INACTIVITY_TIMEOUT:
                scope.cancel()
                return
            await anyio.sleep(STATUS_INACTIVITY_TIMEOUT - idle)

    async def act_as_frontend(self, opt: SolveOpt, definition: ops_pb2.Definition | None,
                              frontend_attrs: Any, scope: anyio.CancelScope) -> None:
        try:
            await self._gateway(opt, definition, dict(frontend_attrs))
        except BuildkitError as exc:
            self.gateway_error = exc.with_context("failed to run Build function")
        except grpc.RpcError as exc:
            self.gateway_error = from_rpc_error(exc, context="failed to run Build function")
        else:
            return
        # Control.Solve should fail on its own now; give it a moment, then stop waiting.
        with anyio.move_on_after(GATEWAY_FAILURE_GRACE):
            await self.solve_done.wait()
        scope.cancel()

    async def _gateway(self, opt: SolveOpt, definition: ops_pb2.Definition | None,
                       frontend_opt: dict[str, str]) -> None:
        md = ((BUILD_ID_HEADER, self.ref),)
        bridge = self.client.gateway
        pong = await bridge.Ping(gateway_pb2.PingRequest(), metadata=md, timeout=PING_TIMEOUT)
        caps = {c.ID for c in pong.FrontendAPICaps if c.Enabled}
        if pong.FrontendAPICaps and "return" not in caps:
            raise BuildkitError("the daemon's gateway API lacks the \"return\" capability")

        subrequest = "requestid" in frontend_opt
        if subrequest and "frontend.caps" not in frontend_opt:
            frontend_opt["frontend.caps"] = "moby.buildkit.frontend.subrequests"
        req = gateway_pb2.SolveRequest(Frontend=opt.frontend, FrontendOpt=frontend_opt,
                                       allowResultReturn=True, allowResultArrayRef=True)
        for e in opt.cache_imports:
            req.CacheImports.add(Type=e.type, Attrs=e.attrs)
        if definition is not None:
            req.Definition.CopyFrom(definition)

        try:
            resp = await bridge.Solve(req, metadata=md)
        except grpc.RpcError as exc:
            st = status_from_rpc_error(exc)
            await bridge.Return(gateway_pb2.ReturnRequest(error=st), metadata=md)
            raise from_status(st) from None

        result = gateway_pb2.Result()
        if resp.HasField("result"):
            result.CopyFrom(resp.result)
        elif resp.ref:
            result.ref.id = resp.ref
        if result.WhichOneof("result") is None:
            result.ref.SetInParent()
        if subrequest:
            self.gateway_metadata = dict(result.metadata)
        await bridge.Return(gateway_pb2.ReturnRequest(result=result), metadata=md)
