"""Turning a finished build into a cache: its key graph, its results' layer blobs, the manifest.

``collect`` walks the build's key nodes from its final results: with ``mode=min`` only the final
results carry layers (every record they link to is written, without results), with ``mode=max``
every result does. Layer blobs are made by the image exporter's layer machinery (compressed once
per layer and compression, pulled layers reused as their registry blobs) into the worker's content
store; ``manifest`` wraps the config and layers as BuildKit does (an index listing layers and the
config, or with ``image-manifest=true`` an OCI image manifest whose config is the cache config).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from buildkitpy.content.store import ContentStore
from buildkitpy.image import compression as comp
from buildkitpy.image import mediatypes
from buildkitpy.remotecache import CACHE_CONFIG_MEDIA_TYPE
from buildkitpy.remotecache.chains import Exported, LayerDesc, build_config
from buildkitpy.remotecache.config import dump_config, go_time
from buildkitpy.remotecache.jobcache import JobCache
from buildkitpy.remotecache.keys import KeyNode


@dataclass
class CacheBlobs:
    """An export ready to upload: every blob is in ``store``."""

    exported: Exported
    config: bytes
    config_digest: str
    manifest: bytes
    manifest_digest: str
    manifest_media_type: str
    store: ContentStore
    mounts: list[Any] = field(default_factory=list)  # cachemounts.MountBlob in the manifest too

    def config_desc(self) -> dict[str, Any]:
        return {"mediaType": CACHE_CONFIG_MEDIA_TYPE, "digest": self.config_digest, "size": len(self.config)}

    def manifest_desc(self) -> dict[str, Any]:
        return {"mediaType": self.manifest_media_type, "digest": self.manifest_digest,
                "size": len(self.manifest)}


def result_nodes(job_cache: JobCache, refs: list[Any]) -> list[KeyNode]:
    """The key nodes of the build's result refs (``ResultRef``s already evaluated)."""
    from buildkitpy.remotecache.keys import from_cache_keys
    from buildkitpy.solver.loader import load_definition

    out = []
    memo: dict[str, KeyNode] = {}
    for ref in refs:
        graph = load_definition(ref.definition)
        if graph.result is None:
            continue
        nodes = job_cache.nodes.get(graph.result.digest)
        if nodes is not None and graph.result.index < len(nodes):
            out.append(nodes[graph.result.index])
        elif getattr(ref, "cache_keys", None):  # the solver core's keys (Result.cache_keys)
            out.extend(from_cache_keys(ref.cache_keys, memo))
    return out


def _reachable(targets: list[KeyNode]) -> list[KeyNode]:
    seen: dict[int, KeyNode] = {}
    stack = list(targets)
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen[id(n)] = n
        stack.extend(link.node for links in n.deps for link in links)
    return list(seen.values())


def _from_storage(storage: Any, nodes: list[KeyNode], held: dict[int, Any]) -> list[tuple[KeyNode, Any]]:
    """Handles on the results the solver's own storage has for ``nodes`` (blocking; the caller
    releases them): how results are found once the solver core keeps them by key."""
    out = []
    for n in nodes:
        if not n.storage_id or id(n) in held or n.random:
            continue
        results = storage.results(n.storage_id)
        for res in results:
            try:
                out.append((n, storage.load(n.storage_id, res)))
                break
            except LookupError:  # CacheResultGone: pruned meanwhile
                continue
    return out


async def collect(worker: Any, job_cache: JobCache, targets: list[KeyNode], *, mode: str,
                  image_options: Any, progress: Any, vertex: str, storage: Any = None) -> Exported:
    """The records and layer chains of ``targets`` (and, for ``mode=max``, of every result)."""
    target_ids = {id(n) for n in targets}
    chosen = [(node, snap) for key, (node, snap) in job_cache.results.items()
              if mode == "max" or key in target_ids]
    loaded: list[tuple[KeyNode, Any]] = []
    if storage is not None and hasattr(storage, "results"):
        wanted = _reachable(targets) if mode == "max" else list(targets)
        loaded = await anyio.to_thread.run_sync(_from_storage, storage, wanted, job_cache.results)
    try:
        return await _collect(worker, chosen + loaded, targets, image_options, progress, vertex)
    finally:
        for _, snap in loaded:
            await anyio.to_thread.run_sync(snap.release)


async def _collect(worker: Any, chosen: list[tuple[KeyNode, Any]], targets: list[KeyNode], image_options: Any,
                   progress: Any, vertex: str) -> Exported:
    from buildkitpy.exporter.imagebuild.assemble import _LayerExporter

    layer_lists: list[list[Path]] = []
    for _, snap in chosen:
        layer_lists.append(await anyio.to_thread.run_sync(snap.layers))
    exporter = _LayerExporter(worker, image_options, progress, vertex)
    await exporter.run([(p, None) for layers in layer_lists for p in layers])
    oci = image_options.oci_mediatypes
    results: dict[int, tuple[list[LayerDesc], str]] = {}
    for (node, _), layers in zip(chosen, layer_lists, strict=True):
        chain = []
        for path in layers:
            blob = exporter.blobs[(str(path), None)]
            media_type = (comp.convert_media_type(blob.media_type, oci) if blob.media_type
                          else comp.layer_media_type(blob.kind, oci))
            created = go_time(os.stat(path).st_mtime)
            chain.append(LayerDesc(media_type, blob.digest, blob.size, blob.diff_id, created))
        if chain:
            results[id(node)] = (chain, chain[-1].created_at)
    roots = list(targets) + [node for node, _ in chosen]
    return build_config(roots, results)


def manifest(exported: Exported, config_desc: dict[str, Any], *, oci: bool,
             image_manifest: bool, extra: list[dict[str, Any]] = ()) -> tuple[str, bytes]:  # type: ignore[assignment]
    """(media type, bytes) of the cache manifest over ``exported``'s layers (and ``extra`` blobs)
    and its config."""
    layers = [d.to_json() for d in exported.layers] + list(extra)
    for d in layers:
        d["mediaType"] = comp.convert_media_type(d["mediaType"], oci)
    if image_manifest:
        doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": mediatypes.OCI_MANIFEST,
                               "config": config_desc, "layers": layers}
        return mediatypes.OCI_MANIFEST, _go_json(doc)
    media_type = mediatypes.OCI_INDEX if oci else mediatypes.DOCKER_MANIFEST_LIST
    return media_type, _go_json({"schemaVersion": 2, "mediaType": media_type,
                                 "manifests": [*layers, config_desc]})


def _go_json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


async def prepare(worker: Any, job_cache: JobCache, targets: list[KeyNode], *, mode: str, image_options: Any,
                  image_manifest: bool, progress: Any, vertex: str, mounts: list[Any] = (),  # type: ignore[assignment]
                  storage: Any = None) -> CacheBlobs | None:
    """Collect, write the config and manifest into the content store; None when nothing is
    exportable (no result has layers)."""
    exported = await collect(worker, job_cache, targets, mode=mode, image_options=image_options,
                             progress=progress, vertex=vertex, storage=storage)
    if not exported.config.layers and not mounts:
        return None
    store = worker.image_puller.store
    config = dump_config(exported.config)
    config_digest = await anyio.to_thread.run_sync(store.write_bytes, config)
    config_desc = {"mediaType": CACHE_CONFIG_MEDIA_TYPE, "digest": config_digest, "size": len(config)}
    media_type, data = manifest(exported, config_desc, oci=image_options.oci_mediatypes,
                                image_manifest=image_manifest,
                                extra=[m.to_json(image_options.oci_mediatypes) for m in mounts])
    manifest_digest = await anyio.to_thread.run_sync(store.write_bytes, data)
    return CacheBlobs(exported, config, config_digest, data, manifest_digest, media_type, store, list(mounts))
