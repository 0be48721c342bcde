"""Image resolve modes (``image.resolvemode``, the Dockerfile's ``image-resolve-mode``,
``ResolveImageConfig``'s ``ResolveMode``), with BuildKit's meaning:

- ``default``: ask the registry; if it cannot answer (unreachable, not found), fall back to what the
  tag last resolved to here. A registry that refuses access gets no fallback.
- ``pull``: always ask the registry; never fall back.
- ``local`` (BuildKit's "prefer local"): use what the tag last resolved to here without asking the
  registry; a tag never resolved here is resolved against the registry.

"What a tag last resolved to" is the pull database's ``image_refs`` record (per platform), written
whenever a tag is resolved against its registry, and also whenever the image exporter names an image
(``store=true``; for every platform): BuildKit's equivalent is the worker's image store.
A digest-pinned reference whose manifest is in the content store needs no registry in any mode.
"""

from __future__ import annotations

from typing import Any

import anyio

from buildkitpy.content.store import ContentStore
from buildkitpy.errors import BuildkitpyError, Canceled, InvalidArgument, NotFound, PermissionDenied
from buildkitpy.image.platforms import Platform, default_platform
from buildkitpy.image.pull import ChainIndex
from buildkitpy.image.reference import Reference
from buildkitpy.image.registry import Descriptor, RegistryClient
from buildkitpy.image.resolve import ResolvedImage, resolve_image

MODE_DEFAULT = "default"
MODE_PULL = "pull"
MODE_LOCAL = "local"
RESOLVE_MODES = (MODE_DEFAULT, MODE_PULL, MODE_LOCAL)


def parse_resolve_mode(value: str | None, what: str = "image resolve mode") -> str:
    """``value`` checked against the known modes; empty means ``default``."""
    mode = value or MODE_DEFAULT
    if mode not in RESOLVE_MODES:
        raise InvalidArgument(f"invalid {what} {mode!r} (want {', '.join(RESOLVE_MODES)})")
    return mode


def tag_name(ref: Reference) -> str:
    """The key a tag is recorded under: ``host/repository:tag``."""
    return f"{ref.name}:{ref.tag or 'latest'}"


def platform_key(platform: Platform) -> str:
    return str(platform.normalized())


class _ContentOnly:
    """A registry client stand-in that has nothing: resolution from the content store alone."""

    def __init__(self, ref: Reference) -> None:
        self.ref = ref

    async def get_manifest(self, ref: Reference, obj: str | None = None) -> tuple[Descriptor, bytes]:
        raise NotFound(f"{self.ref}: manifest {obj} is not in the local content store")

    async def get_blob_bytes(self, ref: Reference, desc: Descriptor, *args: Any) -> bytes:
        raise NotFound(f"{self.ref}: blob {desc.digest} is not in the local content store")


async def resolve_local(store: ContentStore, index: ChainIndex, ref: Reference,
                        platform: Platform) -> ResolvedImage | None:
    """``ref`` resolved without the registry, or None when it is not known here."""
    if ref.digest:
        pinned = ref
    else:
        record = await anyio.to_thread.run_sync(index.image_ref, tag_name(ref), platform_key(platform))
        if record is None:
            return None
        pinned = ref.with_digest(record[0])
    try:
        return await resolve_image(_ContentOnly(ref), store, pinned, platform)  # type: ignore[arg-type]
    except NotFound:
        return None


def record_exported_names(index: ChainIndex, names: list[Reference], digest: str,
                          canonical: bool) -> list[str]:
    """Record image exporter names for ``digest`` (blocking); with ``canonical`` also
    ``name:tag@digest``, as BuildKit's ``name-canonical``. Returns the recorded names."""
    recorded = []
    for ref in names:
        if ref.tag:
            recorded.append(tag_name(ref))
        if canonical and not ref.digest:
            recorded.append(f"{tag_name(ref)}@{digest}")
    for name in recorded:
        index.put_image_ref(name, "", digest, digest)
    return recorded


async def resolve_with_mode(client: RegistryClient, store: ContentStore, index: ChainIndex, ref: Reference,
                            platform: Platform | None, mode: str) -> ResolvedImage:
    """Resolve ``ref`` for ``platform`` under ``mode``; a tag resolved against its registry is
    recorded so that ``local`` (and ``default`` when the registry fails) can use it later."""
    mode = parse_resolve_mode(mode)
    wanted = (platform or default_platform()).normalized()
    if mode == MODE_LOCAL:
        local = await resolve_local(store, index, ref, wanted)
        if local is not None:
            return local
    try:
        resolved = await resolve_image(client, store, ref, wanted)
    except BuildkitpyError as exc:
        # A registry that refused access is an answer, not an outage: what another session pulled
        # with its credentials is not handed to one the registry turned away.
        if mode != MODE_DEFAULT or isinstance(exc, (Canceled, PermissionDenied)):
            raise
        local = await resolve_local(store, index, ref, wanted)
        if local is None:
            raise
        return local
    if not ref.digest:
        await anyio.to_thread.run_sync(index.put_image_ref, tag_name(ref), platform_key(wanted),
                                       resolved.digest, resolved.manifest_digest)
    return resolved
