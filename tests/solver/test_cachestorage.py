"""The CacheStorage protocol: keys, links and results, and read-only layers stacked over a store."""

from __future__ import annotations

import hashlib

import pytest

from buildkitpy.solver.cachekey import CacheKey, root_key_id
from buildkitpy.solver.cachestorage import (
    CacheLink,
    CacheResultGone,
    CacheStorage,
    InMemoryCacheStorage,
    LayeredCacheStorage,
    ReadOnlyCache,
)


class Handle:
    """A reference-counted value, like a snapshot handle."""

    def __init__(self, id: str, refs: dict[str, int]) -> None:
        self.id = id
        self._refs = refs
        refs[id] = refs.get(id, 0) + 1

    def clone(self) -> Handle:
        return Handle(self.id, self._refs)

    def release(self) -> None:
        self._refs[self.id] -= 1


def test_root_key_id_is_buildkits_root_key() -> None:
    # sha256("sha256:abc@0"), as BuildKit's rootKey computes it
    assert root_key_id("sha256:abc", 0) == "sha256:" + hashlib.sha256(b"sha256:abc@0").hexdigest()
    assert root_key_id("sha256:abc", 1) != root_key_id("sha256:abc", 0)


def test_cache_key_ids_follow_inputs() -> None:
    a = CacheKey("sha256:a")
    b = CacheKey("sha256:b")
    assert a.id == root_key_id("sha256:a", 0)
    k1 = CacheKey("sha256:op", 0, ((a, ""),))
    k2 = CacheKey("sha256:op", 0, ((a, ""),))
    assert k1 == k2 and k1.id == k2.id
    assert CacheKey("sha256:op", 0, ((b, ""),)).id != k1.id
    assert CacheKey("sha256:op", 1, ((a, ""),)).id != k1.id
    assert CacheKey("sha256:op", 0, ((a, "sel"),)).id != k1.id


def test_memory_storage_links_and_results() -> None:
    refs: dict[str, int] = {}
    s = InMemoryCacheStorage()
    assert isinstance(s, CacheStorage)
    link = CacheLink(input=0, output=0, digest="sha256:op")
    s.add_link("src", link, "dst")
    assert s.walk_links("src", link) == ["dst"]
    assert s.walk_links("src", CacheLink(1, 0, "sha256:op")) == []
    assert s.has_link("src", link, "dst") and not s.has_link("src", link, "other")
    assert s.exists("src") and s.exists("dst") and not s.exists("nope")
    h = Handle("snap1", refs)
    res = s.add_result("dst", h)
    h.release()
    assert refs["snap1"] == 1  # the storage holds its own reference
    assert [r.id for r in s.results("dst")] == ["snap1"]
    loaded = s.load("dst", res)
    assert loaded.id == "snap1" and refs["snap1"] == 2
    loaded.release()
    with pytest.raises(CacheResultGone):
        s.load("src", res)
    s.release_all()
    assert refs["snap1"] == 0


def test_layers_are_read_only_and_searched_after_the_base() -> None:
    base = InMemoryCacheStorage("local")
    remote = InMemoryCacheStorage("remote")
    link = CacheLink(0, 0, "sha256:op")
    remote.add_link(root_key_id("sha256:src", 0), link, "remote-record-7")
    remote.add_result("remote-record-7", "layers-descriptor")
    remote.readonly = True
    with pytest.raises(ReadOnlyCache):
        remote.add_result("x", "y")

    stack = LayeredCacheStorage(base, [remote])
    assert stack.walk_links(root_key_id("sha256:src", 0), link) == ["remote-record-7"]
    [res] = stack.results("remote-record-7")
    assert res.source == "remote"
    assert stack.load("remote-record-7", res) == "layers-descriptor"
    # writes land in the base, and both answer afterwards, the base first
    stack.add_link(root_key_id("sha256:src", 0), link, "local-key")
    assert stack.walk_links(root_key_id("sha256:src", 0), link) == ["local-key", "remote-record-7"]
    stack.add_result("remote-record-7", "unpacked")
    assert [r.source for r in stack.results("remote-record-7")] == ["local", "remote"]
    assert not remote.exists("local-key")
    with pytest.raises(ValueError):
        LayeredCacheStorage(base, [InMemoryCacheStorage("local")])
