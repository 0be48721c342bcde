"""An imported cache as a read-only ``CacheStorage`` layer (``buildkitpy.solver.cachestorage``).

The solver core stacks these over its own store (``Job.cache_layers``) and looks keys up the way
BuildKit's importer answers (``cache/remotecache/v1/cachestorage.go``): a record without inputs is
the root key whose id is its digest (BuildKit's ``rootKey(digest, output)``, which is what the core
computes for a root); a record with inputs gets the id ``record:<index>``, and each of its input
links becomes a link from the input record's id that matches a ``CacheLink`` when
``rootKey(link.digest, link.output)`` is the record's digest and input and selector agree. Every
answer comes from the parsed config; only ``load`` touches the network: it pulls the result's layer
chain into a snapshot (the blobs checked against their digests and diffIDs) and returns a new
handle. With ``ignore-error`` a blob that cannot be fetched or does not check out is a miss
(``CacheResultGone``); without it the build fails naming the blob.
"""

from __future__ import annotations

from typing import Any

import anyio.from_thread

from buildkitpy.errors import BuildkitpyError, SolveError
from buildkitpy.remotecache.jobcache import ImportedCache, JobCache, first_error
from buildkitpy.remotecache.keys import root_key
from buildkitpy.solver.cachestorage import CacheLink, CacheResult, CacheResultGone, ReadOnlyCache

_REC = "record:"


class RemoteCacheStorage:
    readonly = True

    def __init__(self, imported: ImportedCache, job_cache: JobCache, name: str) -> None:
        self.name = name
        self.imported = imported
        self.job_cache = job_cache
        cc = imported.index.config
        self._ids = [rec.digest if not rec.inputs else f"{_REC}{i}" for i, rec in enumerate(cc.records)]
        # (source id, input index, selector) -> [(target record index)]
        self._links: dict[tuple[str, int, str], list[int]] = {}
        for i, rec in enumerate(cc.records):
            for n, links in enumerate(rec.inputs):
                for x in links:
                    self._links.setdefault((self._ids[x.link], n, x.selector), []).append(i)
        self._by_id: dict[str, list[int]] = {}
        for i, kid in enumerate(self._ids):
            self._by_id.setdefault(kid, []).append(i)

    # -- lookups (cheap, local) ------------------------------------------------------------------

    def exists(self, key: str) -> bool:
        return key in self._by_id

    def walk_links(self, key: str, link: CacheLink) -> list[str]:
        want = root_key(link.digest, link.output)
        records = self.imported.index.config.records
        return sorted({self._ids[t] for t in self._links.get((key, link.input, link.selector), ())
                       if records[t].digest == want and len(records[t].inputs) > link.input})

    def has_link(self, key: str, link: CacheLink, target: str) -> bool:
        return target in self.walk_links(key, link)

    def results(self, key: str) -> list[CacheResult]:
        out: list[tuple[str, CacheResult]] = []
        records = self.imported.index.config.records
        for i in self._by_id.get(key, ()):
            for n, res in enumerate(records[i].results):
                out.append((res.created_at, CacheResult(f"{i}/{n}", 0.0, self.name)))
        out.sort(key=lambda x: x[0], reverse=True)
        return [r for _, r in out if self._chain(r) is not None]

    def _chain(self, result: CacheResult) -> list[Any] | None:
        rec, _, n = result.id.partition("/")
        try:
            res = self.imported.index.config.records[int(rec)].results[int(n)]
        except (ValueError, IndexError):
            return None
        return self.imported.index._descs(self.imported.index.config.layer_chain(res.layer))

    # -- loading (pulls blobs; called from a worker thread) --------------------------------------

    def load(self, key: str, result: CacheResult) -> Any:
        chain = self._chain(result)
        if chain is None:
            raise CacheResultGone(f"{self.name}: result {result.id} of {key} has no layers in the manifest")
        return anyio.from_thread.run(self._load, chain)

    async def _load(self, chain: list[Any]) -> Any:
        # in the event loop: telling a failure from a cancellation needs it (first_error)
        try:
            return await self._pull(chain)
        except (BuildkitpyError, BaseExceptionGroup) as raised:
            exc = first_error(raised)
            if self.imported.ignore_error:
                raise CacheResultGone(f"{self.name}: {exc}") from exc
            raise SolveError(f"importing cache from {self.imported.name}: {exc}") from exc

    async def _pull(self, chain: list[Any]) -> Any:
        class _Progress:  # no vertex to report under inside the storage: pulls are quiet here
            def status(self, *args: Any, **kwargs: Any) -> None:
                pass

        class _Vertex:
            digest = ""

        (snap,) = await self.job_cache._pull_all(self.imported, _Vertex(), [chain], _Progress())
        return snap

    # -- writes are refused ----------------------------------------------------------------------

    def add_link(self, key: str, link: CacheLink, target: str) -> None:
        raise ReadOnlyCache(f"cache {self.name!r} is read-only")

    def add_result(self, key: str, value: Any) -> CacheResult:
        raise ReadOnlyCache(f"cache {self.name!r} is read-only")

    def save(self, links: Any, results: Any) -> list[CacheResult]:
        raise ReadOnlyCache(f"cache {self.name!r} is read-only")
