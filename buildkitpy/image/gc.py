"""Garbage collection of the content store and of the records that point into it (run by prune).

Records of snapshots that no longer exist are dropped: ChainID and pulled-layer records
(``image/chains.db``) and exported-layer records (``exporter/layers.db``). Then every blob is
deleted that nothing still references. Kept are:

- the blob a live snapshot was unpacked from (pulled layers: exports reuse it) or exported as
  (exporting the same layers again reuses it);
- everything reachable from an image the image exporter named (index, manifests, configs,
  layers): ``FROM name`` with ``image-resolve-mode=local`` needs all of it;
- the index, manifest and config a registry tag last resolved to (small; ``local`` resolution
  needs them); their layers only while a snapshot unpacked from them is live, and a later pull
  downloads what is missing.

Blobs are only deleted while no build is running (``busy``): a running pull or export holds blobs
that no record names yet. The caller also keeps builds from starting until the collection is done
(``control.usage.collect_content``): one starting halfway could pick a blob about to go, or record
one after the live set was read. BuildKit closes that window with containerd leases.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from buildkitpy.content.store import ContentStore
from buildkitpy.errors import BuildkitpyError
from buildkitpy.image import mediatypes
from buildkitpy.image.pull import ChainIndex


@dataclass
class ContentGCResult:
    deleted: list[str] = field(default_factory=list)  # blob digests
    freed: int = 0  # bytes
    forgotten_snapshots: int = 0  # snapshot ids whose chain/layer records were dropped
    skipped: bool = False  # blobs left alone because builds were running


def _children(store: ContentStore, digest: str, *, layers: bool) -> list[str]:
    """The blobs an index or manifest refers to (none for other blobs or unreadable ones)."""
    try:
        if store.info(digest).size > 4 << 20:
            return []  # manifests and indexes are small; this is a layer or something else
        doc = json.loads(store.read(digest))
    except (BuildkitpyError, ValueError, UnicodeDecodeError, OSError):
        return []
    if not isinstance(doc, dict):
        return []
    out: list[str] = []
    for entry in doc.get("manifests") or []:
        if isinstance(entry, dict) and isinstance(entry.get("digest"), str):
            out.append(entry["digest"])
    config = doc.get("config")
    if isinstance(config, dict) and isinstance(config.get("digest"), str):
        out.append(config["digest"])
    if layers:
        for entry in doc.get("layers") or []:
            if isinstance(entry, dict) and isinstance(entry.get("digest"), str) and \
                    entry.get("mediaType", "") not in mediatypes.INDEXES:
                out.append(entry["digest"])
    return out


def reachable(store: ContentStore, roots: set[str], *, layers: bool) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        digest = todo.pop()
        if digest in seen:
            continue
        seen.add(digest)
        if _well_formed(digest) and store.exists(digest):
            todo.extend(_children(store, digest, layers=layers))
    return seen


def _well_formed(digest: str) -> bool:
    return digest.startswith("sha256:") and len(digest) == 71


class ExportedLayers(Protocol):
    """The exporter's layer-blob records (``exporter/layers.db``): ``(snapshot id/variant, digest)``."""

    def entries(self) -> list[tuple[str, str]]: ...

    def forget_layer_keys(self, keys: set[str]) -> None: ...


def collect(store: ContentStore, chains: ChainIndex, exported: ExportedLayers, live: set[str], *,
            content_roots: Iterable[Callable[[], set[str]]] = (), busy: bool) -> ContentGCResult:
    """Drop records of snapshots not in ``live``, then (unless ``busy``) unreferenced blobs. Blocking.

    ``content_roots`` name more blobs to keep (e.g. images a build history record names)."""
    result = ContentGCResult()
    pulled = chains.layer_blob_records()
    gone = ({sid for sid, _ in pulled} | chains.snapshot_ids()) - live
    chains.forget_snapshots(gone)
    result.forgotten_snapshots = len(gone)
    exported_entries = exported.entries()
    exported.forget_layer_keys({key for key, _ in exported_entries if key.split("/", 1)[0] not in live})

    keep = {digest for sid, digest in pulled if sid in live}
    keep |= {digest for key, digest in exported_entries if key.split("/", 1)[0] in live}
    keep |= reachable(store, chains.image_ref_digests(named=True), layers=True)
    keep |= reachable(store, chains.image_ref_digests(named=False), layers=False)
    for roots in content_roots:
        keep |= roots()
    if busy:
        result.skipped = True
        return result
    for digest in list(store.walk()):
        if digest in keep or not _well_formed(digest):
            continue
        try:
            size = store.info(digest).size
            store.delete(digest)
        except BuildkitpyError:
            continue  # deleted meanwhile
        result.deleted.append(digest)
        result.freed += size
    return result
