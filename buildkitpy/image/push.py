"""Pushing an image (a manifest or an index, with everything it references) from the content store
to a registry.

The order is the one containerd's pusher uses, so a registry never sees a manifest whose blobs are
missing: blobs first (layers and configs, several at a time), then manifests, then the index, then
the tag. For each blob:

- ``HEAD blobs/<digest>``: already in the repository → nothing to send;
- when the content store knows the blob from another repository of the same registry (labels set
  by pulls and earlier pushes), a cross-repository mount: ``POST blobs/uploads/?mount=…&from=…``
  (``201`` means done; a registry that cannot mount answers ``202`` with an upload session);
- otherwise ``POST blobs/uploads/`` and either one ``PUT …?digest=`` with the whole blob
  (monolithic) or ``PATCH`` chunks with ``Content-Range`` and a closing ``PUT`` (chunked, for blobs
  larger than ``chunk_size``).

Every request asks for ``repository:<name>:pull,push``; authorization follows the registry's
challenge exactly as pulls do (``RegistryClient``). Registry mirrors are never pushed to.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import anyio
from opentelemetry import trace

from buildkitpy.content.store import ContentStore
from buildkitpy.errors import InvalidArgument, NotFound, leaf_errors
from buildkitpy.image import mediatypes
from buildkitpy.image.hosts import HostSettings
from buildkitpy.image.reference import Reference
from buildkitpy.image.registry import (
    Descriptor,
    RegistryClient,
    RegistryError,
    RegistryNotFound,
    RegistryUnauthorized,
    Response,
)
from buildkitpy.image.resolve import parse_json_object

PUSH_ACTIONS = "pull,push"
DEFAULT_CHUNK_SIZE = 64 << 20  # blobs above this go up in PATCH chunks of this size
MAX_CONCURRENT_UPLOADS = 4
PULL_SOURCE_LABEL = "buildkitpy.distribution.source"  # "domain/repository", set by pulls
PUSH_SOURCE_LABEL_PREFIX = "buildkitpy.distribution.source."  # + domain: "repo1,repo2"

# (digest, bytes sent, size, finished) — called from worker threads.
PushProgress = Callable[[str, int, int, bool], None]


@dataclass
class PushResult:
    digest: str  # of the root manifest/index
    uploaded: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    mounted: list[str] = field(default_factory=list)
    bytes_uploaded: int = 0


def push_registries(registries: Mapping[str, Any], refs: list[Reference], *,
                    insecure: bool = False) -> dict[str, Any]:
    """The registry settings for pushing to ``refs``: the daemon's, without mirrors for the targets
    (they serve pulls only); ``insecure`` (the exporter's ``registry.insecure``) allows unverified TLS
    and plain HTTP."""
    out = dict(registries)
    for key in dict.fromkeys(k for ref in refs for k in (ref.domain, ref.registry_host)):
        cfg = registries.get(key)
        settings = HostSettings(mirrors=[], http=getattr(cfg, "http", None),
                                insecure=bool(getattr(cfg, "insecure", False)),
                                ca=list(getattr(cfg, "ca", ()) or ()))
        if insecure:
            settings = replace(settings, insecure=True)
        out[key] = settings
    return out


class _FileSlice:
    """``length`` bytes of a file from ``offset``, as a seekable request body that reports progress."""

    def __init__(self, path: Path, offset: int, length: int, report: Callable[[int], None]) -> None:
        self._file: BinaryIO = open(path, "rb")
        self._offset, self._length, self._pos = offset, length, 0
        self._report = report
        self.seek(0)

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        if pos != 0 or whence != os.SEEK_SET:
            raise ValueError("an upload body only rewinds to its start")
        self._file.seek(self._offset)
        self._pos = 0
        return 0

    def read(self, size: int = -1) -> bytes:
        left = self._length - self._pos
        if size < 0 or size > left:
            size = left
        data = self._file.read(size)
        self._pos += len(data)
        if data:
            self._report(len(data))
        return data

    def close(self) -> None:
        self._file.close()


def _raise_first(group: BaseExceptionGroup) -> None:
    """Re-raise the first real failure of a task group (siblings were only cancelled)."""
    leaves = leaf_errors(group)
    cancelled = anyio.get_cancelled_exc_class()
    raise next((e for e in leaves if not isinstance(e, cancelled)), leaves[0]) from None


def _non_distributable(desc: Descriptor) -> bool:
    return "nondistributable" in desc.media_type or "foreign" in desc.media_type


class ImagePusher:
    """Pushes one image tree to one or more references. ``store`` must hold every blob the tree
    references (non-distributable layers excepted)."""

    def __init__(self, client: RegistryClient, store: ContentStore, *,
                 progress: PushProgress | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 max_concurrent: int = MAX_CONCURRENT_UPLOADS) -> None:
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        self.client = client
        self.store = store
        self.progress = progress
        self.chunk_size = chunk_size
        self._limiter = anyio.CapacityLimiter(max_concurrent)

    # ----------------------------------------------------------------- the tree

    async def _read(self, digest: str, what: str) -> bytes:
        try:
            return await anyio.to_thread.run_sync(self.store.read, digest)
        except NotFound:
            raise NotFound(f"cannot push: {what} {digest} is not in the content store") from None

    async def _walk(self, root: Descriptor) -> tuple[list[Descriptor], list[tuple[Descriptor, bytes]]]:
        """(blobs, manifests children-first): what ``root`` references, deduplicated."""
        blobs: dict[str, Descriptor] = {}
        manifests: list[tuple[Descriptor, bytes]] = []
        seen: set[str] = set()

        async def visit(desc: Descriptor, depth: int) -> None:
            if desc.digest in seen:
                return
            seen.add(desc.digest)
            if depth > 4:
                raise InvalidArgument(f"cannot push: indexes nested too deeply at {desc.digest}")
            data = await self._read(desc.digest, "manifest")
            doc = parse_json_object(data, f"manifest {desc.digest}")
            media_type = desc.media_type or str(doc.get("mediaType") or "")
            try:
                kind = mediatypes.sniff_kind(media_type, doc)
            except ValueError as exc:
                raise InvalidArgument(f"cannot push {desc.digest}: {exc}") from None
            if not media_type:
                media_type = mediatypes.OCI_INDEX if kind == "index" else mediatypes.OCI_MANIFEST
            if kind == "index":
                for entry in doc.get("manifests") or []:
                    await visit(Descriptor.from_json(entry, f"index {desc.digest}"), depth + 1)
            else:
                children = [doc.get("config"), *(doc.get("layers") or [])]
                for child in children:
                    child_desc = Descriptor.from_json(child, f"manifest {desc.digest}")
                    if not _non_distributable(child_desc):
                        blobs.setdefault(child_desc.digest, child_desc)
            manifests.append((replace(desc, media_type=media_type, size=len(data)), data))

        await visit(root, 0)
        return list(blobs.values()), manifests

    # ----------------------------------------------------------------- pushing

    async def push(self, ref: Reference, root: Descriptor) -> PushResult:
        """Push the tree under ``root`` to ``ref`` (tagged with ``ref.tag``, or by digest)."""
        if ref.digest and ref.digest != root.digest:
            raise InvalidArgument(f"cannot push {root.digest} to {ref}: the reference names another digest")
        blobs, manifests = await self._walk(root)
        result = PushResult(root.digest)
        for desc in blobs:  # every blob must be here before anything is sent
            if not await anyio.to_thread.run_sync(self.store.exists, desc.digest):
                raise NotFound(f"cannot push {ref}: blob {desc.digest} is not in the content store")
        try:
            async with anyio.create_task_group() as tg:
                for desc in blobs:
                    tg.start_soon(self._push_blob_limited, ref, desc, result)
        except BaseExceptionGroup as group:
            _raise_first(group)
        for desc, data in manifests:
            tag = ref.tag if desc.digest == root.digest and ref.tag else desc.digest
            await self._put_manifest(ref, tag, desc, data)
        return result

    async def _push_blob_limited(self, ref: Reference, desc: Descriptor, result: PushResult) -> None:
        async with self._limiter:
            await self.push_blob(ref, desc, result)

    async def push_blob(self, ref: Reference, desc: Descriptor, result: PushResult | None = None) -> None:
        result = result if result is not None else PushResult("")
        if await self._blob_exists(ref, desc):
            result.existing.append(desc.digest)
            self._report(desc, desc.size, True)
        else:
            mounted, location = False, None
            for source in await self._mount_sources(ref, desc.digest):
                mounted, location = await self._try_mount(ref, desc, source)
                if mounted or location:
                    break
            if mounted:
                result.mounted.append(desc.digest)
                self._report(desc, desc.size, True)
            else:
                if location is None:
                    resp = await self.client.request(ref, "POST", "blobs/uploads/", body=b"",
                                                     headers={"Content-Length": "0"}, actions=PUSH_ACTIONS)
                    location = self._location(ref, resp)
                await self._upload(ref, desc, location)
                result.uploaded.append(desc.digest)
                result.bytes_uploaded += desc.size
        await self._remember_source(ref, desc.digest)

    def _report(self, desc: Descriptor, done: int, finished: bool) -> None:
        if self.progress is not None:
            self.progress(desc.digest, done, desc.size, finished)

    async def _blob_exists(self, ref: Reference, desc: Descriptor) -> bool:
        try:
            resp = await self.client.request(ref, "HEAD", f"blobs/{desc.digest}", actions=PUSH_ACTIONS)
        except RegistryNotFound:
            return False
        length = resp.headers.get("content-length")
        return length is None or not length.isdigit() or int(length) == desc.size

    async def _mount_sources(self, ref: Reference, digest: str) -> list[str]:
        """Other repositories of ``ref``'s registry known to hold ``digest``."""
        info = await anyio.to_thread.run_sync(self.store.info, digest)
        repos: list[str] = []
        pulled = info.labels.get(PULL_SOURCE_LABEL, "")
        domain, _, repo = pulled.partition("/")
        if domain == ref.domain and repo:
            repos.append(repo)
        repos += [r for r in info.labels.get(PUSH_SOURCE_LABEL_PREFIX + ref.domain, "").split(",") if r]
        return [r for r in dict.fromkeys(repos) if r != ref.repository]

    async def _remember_source(self, ref: Reference, digest: str) -> None:
        key = PUSH_SOURCE_LABEL_PREFIX + ref.domain

        def update() -> None:
            repos = [r for r in self.store.info(digest).labels.get(key, "").split(",") if r]
            if ref.repository not in repos:
                self.store.set_labels(digest, {key: ",".join([*repos, ref.repository][-8:])})

        await anyio.to_thread.run_sync(update)

    async def _try_mount(self, ref: Reference, desc: Descriptor, source: str) -> tuple[bool, str | None]:
        """(mounted, upload location when the registry opened an upload instead)."""
        query = urllib.parse.urlencode({"mount": desc.digest, "from": source})
        try:
            resp = await self.client.request(ref, "POST", f"blobs/uploads/?{query}", body=b"",
                                             headers={"Content-Length": "0"}, actions=PUSH_ACTIONS)
        except (RegistryUnauthorized, RegistryNotFound, RegistryError):
            return False, None  # no access to the source: a plain upload follows
        if resp.status == 201:
            return True, None
        return False, self._location(ref, resp) if resp.headers.get("location") else None

    def _location(self, ref: Reference, resp: Response) -> str:
        """The upload URL path from a ``Location`` header (relative or on the same host)."""
        location = resp.headers.get("location", "")
        if not location:
            raise RegistryError(f"{ref.name}: {resp.url} opened an upload without a Location header")
        base = urllib.parse.urlsplit(resp.url)
        target = urllib.parse.urlsplit(urllib.parse.urljoin(resp.url, location))
        if target.netloc != base.netloc:
            raise RegistryError(f"{ref.name}: upload location {location!r} is on another host "
                                f"than {base.netloc}, which is not supported")
        return target.path + (f"?{target.query}" if target.query else "")

    async def _upload(self, ref: Reference, desc: Descriptor, location: str) -> None:
        path = self.store.path(desc.digest)
        sent = [0]

        def report(n: int) -> None:
            sent[0] += n
            self._report(desc, min(sent[0], desc.size), False)

        octet = {"Content-Type": "application/octet-stream"}
        if desc.size > self.chunk_size:
            offset = 0
            while offset < desc.size:
                length = min(self.chunk_size, desc.size - offset)
                body = _FileSlice(path, offset, length, report)
                try:
                    resp = await self.client.request(
                        ref, "PATCH", location, body=body,  # type: ignore[arg-type]  # file-like
                        actions=PUSH_ACTIONS,
                        headers={**octet, "Content-Length": str(length),
                                 "Content-Range": f"{offset}-{offset + length - 1}"})
                finally:
                    body.close()
                location = self._location(ref, resp)
                offset += length
            put_body: bytes | _FileSlice = b""
            put_headers = {**octet, "Content-Length": "0"}
        else:
            put_body = _FileSlice(path, 0, desc.size, report)
            put_headers = {**octet, "Content-Length": str(desc.size)}
        sep = "&" if "?" in location else "?"
        target = f"{location}{sep}{urllib.parse.urlencode({'digest': desc.digest})}"
        try:
            resp = await self.client.request(ref, "PUT", target, body=put_body,  # type: ignore[arg-type]
                                             headers=put_headers, actions=PUSH_ACTIONS)
        finally:
            if isinstance(put_body, _FileSlice):
                put_body.close()
        got = resp.headers.get("docker-content-digest")
        if got and got != desc.digest:
            raise RegistryError(f"{ref.name}: registry stored blob {desc.digest} as {got}")
        self._report(desc, desc.size, True)

    async def _put_manifest(self, ref: Reference, tag: str, desc: Descriptor, data: bytes) -> None:
        resp = await self.client.request(ref, "PUT", f"manifests/{tag}", body=data, actions=PUSH_ACTIONS,
                                         headers={"Content-Type": desc.media_type,
                                                  "Content-Length": str(len(data))})
        got = resp.headers.get("docker-content-digest")
        if got and got != desc.digest:
            raise RegistryError(f"{ref.name}: registry stored manifest {desc.digest} as {got}")


async def push_image(client: RegistryClient, store: ContentStore, refs: list[Reference], root: Descriptor,
                     progress: PushProgress | None = None) -> list[PushResult]:
    """Push ``root`` to each of ``refs`` in turn (later names mount or find the blobs)."""
    pusher = ImagePusher(client, store, progress=progress)
    results = []
    for ref in refs:
        with trace.get_tracer("buildkitpy").start_as_current_span(f"push {ref}"):
            results.append(await pusher.push(ref, root))
    return results
