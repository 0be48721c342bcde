"""Client side of ``type=local`` cache: OCI layout directories served to the daemon over the session.

As buildctl does: every ``--export-cache type=local,dest=DIR`` and ``--import-cache
type=local,src=DIR`` directory becomes a content store named ``local:DIR`` behind containerd's
``Content`` service (``Info``, ``Read``, ``Write``; the store is picked by the
``buildkit-attachable-store-id`` header). Before the build an import without ``digest`` gets the
digest ``index.json`` tags with ``tag`` (default ``latest``); after it the manifest descriptor the
daemon returns (``cache.manifest``) is tagged in the export directory's ``index.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import grpc

from buildkitpy.api import content_pb2, content_pb2_grpc
from buildkitpy.session.manager import service_method_names

STORE_HEADER = "buildkit-attachable-store-id"
REF_NAME = "org.opencontainers.image.ref.name"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
READ_CHUNK = 1 << 20
_DIGEST_CHARS = frozenset("0123456789abcdef")


class CacheDirError(ValueError):
    """A local cache directory the build cannot use (no index.json, unknown tag)."""


def _blob_path(root: Path, digest: str) -> Path | None:
    algo, _, hexd = digest.partition(":")
    if algo != "sha256" or len(hexd) != 64 or not set(hexd) <= _DIGEST_CHARS:
        return None
    return root / "blobs" / "sha256" / hexd


def read_index(root: Path) -> dict[str, Any]:
    try:
        doc = json.loads((root / "index.json").read_text())
    except FileNotFoundError:
        return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    except (OSError, ValueError) as exc:
        raise CacheDirError(f"{root}/index.json: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("manifests", []), list):
        raise CacheDirError(f"{root}/index.json is not an OCI index")
    return doc


def resolve_tag(root: Path, tag: str) -> str:
    for m in read_index(root).get("manifests") or []:
        if isinstance(m, dict) and (m.get("annotations") or {}).get(REF_NAME) == tag:
            return str(m.get("digest", ""))
    raise CacheDirError(f"local cache importer requires either explicit digest, \"latest\" tag or custom "
                        f"tag on index.json ({root}: no manifest tagged {tag!r})")


def tag_manifest(root: Path, desc: dict[str, Any], tag: str) -> None:
    """Tag ``desc`` in ``root/index.json`` (replacing what had the tag), atomically."""
    doc = read_index(root)
    kept = [m for m in doc.get("manifests") or []
            if not (isinstance(m, dict) and (m.get("annotations") or {}).get(REF_NAME) == tag)]
    kept.append({**desc, "annotations": {**(desc.get("annotations") or {}), REF_NAME: tag}})
    doc["manifests"] = kept
    doc.setdefault("schemaVersion", 2)
    doc.setdefault("mediaType", OCI_INDEX)
    tmp = root / f".index.json.{secrets.token_hex(4)}"
    tmp.write_text(json.dumps(doc, separators=(",", ":")))
    os.replace(tmp, root / "index.json")


class LocalCacheStores(content_pb2_grpc.ContentServicer):
    """The attachable: content stores by id (``local:<dir>``)."""

    def __init__(self, dirs: dict[str, Path]) -> None:
        self._dirs = dirs
        for root in dirs.values():
            (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
            layout = root / "oci-layout"
            if not layout.exists():
                layout.write_text('{"imageLayoutVersion":"1.0.0"}')

    def add_to_server(self, server: grpc.aio.Server) -> None:
        content_pb2_grpc.add_ContentServicer_to_server(self, server)

    def method_names(self) -> list[str]:
        return service_method_names(content_pb2.DESCRIPTOR.services_by_name["Content"])

    async def _root(self, context: grpc.aio.ServicerContext) -> Path:
        ids = [v for k, v in context.invocation_metadata() or () if k == STORE_HEADER]
        root = self._dirs.get(ids[0]) if ids else None
        if root is None:
            name = ids[0] if ids else ""
            await context.abort(grpc.StatusCode.NOT_FOUND, f"content store {name!r} not found")
        return root  # type: ignore[return-value]

    async def _blob(self, context: grpc.aio.ServicerContext, digest: str) -> Path:
        path = _blob_path(await self._root(context), digest)
        if path is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid digest {digest!r}")
        return path  # type: ignore[return-value]

    async def Info(self, request, context):
        path = await self._blob(context, request.digest)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"content digest {request.digest}: not found")
        return content_pb2.InfoResponse(info=content_pb2.Info(digest=request.digest, size=size))

    async def Read(self, request, context):
        path = await self._blob(context, request.digest)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"content digest {request.digest}: not found")
        with f:
            f.seek(request.offset)
            left = request.size if request.size > 0 else -1
            offset = request.offset
            while left != 0:
                data = f.read(READ_CHUNK if left < 0 else min(READ_CHUNK, left))
                if not data:
                    break
                yield content_pb2.ReadContentResponse(offset=offset, data=data)
                offset += len(data)
                if left > 0:
                    left -= len(data)

    async def Write(self, request_iterator: AsyncIterator[Any], context):
        root = await self._root(context)
        tmp: Path | None = None
        f = None
        h = hashlib.sha256()
        offset = 0
        try:
            async for req in request_iterator:
                if tmp is None:
                    if req.expected:
                        target = _blob_path(root, req.expected)
                        if target is None:
                            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                                f"invalid digest {req.expected!r}")
                        if target.exists():  # type: ignore[union-attr]
                            await context.abort(grpc.StatusCode.ALREADY_EXISTS,
                                                f"content {req.expected}: already exists")
                    (root / "ingest").mkdir(exist_ok=True)
                    tmp = root / "ingest" / secrets.token_hex(8)
                    f = open(tmp, "xb")
                if req.data:
                    if req.offset != offset:
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                            f"write at offset {req.offset}, expected {offset}")
                    f.write(req.data)  # type: ignore[union-attr]
                    h.update(req.data)
                    offset += len(req.data)
                if req.action == content_pb2.COMMIT:
                    f.close()  # type: ignore[union-attr]
                    digest = "sha256:" + h.hexdigest()
                    if req.expected and req.expected != digest:
                        await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                            f"unexpected commit digest {digest}, expected {req.expected}")
                    if req.total and req.total != offset:
                        await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                            f"unexpected commit size {offset}, expected {req.total}")
                    os.replace(tmp, _blob_path(root, digest))  # type: ignore[arg-type]
                    tmp = None
                    yield content_pb2.WriteContentResponse(action=content_pb2.COMMIT, offset=offset,
                                                           total=offset, digest=digest)
                    return
                yield content_pb2.WriteContentResponse(action=req.action, offset=offset, total=req.total)
        finally:
            if f is not None and not f.closed:
                f.close()
            if tmp is not None:
                await anyio.to_thread.run_sync(lambda: tmp.unlink(missing_ok=True))


def prepare(cache_exports: list[Any], cache_imports: list[Any]) -> LocalCacheStores | None:
    """The attachable for the build's local cache directories (None without any); imports without
    ``digest`` get the one their ``tag`` names in ``index.json``."""
    dirs: dict[str, Path] = {}
    for e in cache_exports:
        if e.type == "local" and e.attrs.get("dest"):
            dirs["local:" + e.attrs["dest"]] = Path(e.attrs["dest"])
    for e in cache_imports:
        if e.type == "local" and e.attrs.get("src"):
            src = Path(e.attrs["src"])
            if not e.attrs.get("digest"):
                e.attrs["digest"] = resolve_tag(src, e.attrs.get("tag") or "latest")
            dirs["local:" + e.attrs["src"]] = src
    return LocalCacheStores(dirs) if dirs else None


def finish(cache_exports: list[Any], response: dict[str, str]) -> None:
    """Tag the exported cache manifest in each local export directory."""
    raw = response.get("cache.manifest")
    if not raw:
        return
    desc = json.loads(raw)
    for e in cache_exports:
        if e.type == "local" and e.attrs.get("dest"):
            tag_manifest(Path(e.attrs["dest"]), desc, e.attrs.get("tag") or "latest")
