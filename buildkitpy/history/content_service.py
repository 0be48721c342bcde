"""containerd's ``Content`` service, read-only, on the daemon socket (as buildkitd serves it).

Clients read build-history blobs (logs, traces, errors, attestations) and exported image content
through it: ``docker buildx history inspect/trace/export`` use ``Info`` and ``Read``. Lookups try
the history's own store first, then the image content store. Writes, updates and deletes are refused
with ``UNIMPLEMENTED``, as BuildKit's read-only store does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import anyio
import grpc

from buildkitpy.api import content_pb2, content_pb2_grpc
from buildkitpy.content.store import BlobInfo, ContentStore, validate_digest
from buildkitpy.errors import InvalidArgument, NotFound, Unimplemented, abort_for, unary_handler

log = logging.getLogger(__name__)

READ_CHUNK = 1 << 20

_handled = unary_handler("Content")


class ContentService(content_pb2_grpc.ContentServicer):
    """``stores`` gives the stores to look in, in order (called per request so a store opened
    lazily, like the image content store, is picked up)."""

    def __init__(self, stores: Callable[[], list[ContentStore]]) -> None:
        self._stores = stores

    def _find(self, digest: str) -> tuple[ContentStore, BlobInfo]:
        validate_digest(digest)
        for store in self._stores():
            try:
                return store, store.info(digest)
            except NotFound:
                continue
        raise NotFound(f"content digest {digest}: not found")

    @_handled
    async def Info(self, request, context):
        store, info = await anyio.to_thread.run_sync(self._find, request.digest)
        out = content_pb2.Info(digest=info.digest, size=info.size, labels=info.labels)
        try:
            st = os.stat(store.path(info.digest))
            out.created_at.FromNanoseconds(st.st_ctime_ns)
            out.updated_at.FromNanoseconds(st.st_mtime_ns)
        except OSError:
            pass
        return content_pb2.InfoResponse(info=out)

    async def Read(self, request, context):
        try:
            store, info = await anyio.to_thread.run_sync(self._find, request.digest)
            if request.offset < 0 or request.size < 0:
                raise InvalidArgument(f"invalid read range offset={request.offset} size={request.size}")
            if request.offset > info.size:
                raise InvalidArgument(f"offset {request.offset} is beyond the blob's size {info.size}")
            end = info.size if request.size == 0 else min(info.size, request.offset + request.size)
            f = await anyio.to_thread.run_sync(store.open, request.digest)
        except BaseException as exc:  # noqa: BLE001
            await abort_for(context, exc, "Content.Read")
            return
        try:
            offset = request.offset
            f.seek(offset)
            while offset < end:
                data = await anyio.to_thread.run_sync(f.read, min(READ_CHUNK, end - offset))
                if not data:
                    break
                yield content_pb2.ReadContentResponse(offset=offset, data=data)
                offset += len(data)
        finally:
            f.close()

    async def List(self, request, context):
        try:
            if any(f.strip() for f in request.filters):
                raise Unimplemented("content list filters are not supported")
            seen: set[str] = set()
            for store in self._stores():
                batch = []
                for digest in await anyio.to_thread.run_sync(lambda s=store: list(s.walk())):
                    if digest in seen:
                        continue
                    seen.add(digest)
                    try:
                        info = await anyio.to_thread.run_sync(store.info, digest)
                    except NotFound:
                        continue
                    batch.append(content_pb2.Info(digest=info.digest, size=info.size, labels=info.labels))
                    if len(batch) >= 100:
                        yield content_pb2.ListContentResponse(info=batch)
                        batch = []
                if batch:
                    yield content_pb2.ListContentResponse(info=batch)
        except BaseException as exc:  # noqa: BLE001
            await abort_for(context, exc, "Content.List")

    async def _read_only(self, context, what: str):  # noqa: ANN001
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{what}: the content store is read-only")

    async def Update(self, request, context):
        await self._read_only(context, "update")

    async def Delete(self, request, context):
        await self._read_only(context, "delete")

    async def Status(self, request, context):
        await self._read_only(context, "status")

    async def ListStatuses(self, request, context):
        return content_pb2.ListStatusesResponse()

    async def Write(self, request_iterator, context):
        await self._read_only(context, "write")
        yield content_pb2.WriteContentResponse()  # pragma: no cover - never reached

    async def Abort(self, request, context):
        await self._read_only(context, "abort")
