"""``docker push`` and ``docker pull`` (``POST /images/{name}/push``, ``POST /images/create``)
through our registry client, with the daemon's registry settings and the request's
``X-Registry-Auth`` credentials."""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

import anyio

from buildkitpy.dockerapi.http import HTTPError, Request
from buildkitpy.dockerapi.imagestore import familiar, normalize_tag
from buildkitpy.dockerapi.server import response_headers
from buildkitpy.errors import BuildkitpyError, InvalidArgument
from buildkitpy.image.reference import Reference, parse_reference

if TYPE_CHECKING:
    from buildkitpy.dockerapi.api import EngineAPI


def auth_config(header: str) -> dict[str, Any]:
    """``X-Registry-Auth``: base64url JSON of one AuthConfig (empty: anonymous)."""
    if not header:
        return {}
    try:
        value = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except ValueError:
        raise HTTPError(400, "invalid X-Registry-Auth header: not base64url-encoded JSON") from None
    return value if isinstance(value, dict) else {}


def _credentials(auth: dict[str, Any]):
    async def credentials(host: str) -> tuple[str, str]:
        if auth.get("identitytoken"):
            return "", str(auth["identitytoken"])
        if auth.get("username") or auth.get("password"):
            return str(auth.get("username", "")), str(auth.get("password", ""))
        if auth.get("auth"):
            user, _, secret = base64.b64decode(auth["auth"]).decode(errors="replace").partition(":")
            return user, secret
        return "", ""

    return credentials


class JSONLines:
    """A chunked stream of progress messages (started on the first one)."""

    def __init__(self, req: Request) -> None:
        self.req = req
        self.started = False

    async def send(self, message: dict[str, Any]) -> None:
        if not self.started:
            await self.req.connection.start_response(200, response_headers(self.req) + [
                ("Content-Type", "application/json")])
            self.started = True
        await self.req.connection.send_data((json.dumps(message) + "\r\n").encode())

    async def finish(self, error: BaseException | None = None) -> None:
        if error is not None:
            if not self.started:
                raise error
            message = getattr(error, "message", None) or str(error)
            await self.send({"errorDetail": {"message": message}, "error": message})
        if not self.started:
            await self.send({"status": "done"})
        await self.req.connection.end_response()


async def push(api: EngineAPI, req: Request) -> None:
    from buildkitpy.image.push import ImagePusher, push_registries
    from buildkitpy.image.registry import Descriptor, RegistryClient

    name = req.route_params["name"]
    tag = req.arg("tag")
    try:
        full = normalize_tag(f"{name}:{tag}" if tag else name)
    except InvalidArgument as exc:
        raise HTTPError(400, str(exc)) from None
    record = await anyio.to_thread.run_sync(api.images.lookup, full)
    ref = parse_reference(full)
    registries = getattr(api.worker.config, "registries", None) or {}
    client = RegistryClient(push_registries(registries, [ref]), _credentials(auth_config(
        req.header("X-Registry-Auth"))))
    out = JSONLines(req)
    await out.send({"status": f"The push refers to repository [{familiar(ref.name)}]"})
    pushed: list[tuple[str, int]] = []

    def report(digest: str, done: int, total: int, finished: bool) -> None:
        if finished:
            pushed.append((digest, total))

    manifest_size = await anyio.to_thread.run_sync(lambda: api.images.content.info(
        record.manifest_digest).size)
    manifest = await anyio.to_thread.run_sync(api.images.manifest, record)
    root = Descriptor(manifest.get("mediaType", "application/vnd.oci.image.manifest.v1+json"),
                      record.manifest_digest, manifest_size)
    error: BaseException | None = None
    try:
        await ImagePusher(client, api.images.content, progress=report).push(ref, root)
    except BuildkitpyError as exc:
        error = exc
    for digest, _ in pushed:
        await out.send({"status": "Pushed", "progressDetail": {}, "id": digest.split(":")[-1][:12]})
    if error is None:
        await out.send({"status": f"{ref.tag}: digest: {record.manifest_digest} size: {manifest_size}"})
        await out.send({"progressDetail": {}, "aux": {"Tag": ref.tag, "Digest": record.manifest_digest,
                                                      "Size": manifest_size}})
    await out.finish(error)


async def pull(api: EngineAPI, req: Request) -> None:
    from buildkitpy.image.platforms import Platform
    from buildkitpy.image.registry import RegistryClient
    from buildkitpy.image.resolvemode import MODE_PULL, resolve_with_mode

    image = req.arg("fromImage")
    if not image:
        if req.arg("fromSrc"):
            raise HTTPError(501, "importing a root filesystem (fromSrc) is not supported")
        raise HTTPError(400, "fromImage is required")
    tag = req.arg("tag")
    try:
        ref: Reference = parse_reference(f"{image}@{tag}" if tag.startswith("sha256:") else
                                         f"{image}:{tag}" if tag else image)
    except InvalidArgument as exc:
        raise HTTPError(400, f"invalid reference format: {exc}") from None
    platform = None
    if req.arg("platform"):
        try:
            platform = Platform.parse(req.arg("platform"))
        except (ValueError, InvalidArgument) as exc:
            raise HTTPError(400, f"invalid platform: {exc}") from None
    registries = getattr(api.worker.config, "registries", None) or {}
    client = RegistryClient(registries, _credentials(auth_config(req.header("X-Registry-Auth"))))
    puller = api.worker.image_puller
    out = JSONLines(req)
    shown = familiar(str(ref))
    await out.send({"status": f"Pulling from {familiar(ref.name)}", "id": ref.tag or ref.digest})
    error: BaseException | None = None
    try:
        resolved = await resolve_with_mode(client, puller.store, puller.chains, ref, platform, MODE_PULL)
        result = await puller.pull(client, resolved)
        if result.snapshot is not None:
            await anyio.to_thread.run_sync(result.snapshot.release)
        await anyio.to_thread.run_sync(api.images.add, resolved.config_digest, resolved.manifest_digest)
        if ref.tag:
            await anyio.to_thread.run_sync(api.images.tag, resolved.config_digest, str(ref))
        await out.send({"status": f"Digest: {resolved.digest}"})
        await out.send({"status": f"Status: Downloaded newer image for {shown}"})
    except BuildkitpyError as exc:
        error = exc
    await out.finish(error)
