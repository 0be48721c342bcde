"""``POST /build?version=2``: the Engine's BuildKit builder behind the build endpoint, as moby's
builder-next does it.

The query parameters become ``dockerfile.v0`` frontend options and one exporter (``moby`` unless
``outputs`` names another), solved through our Control API. The context is the client's session
(``remote=client-session``: its ``context`` and ``dockerfile`` dirs) or, as moby serves the request
body or a remote URL to the frontend, a directory the daemon unpacked and serves through a session
of its own. Progress is BuildKit's: each ``StatusResponse``, protobuf-encoded, as the ``aux`` of a
``moby.buildkit.trace`` message (what the docker CLI's BuildKit printer decodes), then the image ID as
``moby.image.id``.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from buildkitpy.dockerapi.http import ClientGone, HTTPError
from buildkitpy.dockerapi.options import BuildOptions, docker_config_auths

CLIENT_SESSION = "client-session"
EXPORTER_MOBY = "moby"
EXPORTER_IMAGE = "image"
CACHE_ONLY = "cacheonly"
TRACE_ID = "moby.buildkit.trace"
IMAGE_ID = "moby.image.id"
# BuildKit's exporters; anything else is refused before the build starts.
EXPORTERS = (EXPORTER_MOBY, EXPORTER_IMAGE, "local", "tar", "oci", "docker", CACHE_ONLY)
_ULIMIT_NAMES = {"core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile",
                 "nproc", "rss", "rtprio", "rttime", "sigpending", "stack"}

Emit = Callable[[dict[str, Any]], Awaitable[None]]


class BuildFailed(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def frontend_attrs(opts: BuildOptions) -> dict[str, str]:
    """moby's mapping of the build's query parameters onto the Dockerfile frontend's options."""
    attrs: dict[str, str] = {}
    if opts.target:
        attrs["target"] = opts.target
    if opts.dockerfile and opts.dockerfile != ".":
        attrs["filename"] = opts.dockerfile
    if opts.cache_from:
        attrs["cache-from"] = ",".join(opts.cache_from)
    for key, value in opts.build_args.items():
        if value is not None:
            attrs["build-arg:" + key] = value
    for key, value in opts.labels.items():
        attrs["label:" + key] = value
    if opts.no_cache:
        attrs["no-cache"] = ""
    attrs["image-resolve-mode"] = "pull" if opts.pull else "default"
    if opts.platform:
        attrs["platform"] = opts.platform
    if opts.network_mode in ("host", "none"):
        attrs["force-network-mode"] = opts.network_mode
    elif opts.network_mode not in ("", "default"):
        raise HTTPError(400, f"network mode {opts.network_mode!r} not supported by buildkit")
    hosts = []
    for entry in opts.extra_hosts:
        host, sep, ip = entry.partition(":")
        if not sep:
            host, sep, ip = entry.partition("=")
        if not host or not ip:
            raise HTTPError(400, f"invalid host {entry}")
        hosts.append(f"{host}={ip}")
    if hosts:
        attrs["add-hosts"] = ",".join(hosts)
    if opts.shm_size > 0:
        attrs["shm-size"] = str(opts.shm_size)
    ulimits = [_ulimit(u) for u in opts.ulimits]
    if ulimits:
        attrs["ulimit"] = ",".join(ulimits)
    return attrs


def _ulimit(value: Any) -> str:
    if not isinstance(value, dict):
        raise HTTPError(400, "error reading ulimit settings: want objects with Name, Soft and Hard")
    name, soft, hard = value.get("Name"), value.get("Soft"), value.get("Hard")
    if name not in _ULIMIT_NAMES or not isinstance(soft, int) or not isinstance(hard, int):
        raise HTTPError(400, f"invalid ulimit {json.dumps(value)}: want a known Name and integer Soft "
                             "and Hard")
    return f"{name}={soft}:{hard}"


def exporter(opts: BuildOptions, names: list[str]) -> tuple[str, dict[str, str]]:
    """The exporter (type and attributes); an empty type exports nothing (``cacheonly``)."""
    if len(opts.outputs) > 1:
        raise HTTPError(400, "multiple outputs not supported")
    name, attrs = EXPORTER_MOBY, {}
    if opts.outputs:
        output = opts.outputs[0]
        kind = output.get("Type", output.get("type")) if isinstance(output, dict) else None
        given = output.get("Attrs", output.get("attrs")) or {} if isinstance(output, dict) else None
        if not isinstance(kind, str) or not isinstance(given, dict) or not all(
                isinstance(v, str) for v in given.values()):
            raise HTTPError(400, "error reading outputs: want [{\"Type\": …, \"Attrs\": {…}}]")
        if kind not in EXPORTERS:
            raise HTTPError(400, f"unsupported output type {kind!r} (want one of {', '.join(EXPORTERS)})")
        name, attrs = ("" if kind == CACHE_ONLY else kind), dict(given)
    if name in (EXPORTER_MOBY, EXPORTER_IMAGE) and names:
        attrs["name"] = ",".join(names)
    return name, attrs


async def _client_session(sessions: Any, session_id: str) -> Any:
    """The client's open session (``buildkitpy.session.manager.Session``), waited for a moment."""
    from buildkitpy.errors import BuildkitpyError

    try:
        return await sessions.get(session_id, timeout=5.0)
    except BuildkitpyError as exc:
        raise HTTPError(400, f"session={session_id}: {exc}") from None


def trace_message(status: Any) -> dict[str, Any]:
    """One ``StatusResponse`` as the Engine streams it (Go marshals the bytes as base64)."""
    return {"id": TRACE_ID, "aux": base64.b64encode(status.SerializeToString()).decode("ascii")}


async def run(*, control: Any, sessions: Any, opts: BuildOptions, names: list[str], context: Path | None,
              ref: str, emit: Emit) -> str:
    """Solve the build; ``context`` is the unpacked directory to serve, ``None`` for the client's
    session. Streams progress through ``emit``; returns the image ID (empty if none was made)."""
    from buildkitpy.client.options import CacheOptionsEntry, ExportEntry
    from buildkitpy.client.rpc_errors import BuildkitError
    from buildkitpy.client.solve import SolveOpt, solve
    from buildkitpy.session.auth import CREDENTIALS_METHOD, AuthAttachable
    from buildkitpy.session.filesync import FILESEND_DIFFCOPY, FILESYNC_SERVICE
    from buildkitpy.session.forward import ForwardingAttachable

    attrs = frontend_attrs(opts)
    kind, exporter_attrs = exporter(opts, names)
    opt = SolveOpt(frontend="dockerfile.v0", frontend_attrs=attrs, ref=ref, registry_auth=False,
                   exports=[ExportEntry(type=kind, attrs=exporter_attrs)] if kind else [],
                   entitlements=["network.host"] if opts.network_mode == "host" else [])
    if context is None:
        if not opts.session:
            raise HTTPError(400, "remote=client-session needs the session parameter (the id of a session "
                                 "opened with POST /session)")
        await _client_session(sessions, opts.session)  # a clear answer rather than a missing Dockerfile
        opt.session_id = opts.session
    else:
        # Our session serves the unpacked context; the client's, if named, everything else.
        client = await _client_session(sessions, opts.session) if opts.session else None
        forwarded = [m for m in client.methods if not m.startswith(f"/{FILESYNC_SERVICE}/")] if client else []
        if kind not in ("", EXPORTER_MOBY, EXPORTER_IMAGE) and FILESEND_DIFFCOPY not in forwarded:
            raise HTTPError(400, f"the {kind} exporter sends its result to the client's session: build "
                                 f"with a session (session=…) that serves {FILESEND_DIFFCOPY}")
        opt.local_dirs = {"context": context, "dockerfile": context}
        if client is not None and forwarded:
            opt.attachables.append(ForwardingAttachable(client, forwarded))
        if CREDENTIALS_METHOD not in forwarded:
            opt.attachables.append(AuthAttachable(config={"auths": docker_config_auths(opts.registry_auth)}))
    inline = opts.build_args.get("BUILDKIT_INLINE_CACHE")
    if inline is not None and inline.strip().lower() in ("1", "t", "true"):
        opt.cache_exports = [CacheOptionsEntry(type="inline", attrs={})]

    send, receive = anyio.create_memory_object_stream[Any](math.inf)

    gone: list[ClientGone] = []

    async def forward(scope: anyio.CancelScope) -> None:
        async with receive:
            try:
                async for status in receive:
                    await emit(trace_message(status))
            except ClientGone as exc:  # the client hung up: stop the build
                gone.append(exc)
                scope.cancel()

    result = None
    failure: BuildkitError | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(forward, tg.cancel_scope)
        try:
            result = await solve(control, opt, on_status=send.send_nowait)
        except BuildkitError as exc:
            failure = exc
        finally:
            send.close()
    if gone:
        raise gone[0]
    if failure is not None:
        raise BuildFailed(failure.message)
    if kind not in (EXPORTER_MOBY, EXPORTER_IMAGE):
        return ""
    assert result is not None
    response = result.exporter_response
    image_id = response.get("containerimage.config.digest") or response.get("containerimage.digest", "")
    if not image_id:
        raise BuildFailed("missing image id")
    await emit({"id": IMAGE_ID, "aux": {"ID": image_id}})
    return image_id
