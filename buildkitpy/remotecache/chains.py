"""Key graphs with results <-> cache configs.

``build_config`` (export): the records for a set of key nodes (and everything they link to), with
each node's result as a chain of layer descriptors; equal records (same digest, same links) are
written once, equal layer chains too. ``RemoteIndex`` (import): a parsed config plus the layer
descriptors of its manifest, queried with the key nodes of a build the way BuildKit's solver
queries its cache: a record matches a node when its digest is the node's record digest and, for
every input, one of its links goes to a record matching one of the node's links for that input
with the same selector.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from buildkitpy.errors import InvalidArgument
from buildkitpy.remotecache.config import (
    CacheConfig,
    CacheInput,
    CacheLayer,
    CacheRecord,
    CacheResult,
    sort_config,
)
from buildkitpy.remotecache.keys import KeyNode, exportable

ANNOTATION_UNCOMPRESSED = "containerd.io/uncompressed"
ANNOTATION_CREATED = "buildkit/createdat"


@dataclass(frozen=True)
class LayerDesc:
    """One layer blob as a cache manifest lists it."""

    media_type: str
    digest: str
    size: int
    diff_id: str
    created_at: str = ""

    def to_json(self) -> dict[str, Any]:
        ann = {ANNOTATION_UNCOMPRESSED: self.diff_id}
        if self.created_at:
            ann[ANNOTATION_CREATED] = self.created_at
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, "annotations": ann}

    @classmethod
    def from_json(cls, obj: Any, what: str) -> LayerDesc:
        from buildkitpy.image.registry import Descriptor

        desc = Descriptor.from_json(obj, what)
        diff_id = desc.annotations.get(ANNOTATION_UNCOMPRESSED, "")
        return cls(desc.media_type, desc.digest, desc.size, str(diff_id),
                   str(desc.annotations.get(ANNOTATION_CREATED, "")))


@dataclass
class Exported:
    config: CacheConfig
    layers: list[LayerDesc]  # the blobs the config names, once each, in config order


def build_config(nodes: Iterable[KeyNode], results: dict[int, tuple[list[LayerDesc], str]]) -> Exported:
    """Records for ``nodes`` and what they link to; ``results`` maps ``id(node)`` to (layer chain
    from the base, createdAt) for the nodes whose result is exported."""
    memo: dict[int, bool] = {}
    records: list[CacheRecord] = []
    rec_index: dict[tuple, int] = {}
    node_rec: dict[int, int] = {}
    layers: list[CacheLayer] = []
    layer_index: dict[tuple[str, int], int] = {}
    blobs: dict[str, LayerDesc] = {}

    def chain_index(chain: list[LayerDesc]) -> int:
        parent = -1
        for desc in chain:
            blobs.setdefault(desc.digest, desc)
            key = (desc.digest, parent)
            idx = layer_index.get(key)
            if idx is None:
                idx = layer_index[key] = len(layers)
                layers.append(CacheLayer(desc.digest, parent))
            parent = idx
        return parent

    def visit(node: KeyNode) -> int | None:
        if id(node) in node_rec:
            return node_rec[id(node)]
        if not exportable(node, memo):
            return None
        inputs: list[list[CacheInput]] = []
        for links in node.deps:
            seen: set[CacheInput] = set()
            for link in links:
                idx = visit(link.node)
                if idx is not None:
                    seen.add(CacheInput(idx, link.selector))
            inputs.append(sorted(seen, key=lambda x: (x.link, x.selector)))
        key = (node.record_digest, tuple(tuple(x) for x in inputs))
        idx = rec_index.get(key)
        if idx is None:
            idx = rec_index[key] = len(records)
            records.append(CacheRecord(node.record_digest, inputs))
        res = results.get(id(node))
        if res is not None and res[0]:
            layer = chain_index(res[0])
            rec = records[idx]
            if all(r.layer != layer for r in rec.results):
                rec.results.append(CacheResult(layer, res[1]))
        node_rec[id(node)] = idx
        return idx

    for node in nodes:
        visit(node)
    cc = sort_config(CacheConfig(layers, records))
    return Exported(cc, [blobs[layer.blob] for layer in cc.layers])


class RemoteIndex:
    """An imported cache, queried by key nodes. ``layers`` maps blob digest to its descriptor (from
    the cache manifest); a result whose blobs the manifest does not list is ignored, as BuildKit
    ignores it."""

    def __init__(self, config: CacheConfig, layers: dict[str, LayerDesc], name: str = "") -> None:
        self.config = config
        self.layers = layers
        self.name = name
        self.by_digest: dict[str, list[int]] = {}
        for i, rec in enumerate(config.records):
            self.by_digest.setdefault(rec.digest, []).append(i)
        self._memo: dict[int, frozenset[int]] = {}
        self._nodes: list[KeyNode] = []  # keeps memo keys (ids) alive

    def match(self, node: KeyNode) -> frozenset[int]:
        got = self._memo.get(id(node))
        if got is not None:
            return got
        out: set[int] = set()
        for i in self.by_digest.get(node.record_digest, ()):
            rec = self.config.records[i]
            if len(rec.inputs) != len(node.deps):
                continue
            if all(self._input_matches(rec.inputs[k], node.deps[k]) for k in range(len(node.deps))):
                out.add(i)
        frozen = frozenset(out)
        self._memo[id(node)] = frozen
        self._nodes.append(node)
        return frozen

    def _input_matches(self, rec_links: list[CacheInput], node_links: list) -> bool:
        for link in node_links:
            matched = self.match(link.node)
            if matched and any(x.selector == link.selector and x.link in matched for x in rec_links):
                return True
        return False

    def result_chains(self, records: Iterable[int]) -> list[list[LayerDesc]]:
        """The layer chains of the results of ``records``, newest first."""
        found: list[tuple[str, list[LayerDesc]]] = []
        for i in records:
            rec = self.config.records[i]
            for res in rec.results:
                chain = self._descs(self.config.layer_chain(res.layer))
                if chain is not None:
                    found.append((res.created_at, chain))
            for ch in rec.chained_results:
                chain = self._descs(ch.layers)
                if chain is not None:
                    found.append((ch.created_at, chain))
        found.sort(key=lambda x: x[0], reverse=True)
        return [c for _, c in found]

    def _descs(self, indexes: list[int]) -> list[LayerDesc] | None:
        out = []
        for i in indexes:
            desc = self.layers.get(self.config.layers[i].blob)
            if desc is None:
                return None
            out.append(desc)
        return out


def layer_map(entries: Iterable[Any], what: str) -> dict[str, LayerDesc]:
    """Layer descriptors by digest from a cache manifest's entries (index manifests or manifest
    layers); entries without a diffID annotation are refused (their content cannot be checked)."""
    out: dict[str, LayerDesc] = {}
    for n, entry in enumerate(entries):
        desc = LayerDesc.from_json(entry, f"{what} entry {n}")
        if not desc.diff_id:
            raise InvalidArgument(f"{what}: layer {desc.digest} has no {ANNOTATION_UNCOMPRESSED} annotation")
        out[desc.digest] = desc
    return out
