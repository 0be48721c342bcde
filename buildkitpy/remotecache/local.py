"""``type=local``: the cache in an OCI layout directory on the client, through the build session.

As in BuildKit the directory belongs to the client: the daemon reads and writes its blobs through
containerd's ``Content`` service on the session, store id ``local:<dir>`` (gRPC header
``buildkit-attachable-store-id``). The client keeps ``index.json``: it resolves ``tag``
(default ``latest``) to ``digest`` before an import, and tags the manifest descriptor the export
returns (``cache.manifest`` in the response) afterwards.

Export attrs: ``dest``, ``mode``, ``oci-mediatypes`` (default true), ``image-manifest`` (default
true with OCI media types), ``compression*``, ``ignore-error``; import attrs: ``src``, ``digest``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from buildkitpy.api import content_pb2, content_pb2_grpc
from buildkitpy.content.store import validate_digest
from buildkitpy.errors import InvalidArgument, NotFound, SessionNotFound
from buildkitpy.image.reference import Reference
from buildkitpy.image.registry import Descriptor
from buildkitpy.remotecache import cachemounts
from buildkitpy.remotecache.chains import RemoteIndex, layer_map
from buildkitpy.remotecache.config import parse_config
from buildkitpy.remotecache.exporter import CacheBlobs
from buildkitpy.remotecache.jobcache import ImportedCache

STORE_HEADER = "buildkit-attachable-store-id"
CHUNK = 1 << 20
MAX_CONFIG_BYTES = 64 << 20
RESPONSE_KEY = "cache.manifest"
_LOCAL_REF = Reference("local", "cache")


def dest_of(attrs: dict[str, str]) -> str:
    dest = attrs.get("dest", "")
    if not dest:
        raise InvalidArgument("local cache exporter requires dest")
    return dest


class SessionContentStore:
    """The client's content store ``store_id``, reached over the session."""

    def __init__(self, session: Any, store_id: str) -> None:
        if session is None:
            raise SessionNotFound("local cache exporter/importer requires session")
        self._stub = content_pb2_grpc.ContentStub(session.channel)
        self._md = ((STORE_HEADER, store_id),)
        self.store_id = store_id

    async def info(self, digest: str) -> int | None:
        try:
            resp = await self._stub.Info(content_pb2.InfoRequest(digest=digest), metadata=self._md)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise NotFound(f"{self.store_id}: info {digest}: {exc.details()}") from None
        return resp.info.size

    async def read(self, digest: str, sink: Callable[[bytes], None]) -> int:
        done = 0
        try:
            request = content_pb2.ReadContentRequest(digest=digest)
            async for resp in self._stub.Read(request, metadata=self._md):
                sink(resp.data)
                done += len(resp.data)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(f"{self.store_id}: blob {digest} not found") from None
            raise NotFound(f"{self.store_id}: reading {digest}: {exc.details()}") from None
        return done

    async def read_bytes(self, digest: str, limit: int) -> bytes:
        parts: list[bytes] = []
        total = [0]

        def sink(data: bytes) -> None:
            total[0] += len(data)
            if total[0] > limit:
                raise InvalidArgument(f"{self.store_id}: blob {digest} is larger than {limit} bytes")
            parts.append(data)

        await self.read(digest, sink)
        return b"".join(parts)

    async def write(self, digest: str, size: int, chunks: Callable[[], AsyncIterator[bytes]]) -> None:
        """Write blob ``digest`` unless the store has it."""
        if await self.info(digest) is not None:
            return
        ref = f"buildkitpy-{digest[7:19]}-{secrets.token_hex(4)}"

        async def requests() -> AsyncIterator[content_pb2.WriteContentRequest]:
            yield content_pb2.WriteContentRequest(action=content_pb2.STAT, ref=ref, total=size,
                                                  expected=digest)
            offset = 0
            async for data in chunks():
                yield content_pb2.WriteContentRequest(action=content_pb2.WRITE, ref=ref, offset=offset,
                                                      data=data, total=size, expected=digest)
                offset += len(data)
            yield content_pb2.WriteContentRequest(action=content_pb2.COMMIT, ref=ref, offset=offset,
                                                  total=size, expected=digest)

        try:
            async for _ in self._stub.Write(requests(), metadata=self._md):
                pass
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                return
            raise InvalidArgument(f"{self.store_id}: writing {digest}: {exc.details()}") from None


class _SessionBlobSource:
    """A ``BlobSource`` over the session store (for the puller)."""

    def __init__(self, store: SessionContentStore) -> None:
        self.store = store

    async def fetch_blob(self, ref: Reference, desc: Descriptor, sink: Any, progress: Any = None) -> None:
        import anyio

        done = [0]

        def put(data: bytes) -> None:
            done[0] += len(data)
            if done[0] > desc.size:
                raise InvalidArgument(f"blob {desc.digest} is larger than its descriptor says ({desc.size})")
            sink(data)
            if progress is not None:
                progress(done[0])

        async def run() -> None:
            await self.store.read(desc.digest, lambda d: put(d))

        await run()
        await anyio.sleep(0)
        if done[0] != desc.size:
            raise InvalidArgument(f"{self.store.store_id}: blob {desc.digest}: got {done[0]} of "
                                  f"{desc.size} bytes")


def _file_chunks(path: Any) -> Callable[[], AsyncIterator[bytes]]:
    async def gen() -> AsyncIterator[bytes]:
        import anyio

        f = await anyio.open_file(path, "rb")
        try:
            while True:
                data = await f.read(CHUNK)
                if not data:
                    return
                yield data
        finally:
            await f.aclose()

    return gen


def _bytes_chunks(data: bytes) -> Callable[[], AsyncIterator[bytes]]:
    async def gen() -> AsyncIterator[bytes]:
        for off in range(0, len(data), CHUNK):
            yield data[off:off + CHUNK]

    return gen


async def export(session: Any, blobs: CacheBlobs, attrs: dict[str, str]) -> dict[str, str]:
    store = SessionContentStore(session, "local:" + dest_of(attrs))
    for d in [*blobs.exported.layers, *blobs.mounts]:
        await store.write(d.digest, d.size, _file_chunks(blobs.store.path(d.digest)))
    await store.write(blobs.config_digest, len(blobs.config), _bytes_chunks(blobs.config))
    await store.write(blobs.manifest_digest, len(blobs.manifest), _bytes_chunks(blobs.manifest))
    return {RESPONSE_KEY: json.dumps(blobs.manifest_desc(), separators=(",", ":"))}


async def load(session: Any, attrs: dict[str, str]) -> ImportedCache | None:
    from buildkitpy.remotecache.registry import index_from_manifest

    src = attrs.get("src", "")
    if not src:
        raise InvalidArgument("local cache importer requires src")
    digest = attrs.get("digest", "")
    if not digest:
        raise InvalidArgument("local cache importer requires explicit digest")
    validate_digest(digest)
    store = SessionContentStore(session, "local:" + src)
    name = f"local {src}"
    data = await store.read_bytes(digest, MAX_CONFIG_BYTES)
    config_desc, entries, _ = index_from_manifest(data, "", name)
    if config_desc is None:
        raise InvalidArgument(f"{name}: {digest} is not a cache manifest (no cache config)")
    cdesc = Descriptor.from_json(config_desc, name)
    config = parse_config(await store.read_bytes(cdesc.digest, MAX_CONFIG_BYTES))
    return ImportedCache(RemoteIndex(config, layer_map(entries, name), name), _SessionBlobSource(store),
                         _LOCAL_REF, name, mounts=cachemounts.from_entries(entries))
