"""Resolving a reference to one platform's manifest and config (what ``ResolveImageConfig`` and
``ResolveSourceMeta`` answer, and what a pull starts from).

Manifests and configs are kept in the content store, so a digest-pinned reference that was seen
before resolves without asking the registry.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import anyio

from buildkitpy.content.store import ContentStore, validate_digest
from buildkitpy.errors import InvalidArgument, NotFound
from buildkitpy.image import mediatypes
from buildkitpy.image.platforms import Platform, best_match, default_platform, from_oci
from buildkitpy.image.reference import Reference
from buildkitpy.image.registry import Descriptor, RegistryClient, RegistryError


@dataclass
class ResolvedImage:
    ref: Reference  # pinned to ``digest``
    digest: str  # of what the reference names (the index for multi-platform images)
    manifest_digest: str  # the chosen platform's manifest
    manifest: dict[str, Any]
    config_digest: str
    config_bytes: bytes
    layers: list[Descriptor]
    diff_ids: list[str]
    platform: Platform
    config: dict[str, Any] = field(default_factory=dict)

    def chain_ids(self) -> list[str]:
        return chain_ids(self.diff_ids)


def chain_ids(diff_ids: list[str]) -> list[str]:
    """OCI ChainIDs: ``C0 = D0``, ``Cn = sha256(C(n-1) + " " + Dn)``."""
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out


def parse_json_object(data: bytes, what: str) -> dict[str, Any]:
    """``data`` as a JSON object, or a clear error naming ``what``."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{what} is not a JSON object")
    return doc


async def _manifest(client: RegistryClient, store: ContentStore, ref: Reference,
                    obj: str) -> tuple[str, str, bytes]:
    """(digest, media type, bytes) of a manifest by tag or digest, cached by digest."""
    if obj.startswith("sha256:") and await anyio.to_thread.run_sync(store.exists, obj):
        data = await anyio.to_thread.run_sync(store.read, obj)
        return obj, "", data
    desc, data = await client.get_manifest(ref, obj)
    await anyio.to_thread.run_sync(store.write_bytes, data, desc.digest)
    return desc.digest, desc.media_type, data


async def _blob(client: RegistryClient, store: ContentStore, ref: Reference, desc: Descriptor) -> bytes:
    if not await anyio.to_thread.run_sync(store.exists, desc.digest):
        data = await client.get_blob_bytes(ref, desc)
        await anyio.to_thread.run_sync(store.write_bytes, data, desc.digest)
        return data
    return await anyio.to_thread.run_sync(store.read, desc.digest)


async def resolve_image(client: RegistryClient, store: ContentStore, ref: Reference,
                        platform: Platform | None = None) -> ResolvedImage:
    """Resolve ``ref`` for ``platform`` (default: the host's)."""
    wanted = (platform or default_platform()).normalized()
    top_digest, media_type, data = await _manifest(client, store, ref, ref.object)
    doc = parse_json_object(data, f"manifest of {ref}")
    try:
        kind = mediatypes.sniff_kind(media_type, doc)
    except ValueError as exc:
        raise InvalidArgument(f"{ref}: {exc}") from None
    manifest_digest = top_digest
    if kind == "index":
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise InvalidArgument(f"{ref}: index has no manifests list")
        descs = [Descriptor.from_json(e, f"index of {ref}") for e in entries]
        # Attestation manifests carry platform unknown/unknown and never match.
        candidates = [from_oci(d.platform) if d.media_type not in mediatypes.INDEXES else None for d in descs]
        chosen = best_match(candidates, wanted)
        if chosen is None:
            available = ", ".join(str(c) for c in candidates if c is not None) or "none"
            raise NotFound(f"{ref}: no image for platform {wanted} (available: {available})")
        manifest_digest, media_type, data = await _manifest(client, store, ref, descs[chosen].digest)
        doc = parse_json_object(data, f"manifest {manifest_digest} of {ref}")
        try:
            if mediatypes.sniff_kind(media_type, doc) != "manifest":
                raise InvalidArgument(f"{ref}: nested indexes are not supported")
        except ValueError as exc:
            raise InvalidArgument(f"{ref}: {exc}") from None
    config_desc = Descriptor.from_json(doc.get("config"), f"manifest {manifest_digest} of {ref}")
    layers = [Descriptor.from_json(layer, f"manifest {manifest_digest} of {ref}")
              for layer in (doc.get("layers") or [])]
    try:
        config_bytes = await _blob(client, store, ref, config_desc)
    except RegistryError as exc:
        raise RegistryError(f"{ref}: fetching image config {config_desc.digest}: {exc}") from exc
    config = parse_json_object(config_bytes, f"image config {config_desc.digest} of {ref}")
    rootfs = config.get("rootfs") or {}
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
        raise InvalidArgument(f"{ref}: image config lists {len(diff_ids or [])} diff_ids for "
                              f"{len(layers)} layers")
    for diff_id in diff_ids:
        validate_digest(diff_id)
    image_platform = from_oci(config) or wanted
    return ResolvedImage(ref.with_digest(top_digest), top_digest, manifest_digest, doc, config_desc.digest,
                         config_bytes, layers, list(diff_ids), image_platform, config)
