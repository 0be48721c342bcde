"""The cache config document (``application/vnd.buildkit.cacheconfig.v0``) as plain data.

Field names, omission rules and ordering follow BuildKit's ``cache/remotecache/v1/types`` and its
``sortConfig``, so a config we write reads the same in BuildKit and the other way round:

- ``layers``: ``{"blob": digest, "parent": index}`` (``parent`` -1 for a base layer, omitted when 0),
- ``records``: ``{"digest": key, "inputs": [[{"selector": s, "link": record index}, ...], ...],
  "layers": [{"layer": index, "createdAt": time}], "chains": [{"layers": [...], "createdAt": time}]}``.

Everything here is a pure function over bytes and dicts; ``parse_config`` refuses anything that
would make an importer index out of range or loop.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from typing import Any

from buildkitpy.errors import InvalidArgument

MAX_CONFIG_BYTES = 64 << 20
_ZERO_TIME = "0001-01-01T00:00:00Z"


@dataclass
class LayerAnnotations:
    """What the s3 backend stores per layer (it has no manifest to carry descriptors)."""

    media_type: str = ""
    diff_id: str = ""
    size: int = 0
    created_at: str = _ZERO_TIME


@dataclass
class CacheLayer:
    blob: str
    parent: int = -1
    annotations: LayerAnnotations | None = None


@dataclass
class CacheResult:
    layer: int
    created_at: str = _ZERO_TIME


@dataclass
class ChainedResult:
    layers: list[int]
    created_at: str = _ZERO_TIME


@dataclass(frozen=True)
class CacheInput:
    link: int
    selector: str = ""


@dataclass
class CacheRecord:
    digest: str
    inputs: list[list[CacheInput]] = field(default_factory=list)
    results: list[CacheResult] = field(default_factory=list)
    chained_results: list[ChainedResult] = field(default_factory=list)


@dataclass
class CacheConfig:
    layers: list[CacheLayer] = field(default_factory=list)
    records: list[CacheRecord] = field(default_factory=list)

    def layer_chain(self, index: int) -> list[int]:
        """Layer indexes from the base to ``index`` (``parse_config`` guarantees no loops)."""
        chain: list[int] = []
        while index != -1:
            chain.append(index)
            index = self.layers[index].parent
        return chain[::-1]


def go_time(ts: float | None = None) -> str:
    """A Unix time as Go's ``time.Time`` JSON (RFC 3339, UTC, nanoseconds without trailing zeros)."""
    if ts is None:
        return _ZERO_TIME
    whole = int(ts)
    nanos = int(round((ts - whole) * 1e9))
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    base = datetime.datetime.fromtimestamp(whole, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    frac = f".{nanos:09d}".rstrip("0") if nanos else ""
    return f"{base}{frac}Z"


# -- writing ---------------------------------------------------------------------------------------


def to_dict(cc: CacheConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if cc.layers:
        layers = []
        for layer in cc.layers:
            d: dict[str, Any] = {"blob": layer.blob}
            if layer.parent != 0:
                d["parent"] = layer.parent
            if layer.annotations is not None:
                a = layer.annotations
                ann: dict[str, Any] = {}
                if a.media_type:
                    ann["mediaType"] = a.media_type
                if a.diff_id:
                    ann["diffID"] = a.diff_id
                if a.size:
                    ann["size"] = a.size
                ann["createdAt"] = a.created_at or _ZERO_TIME
                d["annotations"] = ann
            layers.append(d)
        out["layers"] = layers
    if cc.records:
        out["records"] = [record_dict(r) for r in cc.records]
    return out


def record_dict(r: CacheRecord) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if r.results:
        d["layers"] = [{"layer": x.layer, "createdAt": x.created_at} for x in r.results]
    if r.chained_results:
        d["chains"] = [{"layers": list(x.layers), "createdAt": x.created_at} for x in r.chained_results]
    if r.digest:
        d["digest"] = r.digest
    if r.inputs:
        d["inputs"] = [[({"selector": i.selector} if i.selector else {}) | {"link": i.link} for i in inp]
                       for inp in r.inputs]
    return d


def dump_config(cc: CacheConfig) -> bytes:
    """The config as compact JSON (Go's ``json.Marshal`` layout)."""
    return json.dumps(to_dict(cc), separators=(",", ":"), ensure_ascii=False).encode()


def sort_config(cc: CacheConfig) -> CacheConfig:
    """Layers and records in BuildKit's canonical order (so equal caches give equal bytes)."""
    order = sorted(range(len(cc.layers)), key=lambda i: (cc.layers[i].blob, cc.layers[i].parent))
    new_layer = {old: new for new, old in enumerate(order)}
    layers = [CacheLayer(cc.layers[old].blob,
                         -1 if cc.layers[old].parent == -1 else new_layer[cc.layers[old].parent],
                         cc.layers[old].annotations)
              for old in order]

    def rec_key(i: int) -> tuple:
        r = cc.records[i]
        return (r.digest, len(r.inputs),
                tuple((len(inp), tuple((x.selector, cc.records[x.link].digest) for x in inp))
                      for inp in r.inputs))

    rorder = sorted(range(len(cc.records)), key=rec_key)
    new_rec = {old: new for new, old in enumerate(rorder)}
    records = []
    for old in rorder:
        r = cc.records[old]
        records.append(CacheRecord(
            r.digest,
            [sorted((CacheInput(new_rec[x.link], x.selector) for x in inp), key=lambda x: x.link)
             for inp in r.inputs],
            [CacheResult(new_layer[x.layer], x.created_at) for x in r.results],
            [ChainedResult([new_layer[i] for i in x.layers], x.created_at) for x in r.chained_results]))
    return CacheConfig(layers, records)


# -- reading ---------------------------------------------------------------------------------------


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"invalid cache config: {what} is not an integer")
    return value


def _list(value: Any, what: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidArgument(f"invalid cache config: {what} is not a list")
    return value


def _obj(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidArgument(f"invalid cache config: {what} is not an object")
    return value


def _str(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(f"invalid cache config: {what} is not a string")
    return value


def from_dict(doc: Any) -> CacheConfig:
    """A validated config: every index in range, no layer or record loops."""
    doc = _obj(doc, "the document")
    cc = CacheConfig()
    for n, raw in enumerate(_list(doc.get("layers"), "layers")):
        raw = _obj(raw, f"layer {n}")
        blob = _str(raw.get("blob"), f"layer {n} blob")
        if not blob:
            raise InvalidArgument(f"invalid cache config: layer {n} has no blob")
        ann = raw.get("annotations")
        annotations = None
        if ann is not None:
            ann = _obj(ann, f"layer {n} annotations")
            annotations = LayerAnnotations(_str(ann.get("mediaType"), "mediaType"),
                                           _str(ann.get("diffID"), "diffID"),
                                           _int(ann.get("size", 0), f"layer {n} size"),
                                           _str(ann.get("createdAt"), "createdAt") or _ZERO_TIME)
        cc.layers.append(CacheLayer(blob, _int(raw.get("parent", 0), f"layer {n} parent"), annotations))
    for n, layer in enumerate(cc.layers):
        if not -1 <= layer.parent < len(cc.layers):
            raise InvalidArgument(f"invalid cache config: layer {n} has parent {layer.parent} out of range")
    for n in range(len(cc.layers)):  # a chain longer than the layer count loops
        seen, i = 0, n
        while i != -1:
            seen += 1
            if seen > len(cc.layers):
                raise InvalidArgument(f"invalid cache config: layer {n} is its own ancestor")
            i = cc.layers[i].parent
    for n, raw in enumerate(_list(doc.get("records"), "records")):
        raw = _obj(raw, f"record {n}")
        rec = CacheRecord(_str(raw.get("digest"), f"record {n} digest"))
        for k, inp in enumerate(_list(raw.get("inputs"), f"record {n} inputs")):
            links = []
            for x in _list(inp, f"record {n} input {k}"):
                x = _obj(x, f"record {n} input {k} link")
                links.append(CacheInput(_int(x.get("link", 0), f"record {n} link"),
                                        _str(x.get("selector"), f"record {n} selector")))
            rec.inputs.append(links)
        for x in _list(raw.get("layers"), f"record {n} layers"):
            x = _obj(x, f"record {n} result")
            rec.results.append(CacheResult(_int(x.get("layer", 0), f"record {n} result layer"),
                                           _str(x.get("createdAt"), "createdAt") or _ZERO_TIME))
        for x in _list(raw.get("chains"), f"record {n} chains"):
            x = _obj(x, f"record {n} chain")
            rec.chained_results.append(ChainedResult(
                [_int(i, f"record {n} chain layer") for i in _list(x.get("layers"), "chain layers")],
                _str(x.get("createdAt"), "createdAt") or _ZERO_TIME))
        cc.records.append(rec)
    nrec, nlay = len(cc.records), len(cc.layers)
    for n, rec in enumerate(cc.records):
        for inp in rec.inputs:
            if not inp:
                raise InvalidArgument(f"invalid cache config: record {n} has an empty input")
            for x in inp:
                if not 0 <= x.link < nrec:
                    raise InvalidArgument(f"invalid cache config: record {n} links to record {x.link}, "
                                          f"out of range")
        for res in rec.results:
            if not 0 <= res.layer < nlay:
                raise InvalidArgument(f"invalid cache config: record {n} result layer {res.layer} "
                                      "out of range")
        for ch in rec.chained_results:
            if any(not 0 <= i < nlay for i in ch.layers):
                raise InvalidArgument(f"invalid cache config: record {n} chain layer out of range")
    _check_record_loops(cc)
    return cc


def _check_record_loops(cc: CacheConfig) -> None:
    state = [0] * len(cc.records)  # 0 unvisited, 1 on the stack, 2 done
    for start in range(len(cc.records)):
        if state[start]:
            continue
        stack = [(start, iter([x.link for inp in cc.records[start].inputs for x in inp]))]
        state[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
            elif state[nxt] == 1:
                raise InvalidArgument(f"invalid cache config: record {nxt} links to itself through "
                                      "its inputs")
            elif state[nxt] == 0:
                state[nxt] = 1
                stack.append((nxt, iter([x.link for inp in cc.records[nxt].inputs for x in inp])))


def parse_config(data: bytes) -> CacheConfig:
    if len(data) > MAX_CONFIG_BYTES:
        raise InvalidArgument(f"cache config is too large ({len(data)} bytes)")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"cache config is not valid JSON: {exc}") from None
    return from_dict(doc)

