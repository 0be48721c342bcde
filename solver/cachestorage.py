"""Where cache keys, the links between them and their results live (BuildKit's ``CacheKeyStorage``
plus ``CacheResultStorage``, as one protocol).

The model is BuildKit's:

- A **key id** names one output of one op applied to particular inputs. A key without inputs (a
  source, a content checksum) has the well-known id ``root_key_id(digest, output)``: every storage
  must use exactly that id for such keys. A key with inputs has an id that is opaque and may differ
  between storages (ours are derived from the inputs' ids, a remote cache's are its record numbers):
  it is found by following links from the input keys' ids.
- A **link** ``(src, CacheLink(input, output, digest, selector)) -> target`` says: "output ``output``
  of the op whose cache-map digest is ``digest``, given the key ``src`` as its input number
  ``input`` (restricted to ``selector``), has the key ``target``". A key with several inputs is the
  target of one link per input; a lookup walks the links of every input and intersects the targets.
- A **result** is what a key's output was: ``results(key)`` lists ``CacheResult``s (an id unique in
  that storage and a creation time) and ``load(key, result)`` turns one into a value the solver can
  use (for the solver: a new ``ImmutableSnapshot`` handle the caller releases).

Every method blocks (SQLite, a registry) and must be thread-safe: the solver calls them through
``anyio.to_thread``. Lookups must never raise for unknown ids (they answer empty); ``load`` raises
``CacheResultGone`` when a listed result cannot be produced any more (pruned, a missing blob): the
solver then treats the key as a miss, never as a build failure, and never uses a wrong result.

**Read-only layers** (remote cache importers: ``--cache-from``, ``buildkitpy/remotecache/``) implement
the same protocol with ``readonly = True`` and are stacked over the daemon's writable store with
``LayeredCacheStorage(base, [layer, ...])``, one stack per build (``Job.cache_layers``). A layer:

- answers ``walk_links``/``has_link``/``results``/``exists`` from its own records (e.g. a parsed
  ``application/vnd.buildkit.cacheconfig.v0``: a record without inputs is the root key
  ``root_key_id(record digest, output)``, a record with inputs gets any unique id, and each of its
  inputs becomes a link from the input record's id); these calls must be cheap and local (parse the
  config once when the layer is made, never fetch during a lookup);
- lists as results descriptors of layer blobs (a ``CacheResult`` whose id it can map back to the
  blob chain) and only in ``load`` pulls and unpacks those blobs into a snapshot
  (``SnapshotManager``), returning a new handle. ``load`` is called only when an op or an exporter
  needs the bytes: a hit whose consumers are themselves hits is never loaded;
- rejects writes (``add_link``/``add_result`` raise ``ReadOnlyCache``); the solver records what it
  loaded from a layer in the writable base under the same key, so the next build hits locally.

Exporting a build's cache walks the solver's ``CacheKey`` objects (``buildkitpy.solver.cachekey``:
each key carries its digest, output and per-input dependency keys with selectors) and asks the
storage for each key's results.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class CacheResultGone(LookupError):
    """A listed result can no longer be loaded (pruned snapshot, missing or corrupt blob)."""


class ReadOnlyCache(PermissionError):
    """A write to a read-only cache layer."""


@dataclass(frozen=True)
class CacheLink:
    """How a key follows from one of its input keys (BuildKit's ``CacheInfoLink``)."""

    input: int  # which input of the op
    output: int  # which output of the op the target key is for
    digest: str  # the op's cache-map digest
    selector: str = ""  # digest of the part of the input that matters ("" = all of it)


@dataclass(frozen=True)
class CacheResult:
    """One recorded result of a key. ``id`` is unique within its storage (the local store uses the
    snapshot id); ``source`` names the storage it came from (set by ``LayeredCacheStorage``)."""

    id: str
    created: float
    source: str = ""


@runtime_checkable
class CacheStorage(Protocol):
    name: str
    readonly: bool

    def exists(self, key: str) -> bool:
        """Whether the storage knows ``key`` at all (has results or links)."""

    def walk_links(self, key: str, link: CacheLink) -> list[str]:
        """The targets of the links from ``key`` matching ``link`` exactly."""

    def has_link(self, key: str, link: CacheLink, target: str) -> bool: ...

    def results(self, key: str) -> list[CacheResult]:
        """The results recorded for ``key``, newest first."""

    def load(self, key: str, result: CacheResult) -> Any:
        """The value of a result (a new handle the caller releases); ``CacheResultGone`` if it
        cannot be produced any more."""

    def add_link(self, key: str, link: CacheLink, target: str) -> None: ...

    def add_result(self, key: str, value: Any) -> CacheResult:
        """Record ``value`` (borrowed: the storage takes its own reference) as a result of ``key``."""

    def save(self, links: Sequence[tuple[str, CacheLink, str]],
             results: Sequence[tuple[str, Any]]) -> list[CacheResult]:
        """``add_link`` and ``add_result`` for many entries at once (one transaction where the
        storage has them); returns the results in order."""


# -- an in-memory storage (tests, and the base for simple read-only layers) -----------------------

@dataclass
class _Held:
    value: Any
    created: float


class InMemoryCacheStorage:
    """Keys, links and results in dicts. ``clone``/``release`` are called on values that have them
    (snapshot handles), so the storage keeps what it records alive; plain values are kept as they
    are. ``readonly=True`` makes a layer (fill it first with ``readonly=False``, then flip it)."""

    def __init__(self, name: str = "memory", *, readonly: bool = False,
                 clone: Callable[[Any], Any] | None = None) -> None:
        self.name = name
        self.readonly = readonly
        self._clone = clone
        self._lock = threading.RLock()
        self._links: dict[tuple[str, CacheLink], dict[str, None]] = {}
        self._backlinks: dict[str, set[str]] = {}
        self._results: dict[str, dict[str, None]] = {}  # key -> result ids, insertion order
        self._values: dict[str, _Held] = {}  # result id -> value
        self._ids = itertools.count(1)

    def exists(self, key: str) -> bool:
        with self._lock:
            return key in self._results or key in self._backlinks or any(
                src == key for src, _ in self._links)

    def walk_links(self, key: str, link: CacheLink) -> list[str]:
        with self._lock:
            return list(self._links.get((key, link), ()))

    def has_link(self, key: str, link: CacheLink, target: str) -> bool:
        with self._lock:
            return target in self._links.get((key, link), ())

    def results(self, key: str) -> list[CacheResult]:
        with self._lock:
            ids = list(self._results.get(key, ()))
            return [CacheResult(rid, self._values[rid].created, self.name) for rid in reversed(ids)]

    def load(self, key: str, result: CacheResult) -> Any:
        with self._lock:
            if result.id not in self._results.get(key, ()):
                raise CacheResultGone(f"cache result {result.id} of {key} is gone")
            value = self._values[result.id].value
        return value.clone() if hasattr(value, "clone") else value

    def add_link(self, key: str, link: CacheLink, target: str) -> None:
        self._writable()
        with self._lock:
            self._links.setdefault((key, link), {})[target] = None
            self._backlinks.setdefault(target, set()).add(key)

    def add_result(self, key: str, value: Any) -> CacheResult:
        self._writable()
        with self._lock:
            for rid in self._results.get(key, ()):
                if self._values[rid].value is value or _same(self._values[rid].value, value):
                    return CacheResult(rid, self._values[rid].created, self.name)
            rid = getattr(value, "id", None) or f"r{next(self._ids)}"
            if rid in self._values and not _same(self._values[rid].value, value):
                rid = f"{rid}-{next(self._ids)}"
            if rid not in self._values:
                held = self._clone(value) if self._clone else (value.clone() if hasattr(value, "clone")
                                                               else value)
                self._values[rid] = _Held(held, time.time())
            self._results.setdefault(key, {})[rid] = None
            return CacheResult(rid, self._values[rid].created, self.name)

    def save(self, links: Sequence[tuple[str, CacheLink, str]],
             results: Sequence[tuple[str, Any]]) -> list[CacheResult]:
        with self._lock:
            for src, link, target in links:
                self.add_link(src, link, target)
            return [self.add_result(key, value) for key, value in results]

    def release_all(self) -> None:
        """Drop every result (releasing the handles the storage took)."""
        with self._lock:
            for held in self._values.values():
                if hasattr(held.value, "release"):
                    held.value.release()
            self._values.clear()
            self._results.clear()

    def _writable(self) -> None:
        if self.readonly:
            raise ReadOnlyCache(f"cache {self.name!r} is read-only")


def _same(a: Any, b: Any) -> bool:
    ida, idb = getattr(a, "id", None), getattr(b, "id", None)
    return ida is not None and ida == idb


# -- stacking read-only layers over a writable store ---------------------------------------------

@dataclass
class LayeredCacheStorage:
    """A writable ``base`` with read-only ``layers`` over it (a build's ``--cache-from`` imports).

    Lookups answer the union of all storages (the base first); ``load`` goes to the storage named
    by ``CacheResult.source``; writes go to the base. Results of different storages never share an
    id space, so they are told apart by ``source`` (each storage's ``name`` must be unique in the
    stack)."""

    base: CacheStorage
    layers: list[CacheStorage] = field(default_factory=list)

    def __post_init__(self) -> None:
        names = [s.name for s in self.storages]
        if len(set(names)) != len(names):
            raise ValueError(f"cache storage names must be unique in a stack: {names}")
        self._by_name = {s.name: s for s in self.storages}

    @property
    def name(self) -> str:
        return self.base.name

    @property
    def readonly(self) -> bool:
        return self.base.readonly

    @property
    def storages(self) -> list[CacheStorage]:
        return [self.base, *self.layers]

    def exists(self, key: str) -> bool:
        return any(s.exists(key) for s in self.storages)

    def walk_links(self, key: str, link: CacheLink) -> list[str]:
        out: dict[str, None] = {}
        for s in self.storages:
            out.update(dict.fromkeys(s.walk_links(key, link)))
        return list(out)

    def has_link(self, key: str, link: CacheLink, target: str) -> bool:
        return any(s.has_link(key, link, target) for s in self.storages)

    def results(self, key: str) -> list[CacheResult]:
        out: list[CacheResult] = []
        for s in self.storages:
            out.extend(r if r.source == s.name else CacheResult(r.id, r.created, s.name)
                       for r in s.results(key))
        return out

    def load(self, key: str, result: CacheResult) -> Any:
        storage = self._by_name.get(result.source or self.base.name)
        if storage is None:
            raise CacheResultGone(f"cache result {result.id} comes from an unknown cache {result.source!r}")
        return storage.load(key, result)

    def add_link(self, key: str, link: CacheLink, target: str) -> None:
        self.base.add_link(key, link, target)

    def add_result(self, key: str, value: Any) -> CacheResult:
        return self.base.add_result(key, value)

    def save(self, links: Sequence[tuple[str, CacheLink, str]],
             results: Sequence[tuple[str, Any]]) -> list[CacheResult]:
        return self.base.save(links, results)


__all__ = ["CacheLink", "CacheResult", "CacheResultGone", "CacheStorage", "InMemoryCacheStorage",
           "LayeredCacheStorage", "ReadOnlyCache"]
