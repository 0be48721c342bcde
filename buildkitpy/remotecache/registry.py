"""``type=registry``: the cache as a manifest (list) in a registry repository.

Export attrs as BuildKit's: ``ref`` (required; tag ``latest`` when none), ``mode``,
``oci-mediatypes`` (default true), ``image-manifest`` (default false; needs OCI media types),
``compression``/``compression-level``/``force-compression``, ``ignore-error``,
``registry.insecure``. Import attrs: ``ref``, ``registry.insecure``. Blobs go up first (layers,
then the config), then the manifest under the tag, so the registry never holds a manifest whose
blobs are missing. Importing an image ref whose manifest carries no cache config reads its inline
cache (``buildkitpy.remotecache.inline``).
"""

from __future__ import annotations

import json
from typing import Any

from buildkitpy.errors import InvalidArgument, NotFound
from buildkitpy.image import mediatypes
from buildkitpy.image.push import PUSH_ACTIONS, ImagePusher, push_registries
from buildkitpy.image.reference import Reference, parse_reference
from buildkitpy.image.registry import Descriptor, RegistryClient
from buildkitpy.remotecache import CACHE_CONFIG_MEDIA_TYPE, cachemounts
from buildkitpy.remotecache.chains import RemoteIndex, layer_map
from buildkitpy.remotecache.config import parse_config
from buildkitpy.remotecache.exporter import CacheBlobs
from buildkitpy.remotecache.jobcache import ImportedCache

MAX_CONFIG_BYTES = 64 << 20


def cache_ref(attrs: dict[str, str]) -> Reference:
    raw = attrs.get("ref", "")
    if not raw:
        raise InvalidArgument("registry cache needs ref=<image reference>")
    try:
        ref = parse_reference(raw)
    except InvalidArgument as exc:
        raise InvalidArgument(f"invalid registry cache ref {raw!r}: {exc}") from None
    if not ref.tag and not ref.digest:
        ref = Reference(ref.domain, ref.repository, "latest")
    return ref


def client_for(worker: Any, session: Any, ref: Reference, insecure: bool, *, push: bool) -> RegistryClient:
    config = getattr(worker, "config", None)
    registries = getattr(config, "registries", None) or {}
    if push or insecure:
        registries = push_registries(registries, [ref], insecure=insecure)

    async def credentials(host: str) -> tuple[str, str]:
        if session is None:
            return "", ""
        from buildkitpy.session.auth import credentials as session_credentials

        return await session_credentials(session, host)

    return RegistryClient(registries, credentials)


async def export(worker: Any, session: Any, blobs: CacheBlobs, attrs: dict[str, str], insecure: bool,
                 report: Any = None) -> dict[str, str]:
    ref = cache_ref(attrs)
    client = client_for(worker, session, ref, insecure, push=True)
    pusher = ImagePusher(client, blobs.store, progress=report)
    target = Reference(ref.domain, ref.repository)
    for d in [*blobs.exported.layers, *blobs.mounts]:
        await pusher.push_blob(target, Descriptor(getattr(d, "media_type", ""), d.digest, d.size))
    config = Descriptor(CACHE_CONFIG_MEDIA_TYPE, blobs.config_digest, len(blobs.config))
    await pusher.push_blob(target, config)
    tag = ref.tag or blobs.manifest_digest
    await client.request(target, "PUT", f"manifests/{tag}", body=blobs.manifest, actions=PUSH_ACTIONS,
                         headers={"Content-Type": blobs.manifest_media_type,
                                  "Content-Length": str(len(blobs.manifest))})
    return {}


def index_from_manifest(data: bytes, media_type: str, what: str) -> tuple[dict[str, Any] | None,
                                                                       list[Any], dict[str, Any]]:
    """(config descriptor or None, layer entries, the parsed document) of a cache manifest."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{what}: manifest is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{what}: manifest is not a JSON object")
    media_type = media_type or str(doc.get("mediaType") or "")
    if media_type in mediatypes.INDEXES or "manifests" in doc:
        entries = doc.get("manifests") or []
        config = next((m for m in entries if isinstance(m, dict)
                       and m.get("mediaType") == CACHE_CONFIG_MEDIA_TYPE), None)
        return config, [m for m in entries if m is not config], doc
    cfg = doc.get("config")
    if isinstance(cfg, dict) and cfg.get("mediaType") == CACHE_CONFIG_MEDIA_TYPE:
        return cfg, list(doc.get("layers") or []), doc
    return None, list(doc.get("layers") or []), doc


async def load(worker: Any, session: Any, attrs: dict[str, str], insecure: bool) -> ImportedCache | None:
    """The cache at ``ref``; None when the ref does not exist (nothing to import yet)."""
    ref = cache_ref(attrs)
    client = client_for(worker, session, ref, insecure, push=False)
    name = f"registry {ref}"
    try:
        desc, data = await client.get_manifest(ref)
    except NotFound:
        return None
    config_desc, entries, doc = index_from_manifest(data, desc.media_type, name)
    if config_desc is None:
        from buildkitpy.remotecache import inline

        index = await inline.index_from_image(client, ref, doc, name, worker)
        if index is None:
            return None
        return ImportedCache(index, client, ref, name)
    cdesc = Descriptor.from_json(config_desc, name)
    config = parse_config(await client.get_blob_bytes(ref, cdesc, limit=MAX_CONFIG_BYTES))
    return ImportedCache(RemoteIndex(config, layer_map(entries, name), name), client, ref, name,
                         mounts=cachemounts.from_entries(entries))
