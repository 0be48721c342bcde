"""Image endpoints: list, inspect, history, tag, remove, save, load."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import anyio

from buildkitpy.dockerapi import archive
from buildkitpy.dockerapi.http import HTTPError, Request
from buildkitpy.dockerapi.imagestore import ImageRecord, ImageStore, familiar, normalize_tag
from buildkitpy.dockerapi.options import bool_arg
from buildkitpy.dockerapi.prune import parse_filters
from buildkitpy.dockerapi.server import Router, response_headers
from buildkitpy.errors import NotFound

if TYPE_CHECKING:
    from buildkitpy.dockerapi.api import EngineAPI


def add_routes(r: Router, api: EngineAPI) -> None:
    handlers = ImageHandlers(api)
    r.add("GET", "/images/json", handlers.list_images)
    r.add("GET", "/images/get", handlers.save_many)
    r.add("POST", "/images/load", handlers.load)
    r.add("POST", "/images/create", handlers.pull)
    r.add("POST", "/images/{name:.+}/push", handlers.push)
    r.add("GET", "/images/{name:.+}/json", handlers.inspect)
    r.add("GET", "/images/{name:.+}/history", handlers.history)
    r.add("GET", "/images/{name:.+}/get", handlers.save_one)
    r.add("POST", "/images/{name:.+}/tag", handlers.tag)
    r.add("DELETE", "/images/{name:.+}", handlers.delete)


def _created(config: dict[str, Any], record: ImageRecord) -> str:
    return config.get("created") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))


def _unix(created: str, fallback: float) -> int:
    from datetime import datetime

    try:
        text = created.replace("Z", "+00:00")
        if "." in text:  # Go writes nanoseconds; Python takes microseconds
            head, _, rest = text.partition(".")
            digits = "".join(c for c in rest if c.isdigit())
            zone = rest[len(digits):]
            text = f"{head}.{digits[:6]}{zone}"
        return int(datetime.fromisoformat(text).timestamp())
    except ValueError:
        return int(fallback)


class ImageHandlers:
    def __init__(self, api: EngineAPI) -> None:
        self.api = api

    @property
    def images(self) -> ImageStore:
        return self.api.images

    async def _lookup(self, name: str) -> ImageRecord:
        return await anyio.to_thread.run_sync(self.images.lookup, name)

    async def list_images(self, req: Request) -> None:
        filters = parse_filters(req.arg("filters"))
        show_all = bool_arg(req, "all")

        def collect() -> list[dict[str, Any]]:
            out = []
            records = self.images.all()
            parents = {r.parent for r in records if r.parent}
            for record in records:
                if not show_all and not record.tags and record.id in parents:
                    continue  # an intermediate image of a classic build
                if "dangling" in filters:
                    dangling = not record.tags
                    if filters["dangling"] and (filters["dangling"][0] in ("true", "1")) != dangling:
                        continue
                if "reference" in filters and not any(
                        _reference_matches(pattern, tag) for pattern in filters["reference"]
                        for tag in record.tags):
                    continue
                config = self.images.config(record)
                labels = (config.get("config") or {}).get("Labels") or {}
                if "label" in filters and not all(_label_matches(labels, f) for f in filters["label"]):
                    continue
                out.append({"Id": record.id, "ParentId": record.parent,
                            "RepoTags": [familiar(t) for t in record.tags],
                            "RepoDigests": [], "Created": _unix(_created(config, record), record.created),
                            "Size": record.size, "SharedSize": -1, "Labels": labels or None,
                            "Containers": -1})
            return out

        await req.connection.respond_json(200, await anyio.to_thread.run_sync(collect),
                                          headers=response_headers(req))

    async def inspect(self, req: Request) -> None:
        record = await self._lookup(req.route_params["name"])

        def build() -> dict[str, Any]:
            config = self.images.config(record)
            return {
                "Id": record.id, "RepoTags": [familiar(t) for t in record.tags], "RepoDigests": [],
                "Parent": record.parent, "Comment": "", "Created": _created(config, record),
                "DockerVersion": "", "Author": config.get("author", ""), "Config": config.get("config") or {},
                "Architecture": config.get("architecture", ""), "Variant": config.get("variant", ""),
                "Os": config.get("os", ""), "Size": record.size,
                "GraphDriver": {"Name": "overlayfs", "Data": None},
                "RootFS": {"Type": (config.get("rootfs") or {}).get("type", "layers"),
                           "Layers": (config.get("rootfs") or {}).get("diff_ids", [])},
                "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"},
                "Descriptor": {"mediaType": self.images.manifest(record).get("mediaType", ""),
                               "digest": record.manifest_digest},
            }

        await req.connection.respond_json(200, await anyio.to_thread.run_sync(build),
                                          headers=response_headers(req))

    async def history(self, req: Request) -> None:
        record = await self._lookup(req.route_params["name"])

        def build() -> list[dict[str, Any]]:
            config = self.images.config(record)
            layers = [int(layer.get("size", 0)) for layer in self.images.manifest(record).get("layers") or []]
            entries = []
            layer_index = 0
            for item in config.get("history") or []:
                size = 0
                if not item.get("empty_layer"):
                    size = layers[layer_index] if layer_index < len(layers) else 0
                    layer_index += 1
                entries.append({"Id": "<missing>", "Created": _unix(item.get("created", ""), record.created),
                                "CreatedBy": item.get("created_by", ""), "Tags": None, "Size": size,
                                "Comment": item.get("comment", "")})
            entries.reverse()
            if entries:
                entries[0]["Id"] = record.id
                entries[0]["Tags"] = [familiar(t) for t in record.tags] or None
            return entries

        await req.connection.respond_json(200, await anyio.to_thread.run_sync(build),
                                          headers=response_headers(req))

    async def tag(self, req: Request) -> None:
        record = await self._lookup(req.route_params["name"])
        repo, tag = req.arg("repo"), req.arg("tag")
        if not repo:
            raise HTTPError(400, "repository name must have at least one component")
        name = f"{repo}:{tag}" if tag else repo
        await anyio.to_thread.run_sync(self.images.tag, record.id, name)
        await req.connection.respond(201, b"", content_type="", headers=response_headers(req))

    async def delete(self, req: Request) -> None:
        name = req.route_params["name"]
        force = bool_arg(req, "force")
        prune_parents = not bool_arg(req, "noprune")
        result = await anyio.to_thread.run_sync(remove_image, self.images, name, force, prune_parents)
        await req.connection.respond_json(200, result, headers=response_headers(req))

    async def push(self, req: Request) -> None:
        from buildkitpy.dockerapi.registry import push

        await push(self.api, req)

    async def pull(self, req: Request) -> None:
        from buildkitpy.dockerapi.registry import pull

        await pull(self.api, req)

    async def save_one(self, req: Request) -> None:
        await self._save(req, [req.route_params["name"]])

    async def save_many(self, req: Request) -> None:
        names = req.args("names")
        if not names:
            raise HTTPError(400, "no images named (names=...)")
        await self._save(req, names)

    async def _save(self, req: Request, names: list[str]) -> None:
        selected = []
        for name in names:
            record = await self._lookup(name)
            selected.append((name, record))
        path = self.api.root / "tmp" / f"save-{time.time_ns()}.tar"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            await anyio.to_thread.run_sync(archive.write_save, self.images, selected, path)
            await req.connection.start_response(200, response_headers(req) + [
                ("Content-Type", "application/x-tar"), ("Content-Length", str(path.stat().st_size))])
            with open(path, "rb") as f:
                while True:
                    chunk = await anyio.to_thread.run_sync(f.read, 1 << 20)
                    if not chunk:
                        break
                    await req.connection.send_data(chunk)
            await req.connection.end_response()
        finally:
            path.unlink(missing_ok=True)

    async def load(self, req: Request) -> None:
        from buildkitpy.dockerapi.contexttar import spool

        path = self.api.root / "tmp" / f"load-{time.time_ns()}.tar"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            await spool(req.body(), path)
            loaded = await anyio.to_thread.run_sync(archive.load, self.images, path)
        finally:
            path.unlink(missing_ok=True)
        lines = []
        for image_id, tags in loaded:  # ``quiet`` only hides progress bars, which we do not send
            if tags:
                lines += [{"stream": f"Loaded image: {familiar(t)}\n"} for t in tags]
            else:
                lines.append({"stream": f"Loaded image ID: {image_id}\n"})
        body = "".join(json.dumps(m) + "\n" for m in lines)
        await req.connection.respond(200, body.encode(), content_type="application/json",
                                     headers=response_headers(req))


def _reference_matches(pattern: str, tag: str) -> bool:
    import fnmatch

    shown = familiar(tag)
    if ":" not in pattern.rsplit("/", 1)[-1]:
        shown = shown.rsplit(":", 1)[0]
    return fnmatch.fnmatchcase(shown, pattern)


def _label_matches(labels: dict[str, str], flt: str) -> bool:
    key, sep, value = flt.partition("=")
    return key in labels and (not sep or labels[key] == value)


def remove_image(store: ImageStore, name: str, force: bool, prune_parents: bool) -> list[dict[str, str]]:
    """``docker rmi``: untag, and delete the image once nothing names or builds on it (blocking)."""
    out: list[dict[str, str]] = []
    record = store.lookup(name)
    by_tag = False
    try:
        by_tag = normalize_tag(name) in record.tags and not record.id.endswith(name.removeprefix("sha256:"))
    except Exception:  # noqa: BLE001 - not a tag-shaped name: it is an ID
        by_tag = False
    if by_tag:
        store.untag(name)
        out.append({"Untagged": familiar(normalize_tag(name))})
        record = store.get(record.id)
        if record.tags:
            return out
    else:
        if len(record.tags) > 1 and not force:
            raise Conflict409(f"conflict: unable to delete {record.short_id} (must be forced) - image is "
                              "referenced in multiple repositories")
        for tag in record.tags:
            store.untag(tag)
            out.append({"Untagged": familiar(tag)})
    if store.children(record.id):
        if not by_tag and not force:
            raise Conflict409(f"conflict: unable to delete {record.short_id} (cannot be forced) - image has "
                              "dependent child images")
        return out
    current: ImageRecord | None = record
    while current is not None:
        parent = current.parent
        store.delete(current.id)
        out.append({"Deleted": current.id})
        if not prune_parents or not parent:
            break
        try:
            candidate = store.get(parent)
        except NotFound:
            break
        if candidate.tags or store.children(candidate.id):
            break
        current = candidate
    return out


class Conflict409(HTTPError):
    def __init__(self, message: str) -> None:
        super().__init__(409, message)
