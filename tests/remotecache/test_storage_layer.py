"""An imported cache as a read-only CacheStorage layer, queried as the solver core queries one:
roots by their root key id, other keys by following links from their inputs' ids."""

from __future__ import annotations

import pytest

from buildkitpy.image.reference import Reference
from buildkitpy.remotecache.chains import LayerDesc, RemoteIndex, build_config
from buildkitpy.remotecache.config import dump_config, go_time, parse_config
from buildkitpy.remotecache.jobcache import ImportedCache, JobCache
from buildkitpy.remotecache.keys import root_key, vertex_nodes
from buildkitpy.remotecache.storage import RemoteCacheStorage
from buildkitpy.solver.cachestorage import CacheLink, CacheStorage, ReadOnlyCache


def d(c: str) -> str:
    return "sha256:" + c * 64


def layer(c: str) -> LayerDesc:
    return LayerDesc("application/vnd.oci.image.layer.v1.tar+gzip", d(c), 10, d("f"))


@pytest.fixture
def storage() -> RemoteCacheStorage:
    src = vertex_nodes(d("a"), False, 1, [], [], None)[0]
    run = vertex_nodes(d("b"), False, 1, [src], [""], None)[0]
    copy = vertex_nodes(d("c"), False, 1, [run], [d("5")], [d("9")])[0]
    exported = build_config(
        [copy],
        {
            id(run): ([layer("1"), layer("2")], go_time(1)),
            id(copy): ([layer("1"), layer("2"), layer("3")], go_time(2)),
        },
    )
    cc = parse_config(dump_config(exported.config))
    imp = ImportedCache(
        RemoteIndex(cc, {x.digest: x for x in exported.layers}),
        source=None,  # type: ignore[arg-type]
        ref=Reference("example.com", "cache"),
        name="test",
    )
    return RemoteCacheStorage(imp, JobCache(worker=None), "import-0")


def ids_of(
    layer: RemoteCacheStorage, digest: str, output: int, deps: list[tuple[list[str], str]]
) -> list[str]:
    """The core's walk for a key with ``deps`` = [(input ids, selector)] (a root when empty)."""
    if not deps:
        rid = root_key(digest, output)
        return [rid] if layer.exists(rid) else []
    matches: set[str] | None = None
    for i, (srcs, sel) in enumerate(deps):
        targets = {t for s in srcs for t in layer.walk_links(s, CacheLink(i, output, digest, sel))}
        matches = targets if matches is None else matches & targets
    return sorted(matches or ())


def test_lookups_follow_links_like_the_core(storage: RemoteCacheStorage):
    assert isinstance(storage, CacheStorage) and storage.readonly
    src = ids_of(storage, d("a"), 0, [])
    assert src and storage.results(src[0]) == []  # mode-min-like: a root without a result
    run = ids_of(storage, d("b"), 0, [(src, "")])
    assert len(run) == 1 and len(storage.results(run[0])) == 1
    # the copy by its fast key (the run's id + selector) and by its content key alone
    fast = ids_of(storage, d("c"), 0, [(run, d("5"))])
    content = ids_of(storage, d("c"), 0, [(ids_of(storage, d("9"), -1, []), "")])
    assert fast == content and len(storage.results(fast[0])) == 1
    # another selector, digest or output finds nothing
    assert ids_of(storage, d("c"), 0, [(run, d("6"))]) == []
    assert ids_of(storage, d("d"), 0, [(run, d("5"))]) == []
    assert ids_of(storage, d("c"), 1, [(run, d("5"))]) == []


def test_writes_are_refused(storage: RemoteCacheStorage):
    with pytest.raises(ReadOnlyCache):
        storage.add_link("x", CacheLink(0, 0, d("a")), "y")
    with pytest.raises(ReadOnlyCache):
        storage.add_result("x", object())


def test_exports_walk_the_solver_cores_cache_keys_and_its_storage():
    """With the solver core, a result's keys (Result.cache_keys) and the core's own storage are what
    the exporter reads: keys become records, results are found by key id."""
    from buildkitpy.remotecache.exporter import _from_storage, _reachable
    from buildkitpy.remotecache.keys import from_cache_keys
    from buildkitpy.solver.cachekey import CacheKey
    from buildkitpy.solver.cachestorage import InMemoryCacheStorage

    src = CacheKey(d("a"))
    run = CacheKey(d("b"), 0, ((src, ""),))
    copy_fast = CacheKey(d("c"), 0, ((run, d("5")),))
    copy_slow = CacheKey(d("c"), 0, ((CacheKey(d("9"), -1), ""),))
    local = CacheKey(d("e"), ephemeral=True)
    nodes = from_cache_keys([copy_fast, copy_slow, CacheKey(d("f"), 0, ((local, ""),))])
    assert [n.record_digest for n in nodes[:2]] == [root_key(d("c"), 0)] * 2
    assert nodes[2].deps[0][0].node.random  # ephemeral keys are never exported

    store = InMemoryCacheStorage("local")
    store.add_result(run.id, "run-result")
    store.add_result(copy_fast.id, "copy-result")
    found = _from_storage(store, _reachable(nodes[:2]), {})
    assert sorted(v for _, v in found) == ["copy-result", "run-result"]
    exported = build_config(nodes[:2], {id(n): ([layer("1")], go_time(1)) for n, _ in found})
    index = RemoteIndex(exported.config, {x.digest: x for x in exported.layers})
    again = from_cache_keys(
        [CacheKey(d("c"), 0, ((CacheKey(d("b"), 0, ((CacheKey(d("a")), ""),)), d("5")),))]
    )
    assert index.result_chains(index.match(again[0]))
