"""The ``docker-image://`` source: resolve an image for the vertex's platform and pull it into a
snapshot chain (``buildkitpy.image``).

Cache key: the manifest digest (of what the reference names) and the platform, like BuildKit's
manifest key. A digest-pinned reference (what the Dockerfile frontend emits after
``ResolveImageConfig``) is keyed without I/O; a tag is resolved in ``resolve()`` (once per build,
before ``cache_map``), so a rebuild from a tag that did not move is fully cached and one from a tag
that moved is not. ``image.resolvemode`` (default, pull, local) decides whether the registry or what
the tag last resolved to here is asked (``buildkitpy.image.resolvemode``).

Registry credentials come from the build's sessions (``Auth`` attachable); registry settings
(mirrors, http, insecure, ca) from ``worker.config.registries`` when the worker carries a config.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from opentelemetry import trace

from buildkitpy.errors import InvalidArgument, SessionNotFound
from buildkitpy.image.platforms import Platform, default_platform, from_oci
from buildkitpy.image.pull import ProgressFn
from buildkitpy.image.reference import Reference, parse_reference
from buildkitpy.image.registry import RegistryClient
from buildkitpy.image.resolve import ResolvedImage
from buildkitpy.image.resolvemode import parse_resolve_mode, resolve_with_mode
from buildkitpy.snapshot.api import ImmutableSnapshot
from buildkitpy.solver.asyncutil import blocking
from buildkitpy.solver.cachekey import CacheMap, go_digest, go_marshal
from buildkitpy.solver.loader import Vertex
from buildkitpy.solver.ops.base import OpContext
from buildkitpy.solver.ops.source import register_source

ATTR_RESOLVE_MODE = "image.resolvemode"
ATTR_LAYER_LIMIT = "image.layerlimit"

def registry_client(worker: Any, session_ids: list[str]) -> RegistryClient:
    """A client with the daemon's registry settings and the build sessions' credentials."""
    config = getattr(worker, "config", None)
    registries = getattr(config, "registries", None) or {}

    async def credentials(host: str) -> tuple[str, str]:
        from buildkitpy.session.auth import credentials as session_credentials

        sessions = getattr(worker, "sessions", None)
        if sessions is None:
            return "", ""
        for sid in session_ids:
            try:
                session = await sessions.get(sid.split(":", 1)[-1], timeout=0.5)
            except SessionNotFound:
                continue
            return await session_credentials(session, host)
        return "", ""

    return RegistryClient(registries, credentials)


def _platform_of(vertex: Vertex, worker: Any) -> Platform:
    if vertex.op.HasField("platform"):
        p = vertex.op.platform
        return Platform(p.OS, p.Architecture, p.Variant).normalized()
    platforms = getattr(worker, "platforms", None) or []
    return (from_oci(platforms[0]) if platforms else None) or default_platform()


def manifest_cache_key(digest: str, platform: Platform, limit: int | None = None) -> str:
    """BuildKit's key of an image source (its ``mainManifestKey`` under the source op's
    ``buildkit.source.v0:`` prefix): json.Marshal of {Digest, OS, Arch, Variant, Limit}."""
    key: dict[str, object] = {"Digest": digest, "OS": platform.os, "Arch": platform.architecture}
    if platform.variant:
        key["Variant"] = platform.variant
    if limit is not None:
        key["Limit"] = limit
    return go_digest("buildkit.source.v0:" + go_digest(go_marshal(key)))


async def resolve_image_config(worker: Any, ref: str, platform: Platform | None,
                               session_ids: list[str], resolve_mode: str = "") -> ResolvedImage:
    """For ``ResolveImageConfig``/``ResolveSourceMeta``: ``.digest`` and ``.config_bytes``."""
    mode = parse_resolve_mode(resolve_mode, "ResolveMode")
    return await resolve_ref(worker, parse_reference(ref), platform, session_ids, mode)


async def resolve_ref(worker: Any, ref: Reference, platform: Platform | None, session_ids: list[str],
                      mode: str) -> ResolvedImage:
    """``ref`` resolved under resolve ``mode`` with the worker's store and registry settings."""
    puller = worker.image_puller
    client = registry_client(worker, session_ids)
    return await resolve_with_mode(client, puller.store, puller.chains, ref, platform, mode)


async def resolve_and_pull(worker: Any, identifier: str, attrs: Any, platform: Platform | None,
                           progress: ProgressFn | None, session_ids: list[str] | None = None,
                           resolved: ResolvedImage | None = None) -> tuple[str, ImmutableSnapshot]:
    """Resolve ``docker-image://<ref>`` (unless ``resolved`` is given) and pull it; returns
    (manifest cache key, snapshot)."""
    ref = _parse_identifier(identifier)
    mode = _resolve_mode(attrs, identifier)
    platform = (platform or default_platform()).normalized()
    puller = worker.image_puller
    client = registry_client(worker, session_ids or [])
    if resolved is None:
        resolved = await resolve_with_mode(client, puller.store, puller.chains, ref, platform, mode)
    limit = _layer_limit(attrs, identifier)
    if limit is not None:  # only the lowest ``limit`` layers (image.layerlimit)
        if limit > len(resolved.layers):
            raise InvalidArgument(f"{identifier}: layer limit {limit} is greater than the number of layers "
                                  f"in the image ({len(resolved.layers)})")
        resolved = dataclasses.replace(resolved, layers=resolved.layers[:limit],
                                       diff_ids=resolved.diff_ids[:limit])
    with trace.get_tracer("buildkitpy").start_as_current_span(f"pull {ref}"):
        result = await puller.pull(client, resolved, progress)
    snapshot = result.snapshot
    if snapshot is None:  # an image without layers is an empty tree
        mutable = await blocking(worker.snapshots.new_mutable, None, f"empty image {ref}")
        snapshot = await blocking(mutable.commit)
    return manifest_cache_key(resolved.digest, platform, limit), snapshot


def _resolve_mode(attrs: Any, identifier: str) -> str:
    return parse_resolve_mode(attrs.get(ATTR_RESOLVE_MODE, ""), f"{ATTR_RESOLVE_MODE} of {identifier}")


def _layer_limit(attrs: Any, identifier: str) -> int | None:
    raw = attrs.get(ATTR_LAYER_LIMIT, "")
    if not raw:
        return None
    try:
        limit = int(raw)
    except ValueError:
        limit = -1
    if limit < 0:
        raise InvalidArgument(f"{identifier}: {ATTR_LAYER_LIMIT} must be a non-negative integer, got {raw!r}")
    return limit


def _parse_identifier(identifier: str) -> Reference:
    scheme, sep, rest = identifier.partition("://")
    if scheme != "docker-image" or not sep or not rest:
        raise InvalidArgument(f"invalid image source identifier {identifier!r} (want docker-image://<ref>)")
    return parse_reference(rest)


@register_source("docker-image")
class ImageSource:
    def __init__(self, vertex: Vertex) -> None:
        self.vertex = vertex
        self.identifier = vertex.op.source.identifier
        self.ref = _parse_identifier(self.identifier)
        self.attrs = dict(vertex.op.source.attrs)
        self.mode = _resolve_mode(self.attrs, self.identifier)
        self.resolved: ResolvedImage | None = None

    async def resolve(self, ctx: OpContext) -> None:
        """A tag is resolved here, once per build, so that its cache key is its manifest digest."""
        if self.ref.digest or self.resolved is not None:
            return
        platform = _platform_of(self.vertex, ctx.worker)
        self.resolved = await resolve_ref(ctx.worker, self.ref, platform, ctx.job.session_ids, self.mode)

    def cache_map(self, ctx: OpContext) -> CacheMap:
        platform = _platform_of(self.vertex, ctx.worker)
        limit = _layer_limit(self.attrs, self.identifier)
        digest = self.ref.digest or (self.resolved.digest if self.resolved is not None else "")
        if not digest:
            raise InvalidArgument(f"{self.identifier}: tag not resolved before its cache key was needed")
        return CacheMap(digest=manifest_cache_key(digest, platform, limit))

    async def execute(self, ctx: OpContext,
                      inputs: list[ImmutableSnapshot | None]) -> list[ImmutableSnapshot]:
        bus, vertex = ctx.job.progress, ctx.vertex.digest

        def progress(status_id: str, current: int, total: int, done: bool) -> None:
            bus.status(vertex, status_id, name=status_id, current=current, total=total, completed=done)

        platform = _platform_of(self.vertex, ctx.worker)
        _, snapshot = await resolve_and_pull(ctx.worker, self.identifier, self.attrs, platform, progress,
                                             ctx.job.session_ids, self.resolved)
        return [snapshot]
