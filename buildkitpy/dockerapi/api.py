"""The Engine API endpoints: system, build, build cache. Image endpoints are in ``images``.

The API is a client of this daemon's own Control API (over a private unix socket), as the Docker
Engine is of its embedded BuildKit: builds, prune and disk usage go through the same code paths as
buildctl's, and the image store records what the builds export.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import shutil
import socket
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from buildkitpy import __version__
from buildkitpy.dockerapi import buildkit as buildkit_path
from buildkitpy.dockerapi import remote
from buildkitpy.dockerapi.classic import BuildFailed, ClassicBuild, tag_names
from buildkitpy.dockerapi.contexttar import extract, spool
from buildkitpy.dockerapi.http import ClientGone, HTTPError, Request
from buildkitpy.dockerapi.imagestore import ImageStore
from buildkitpy.dockerapi.limits import BuildCgroups
from buildkitpy.dockerapi.options import BUILDER_BUILDKIT, BuildOptions, bool_arg
from buildkitpy.dockerapi.remote import is_git_url, is_url
from buildkitpy.dockerapi.server import (
    API_VERSION,
    ENGINE_VERSION,
    MIN_API_VERSION,
    Router,
    response_headers,
)
from buildkitpy.errors import BuildkitpyError, InvalidArgument, Unimplemented

if TYPE_CHECKING:
    from buildkitpy.client.connection import Client
    from buildkitpy.session.manager import SessionManager
    from buildkitpy.worker import Worker

log = logging.getLogger(__name__)


@dataclass
class RunningBuild:
    id: str
    scope: anyio.CancelScope
    cancelled: bool = False  # by POST /build/cancel
    client_gone: bool = False  # the client closed its connection


# moby's two-request build: POST /build?version=2&remote=upload-request&buildid=X waits for
# POST /build?version=2&buildid=upload-request:X, whose body is the context (each waits 5 s for the other).
UPLOAD_REQUEST = "upload-request"
UPLOAD_PREFIX = UPLOAD_REQUEST + ":"
UPLOAD_WAIT = 5.0


@dataclass
class Upload:
    archive: Path | None = None
    delivered: anyio.Event = field(default_factory=anyio.Event)
    consumed: anyio.Event = field(default_factory=anyio.Event)


@dataclass
class EngineAPI:
    """What the handlers share: our Control API client, the image store and the running builds."""

    root: Path  # <daemon root>/dockerapi
    control: Client
    images: ImageStore
    worker: Worker
    sessions: SessionManager
    control_socket: str  # path of the Control API's private socket
    builds: dict[str, RunningBuild] = field(default_factory=dict)
    uploads: dict[str, Upload] = field(default_factory=dict)  # by build id
    cgroups: BuildCgroups = field(default_factory=BuildCgroups)

    def router(self) -> Router:
        from buildkitpy.dockerapi import images

        r = Router()
        r.add("GET", "/_ping", self.ping)
        r.add("HEAD", "/_ping", self.ping)
        r.add("GET", "/version", self.version)
        r.add("GET", "/info", self.info)
        r.add("POST", "/build", self.build)
        r.add("POST", "/build/prune", self.build_prune)
        r.add("POST", "/build/cancel", self.build_cancel)
        r.add("POST", "/grpc", self.grpc)
        r.add("POST", "/session", self.session)
        images.add_routes(r, self)
        return r

    # -- system ------------------------------------------------------------------------------------

    async def ping(self, req: Request) -> None:
        headers = response_headers(req) + [("Builder-Version", BUILDER_BUILDKIT), ("Swarm", "inactive"),
                                           ("Cache-Control", "no-cache, no-store, must-revalidate"),
                                           ("Pragma", "no-cache")]
        if req.method == "HEAD":
            await req.connection.respond(200, b"", content_type="text/plain; charset=utf-8",
                                         headers=headers)
        else:
            await req.connection.respond(200, b"OK", content_type="text/plain; charset=utf-8",
                                         headers=headers)

    def _version_info(self) -> dict[str, Any]:
        uname = platform.uname()
        return {
            "Platform": {"Name": "buildkitpy Engine API"},
            "Components": [{"Name": "Engine", "Version": ENGINE_VERSION,
                            "Details": {"ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION,
                                        "Os": "linux", "Arch": _go_arch(), "KernelVersion": uname.release,
                                        "GitCommit": "buildkitpy", "BuildTime": "", "Experimental": "false",
                                        "GoVersion": f"python{platform.python_version()}",
                                        "BuildKitPy": __version__}}],
            "Version": ENGINE_VERSION, "ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION,
            "GitCommit": "buildkitpy", "GoVersion": f"python{platform.python_version()}", "Os": "linux",
            "Arch": _go_arch(), "KernelVersion": uname.release, "BuildTime": "",
        }

    async def version(self, req: Request) -> None:
        await req.connection.respond_json(200, self._version_info(), headers=response_headers(req))

    async def info(self, req: Request) -> None:
        records = await anyio.to_thread.run_sync(self.images.all)
        uname = platform.uname()
        mem = 0
        try:
            mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            pass
        body = {
            "ID": self.worker.id, "Containers": 0, "ContainersRunning": 0, "ContainersPaused": 0,
            "ContainersStopped": 0, "Images": len(records), "Driver": "overlayfs",
            "DriverStatus": [["Backing Filesystem", "buildkitpy snapshots"]],
            "Plugins": {"Volume": [], "Network": [], "Authorization": None, "Log": []},
            "MemoryLimit": False, "SwapLimit": False, "CpuCfsPeriod": False, "CpuCfsQuota": False,
            "CPUShares": False, "CPUSet": False, "PidsLimit": False, "IPv4Forwarding": True,
            "Debug": False, "NFd": 0, "NGoroutines": 0, "SystemTime": _rfc3339(time.time()),
            "LoggingDriver": "none", "CgroupDriver": "none", "CgroupVersion": "2", "NEventsListener": 0,
            "KernelVersion": uname.release, "OperatingSystem": "buildkitpy", "OSVersion": "",
            "OSType": "linux", "Architecture": uname.machine, "IndexServerAddress":
                "https://index.docker.io/v1/", "RegistryConfig": None, "NCPU": os.cpu_count() or 1,
            "MemTotal": mem, "DockerRootDir": str(self.root), "Name": socket.gethostname(), "Labels": [],
            "ExperimentalBuild": False, "ServerVersion": ENGINE_VERSION,
            "Runtimes": {"runc": {"path": "runc"}},
            "DefaultRuntime": "runc", "Swarm": {"LocalNodeState": "inactive"}, "LiveRestoreEnabled": False,
            "Isolation": "", "InitBinary": "", "SecurityOptions": [], "Warnings": [],
        }
        await req.connection.respond_json(200, body, headers=response_headers(req))

    # -- build -------------------------------------------------------------------------------------

    async def build(self, req: Request) -> None:
        opts = BuildOptions.parse(req)
        names = tag_names(opts.tags)
        buildkit = opts.version == BUILDER_BUILDKIT
        from_session = buildkit and opts.remote == buildkit_path.CLIENT_SESSION
        if buildkit:
            buildkit_path.exporter(opts, names)  # bad outputs fail before the upload
            buildkit_path.frontend_attrs(opts)
            if opts.build_id.startswith(UPLOAD_PREFIX):
                await self._upload(req, opts.build_id[len(UPLOAD_PREFIX):])
                return
            if opts.remote == UPLOAD_REQUEST and not opts.build_id:
                raise HTTPError(400, f"remote={UPLOAD_REQUEST} needs a buildid: the context comes in "
                                     f"another request with buildid={UPLOAD_PREFIX}<buildid>")
        from_upload = buildkit and opts.remote == UPLOAD_REQUEST
        named_elsewhere = from_session or from_upload
        if opts.remote and not named_elsewhere and not (is_url(opts.remote) or is_git_url(opts.remote)):
            raise HTTPError(400, f"remoteURL ({opts.remote}) could not be recognized as URL")
        if opts.outputs and not buildkit:
            raise Unimplemented("outputs are only supported by the BuildKit builder (version=2)")
        build_id = opts.build_id or os.urandom(16).hex()
        if build_id in self.builds:
            raise InvalidArgument(f"a build with id {build_id} is already running")
        workdir = self.root / "builds" / os.urandom(12).hex()
        stream = JSONStream(req)
        running = RunningBuild(build_id, anyio.CancelScope())
        try:
            try:
                with running.scope:
                    self.builds[build_id] = running
                    try:
                        workdir.mkdir(parents=True)
                        archive = workdir / "context.tar"
                        await spool(req.body(), archive)
                        context = workdir / "context"
                        if from_session:  # the client's session serves it
                            pass
                        elif from_upload:  # another request brings it
                            await self._receive_upload(build_id, context)
                        elif opts.remote:  # the body, if any, is not the context
                            context.mkdir()
                            await remote.fetch(self.control, opts.remote, opts.dockerfile, context, workdir)
                        else:
                            await anyio.to_thread.run_sync(extract, archive, context)
                        archive.unlink()
                        watcher = asyncio.ensure_future(_watch_hangup(req, running))
                        try:
                            if buildkit:
                                await self._run_buildkit(stream, opts, names,
                                                         None if from_session else context)
                            else:
                                await self._run_classic(req, stream, opts, context, workdir)
                        finally:
                            watcher.cancel()
                    except ClientGone:
                        log.info("build %s: the client went away; build stopped", build_id)
                    finally:
                        self.builds.pop(build_id, None)
            except asyncio.CancelledError:
                # Our /build/cancel, seen as a fresh CancelledError a library raised (grpc's call)
                # rather than the scope's own: swallowed unless the task itself is being cancelled.
                task = asyncio.current_task()
                if not (running.cancelled or running.client_gone) or (task is not None and task.cancelling()):
                    raise
        finally:  # outside the build's scope: a cancelled build still cleans up
            await anyio.to_thread.run_sync(shutil.rmtree, workdir, True)
        if running.client_gone:
            log.info("build %s: the client closed its connection; build stopped", build_id)
        elif running.cancelled:
            await stream.error("Build cancelled")
            await stream.close()

    async def _upload(self, req: Request, build_id: str) -> None:
        """The context of build ``build_id`` (``remote=upload-request``) as this request's body: handed
        over once spooled; answered with an empty stream once that build has unpacked it."""
        if not build_id:
            raise HTTPError(400, f"buildid={UPLOAD_PREFIX} names no build")
        workdir = self.root / "builds" / os.urandom(12).hex()
        try:
            workdir.mkdir(parents=True)
            archive = workdir / "context.tar"
            await spool(req.body(), archive)
            slot = self.uploads.setdefault(build_id, Upload())
            if slot.archive is not None:
                raise InvalidArgument(f"the context of build {build_id} is already being uploaded")
            slot.archive = archive
            slot.delivered.set()
            try:
                with anyio.fail_after(UPLOAD_WAIT):
                    await slot.consumed.wait()
            except TimeoutError:
                raise HTTPError(400, f"no build {build_id} took the uploaded context within "
                                     f"{UPLOAD_WAIT:g}s (start it with remote={UPLOAD_REQUEST})") from None
            finally:
                if self.uploads.get(build_id) is slot and not slot.consumed.is_set():
                    del self.uploads[build_id]
        finally:
            await anyio.to_thread.run_sync(shutil.rmtree, workdir, True)
        stream = JSONStream(req)
        await stream.close()

    async def _receive_upload(self, build_id: str, context: Path) -> None:
        slot = self.uploads.setdefault(build_id, Upload())
        try:
            with anyio.fail_after(UPLOAD_WAIT):
                await slot.delivered.wait()
            assert slot.archive is not None
            await anyio.to_thread.run_sync(extract, slot.archive, context)
        except TimeoutError:
            raise HTTPError(400, f"the context of build {build_id} was not uploaded within {UPLOAD_WAIT:g}s "
                                 f"(POST /build?version=2&buildid={UPLOAD_PREFIX}{build_id} with the "
                                 "context as its body)") from None
        finally:
            slot.consumed.set()
            if self.uploads.get(build_id) is slot:
                del self.uploads[build_id]

    async def _run_classic(self, req: Request, stream: JSONStream, opts: BuildOptions, context: Path,
                           workdir: Path) -> None:
        try:
            limits = opts.limits
            with self.cgroups.applied(limits) if limits else nullcontext(limits.parent) as cgroup_parent:
                build = ClassicBuild(images=self.images, control=self.control, opts=opts, context=context,
                                     workdir=workdir, emit=stream.send, cgroup_parent=cgroup_parent)
                await build.run()
        except BuildFailed as exc:
            if not stream.started:
                raise HTTPError(400, exc.message) from None
            await stream.error(exc.message, exc.code)
        except BuildkitpyError as exc:
            if not stream.started:
                raise
            await stream.error(str(exc))
        await stream.close()

    async def _run_buildkit(self, stream: JSONStream, opts: BuildOptions, names: list[str],
                            context: Path | None) -> None:
        from buildkitpy.client.solve import new_build_ref

        try:
            await buildkit_path.run(control=self.control, sessions=self.sessions, opts=opts, names=names,
                                    context=context, ref=new_build_ref(), emit=stream.send)
        except buildkit_path.BuildFailed as exc:
            if not stream.started:
                raise HTTPError(500, exc.message) from None
            await stream.error(exc.message)
        except BuildkitpyError as exc:
            if not stream.started:
                raise
            await stream.error(str(exc))
        await stream.close()

    async def grpc(self, req: Request) -> None:
        from buildkitpy.dockerapi.hijack import grpc_proxy

        await grpc_proxy(req, self.control_socket)

    async def session(self, req: Request) -> None:
        from buildkitpy.dockerapi.hijack import session

        await session(req, self.sessions)

    async def build_cancel(self, req: Request) -> None:
        build_id = req.arg("id")
        if not build_id:
            raise InvalidArgument("build ID not provided")
        running = self.builds.get(build_id)
        if running is None:
            raise HTTPError(404, f"no such build: {build_id}")
        running.cancelled = True
        running.scope.cancel()
        await req.connection.respond(200, b"", content_type="", headers=response_headers(req))

    async def build_prune(self, req: Request) -> None:
        from buildkitpy.dockerapi.prune import prune_request

        report = await prune_request(self.control, req)
        await req.connection.respond_json(200, report, headers=response_headers(req))


async def _watch_hangup(req: Request, running: RunningBuild) -> None:
    """Stop the build when its client closes the connection (the request body is read by now, so
    the socket is quiet until then), as the Engine cancels a build whose request context ends. Bytes
    a client pipelines after its request go back to the HTTP parser."""
    conn = req.connection
    try:
        data = await conn.reader.read(64 * 1024)
    except (ConnectionError, OSError):
        data = b""
    conn.h11.receive_data(data)
    if not data:
        running.client_gone = True
        running.scope.cancel()


class JSONStream:
    """The build's response: a chunked stream of JSON messages, started by the first message."""

    def __init__(self, req: Request) -> None:
        self.req = req
        self.started = False
        self.closed = False

    async def send(self, message: dict[str, Any]) -> None:
        if not self.started:
            await self.req.connection.start_response(200, response_headers(self.req) + [
                ("Content-Type", "application/json")])
            self.started = True
        await self.req.connection.send_data((json.dumps(message) + "\r\n").encode())

    async def error(self, message: str, code: int = 0) -> None:
        detail: dict[str, Any] = {"message": message}
        if code:
            detail["code"] = code
        await self.send({"errorDetail": detail, "error": message})

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.started:
            await self.req.connection.start_response(200, response_headers(self.req) + [
                ("Content-Type", "application/json")])
            self.started = True
        await self.req.connection.end_response()


def _go_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e9):09d}Z"


__all__ = ["EngineAPI", "bool_arg"]
