"""Inline cache: the cache records of an image carried in its own config.

Export (``--export-cache type=inline``, buildx's ``--cache-to type=inline``, or the
``BUILDKIT_INLINE_CACHE=1`` build arg): the image exporter asks its build's
``JobCache.image_config`` (``config_with_cache``) to add ``moby.buildkit.cache.v0`` to the image
config: base64 of the JSON list of records (BuildKit's layout) for every step whose result is a
prefix of the image's layers, each result naming the index of its top layer in the image. Import: a
``type=registry`` import whose ref is an image without a cache config reads that key back
(``index_from_image``), the image's layers being the layers.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import anyio

from buildkitpy.errors import InvalidArgument
from buildkitpy.gocompat import go_json
from buildkitpy.image import mediatypes
from buildkitpy.image.reference import Reference
from buildkitpy.image.registry import Descriptor
from buildkitpy.remotecache.chains import LayerDesc, RemoteIndex, build_config
from buildkitpy.remotecache.config import CacheLayer, from_dict, go_time, record_dict

CONFIG_KEY = "moby.buildkit.cache.v0"
MAX_CONFIG_BYTES = 64 << 20


async def records_for_image(job_cache: Any, layers: list[Path], blobs: list[Any]) -> bytes | None:
    """The inline records for an image of ``layers`` (with their ``blobs``), or None."""
    if not layers:
        return None
    image = [str(p) for p in layers]
    results: dict[int, tuple[list[LayerDesc], str]] = {}
    nodes = []
    for node, snap in list(job_cache.results.values()):
        own = [str(p) for p in await anyio.to_thread.run_sync(snap.layers)]
        if not own or own != image[:len(own)]:
            continue
        # createdAt as the registry/local exporters give it: Go parses it as a time, "" fails
        created = go_time(await anyio.to_thread.run_sync(os.path.getmtime, own[-1]))
        chain = [LayerDesc("", blobs[i].digest, blobs[i].size, blobs[i].diff_id, created)
                 for i in range(len(own))]
        results[id(node)] = (chain, created)
        nodes.append(node)
    if not nodes:
        return None
    exported = build_config(nodes, results)
    position = {b.digest: i for i, b in enumerate(blobs)}
    out = []
    for rec in exported.config.records:
        doc = record_dict(rec)
        if rec.results:
            doc["layers"] = []
            for res in rec.results:
                indexes = exported.config.layer_chain(res.layer)
                top = exported.config.layers[indexes[-1]].blob
                doc["layers"].append({"layer": position[top], "createdAt": res.created_at})
        out.append(doc)
    return json.dumps(out, separators=(",", ":")).encode()


async def config_with_cache(job_cache: Any, config: bytes, layers: list[Path], blobs: list[Any]) -> bytes:
    """``config`` with the inline cache added when the build exports it (else unchanged)."""
    if not getattr(job_cache, "inline", False):
        return config
    data = await records_for_image(job_cache, layers, blobs)
    if data is None:
        return config
    doc = json.loads(config)
    doc[CONFIG_KEY] = base64.b64encode(data).decode()
    return ("{" + ",".join(f"{json.dumps(k)}:{go_json(doc[k])}" for k in sorted(doc)) + "}").encode()


async def index_from_image(client: Any, ref: Reference, doc: dict[str, Any], name: str,
                           worker: Any) -> RemoteIndex | None:
    """The inline cache of the image ``doc`` (a manifest, or an index: the worker's platform)."""
    manifest = doc
    if "manifests" in doc:
        chosen = await _platform_manifest(client, ref, doc, worker, name)
        if chosen is None:
            return None
        manifest = chosen
    cfg = manifest.get("config")
    entries = manifest.get("layers") or []
    if not isinstance(cfg, dict) or not entries:
        return None
    raw_config = await client.get_blob_bytes(ref, Descriptor.from_json(cfg, name), limit=MAX_CONFIG_BYTES)
    config = json.loads(raw_config)
    raw = config.get(CONFIG_KEY) if isinstance(config, dict) else None
    if not raw:
        return None
    try:
        records = json.loads(base64.b64decode(raw))
    except ValueError as exc:
        raise InvalidArgument(f"{name}: invalid inline cache: {exc}") from None
    diff_ids = ((config.get("rootfs") or {}).get("diff_ids")) or []
    if len(diff_ids) != len(entries):
        return None  # as BuildKit: a config that does not match its manifest carries no usable cache
    layers: dict[str, LayerDesc] = {}
    cc_layers = []
    for i, entry in enumerate(entries):
        desc = Descriptor.from_json(entry, name)
        layers[desc.digest] = LayerDesc(desc.media_type, desc.digest, desc.size, str(diff_ids[i]))
        cc_layers.append({"blob": desc.digest, "parent": i - 1})
    cc = from_dict({"layers": cc_layers, "records": records})
    cc.layers = [CacheLayer(x.blob, x.parent) for x in cc.layers]
    return RemoteIndex(cc, layers, name)


async def _platform_manifest(client: Any, ref: Reference, index: dict[str, Any], worker: Any,
                             name: str) -> dict[str, Any] | None:
    from buildkitpy.worker import host_platform

    want = dict(host_platform())
    for m in index.get("manifests") or []:
        if not isinstance(m, dict) or m.get("mediaType") not in mediatypes.MANIFESTS:
            continue
        p = m.get("platform") or {}
        if p.get("os") == want.get("os") and p.get("architecture") == want.get("architecture"):
            _, data = await client.get_manifest(ref.with_digest(m["digest"]))
            doc = json.loads(data)
            return doc if isinstance(doc, dict) else None
    return None
