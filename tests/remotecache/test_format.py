"""The cacheconfig v0 format and the key-graph <-> config conversions, as pure functions."""

from __future__ import annotations

import json

import pytest

from buildkitpy.errors import InvalidArgument
from buildkitpy.remotecache.chains import LayerDesc, RemoteIndex, build_config
from buildkitpy.remotecache.config import dump_config, go_time, parse_config
from buildkitpy.remotecache.keys import KeyNode, root_key, vertex_nodes


def d(c: str) -> str:
    return "sha256:" + c * 64


def layer(c: str) -> LayerDesc:
    return LayerDesc(
        "application/vnd.oci.image.layer.v1.tar+gzip", d(c), 10, d(c.upper() if c.isalpha() else "f")
    )


def chain_graph(content: str | None = None) -> tuple[KeyNode, KeyNode, KeyNode]:
    src = vertex_nodes(d("a"), False, 1, [], [], None)[0]
    run = vertex_nodes(d("b"), False, 1, [src], [""], None)[0]
    copy = vertex_nodes(d("c"), False, 1, [run], [d("5")], [content] if content else None)[0]
    return src, run, copy


def test_root_key_is_buildkits():
    # rootKey(dgst, output) = sha256("<dgst>@<output>")
    import hashlib

    assert root_key(d("a"), 0) == "sha256:" + hashlib.sha256(f"{d('a')}@0".encode()).hexdigest()
    assert root_key("random:abc", 3) == "random:abc"


def test_go_time_matches_gos_layout():
    assert go_time(0) == "1970-01-01T00:00:00Z"
    assert go_time(1.25) == "1970-01-01T00:00:01.25Z"
    assert go_time(None) == "0001-01-01T00:00:00Z"


def test_max_export_round_trips_and_matches_a_rebuilt_key_graph():
    src, run, copy = chain_graph(d("9"))
    results = {
        id(src): ([layer("1")], go_time(1)),
        id(run): ([layer("1"), layer("2")], go_time(2)),
        id(copy): ([layer("1"), layer("2"), layer("3")], go_time(3)),
    }
    exported = build_config([copy], results)
    data = dump_config(exported.config)
    doc = json.loads(data)
    assert [x.get("parent", 0) for x in doc["layers"]].count(-1) == 1  # one base layer, chains share it
    assert len(doc["records"]) == 4  # src, run, copy and copy's content key
    assert parse_config(data) == exported.config
    assert dump_config(parse_config(data)) == data  # stable bytes

    index = RemoteIndex(parse_config(data), {x.digest: x for x in exported.layers})
    # a fresh build's graph with equal digests matches, by the fast key (input key + selector)...
    src2, run2, copy2 = chain_graph()
    assert [x.digest for x in index.result_chains(index.match(copy2))[0]] == [d("1"), d("2"), d("3")]
    # ...and by the content key alone when the input's key changed (a random local source)
    local = vertex_nodes(d("e"), True, 1, [], [], None)[0]
    copy3 = vertex_nodes(d("c"), False, 1, [local], [d("5")], [d("9")])[0]
    assert index.match(copy3)
    # another selector, another content or another op: no match
    assert not index.match(vertex_nodes(d("c"), False, 1, [run2], [d("6")], None)[0])
    assert not index.match(vertex_nodes(d("c"), False, 1, [local], [d("5")], [d("8")])[0])
    assert not index.match(vertex_nodes(d("d"), False, 1, [run2], [d("5")], None)[0])


def test_min_export_links_without_results_and_random_keys_are_dropped():
    src, run, copy = chain_graph()
    exported = build_config([copy], {id(copy): ([layer("1"), layer("2"), layer("3")], go_time(3))})
    with_results = [r for r in exported.config.records if r.results]
    assert len(with_results) == 1 and len(exported.config.records) == 3
    local = vertex_nodes(d("e"), True, 1, [], [], None)[0]
    lost = vertex_nodes(d("c"), False, 1, [local], [""], None)[0]  # only reachable through a random key
    assert build_config([lost], {id(lost): ([layer("1")], go_time(1))}).config.records == []


def test_a_result_whose_blob_the_manifest_does_not_list_is_ignored():
    src, run, _ = chain_graph()
    exported = build_config([run], {id(run): ([layer("1"), layer("2")], go_time(2))})
    index = RemoteIndex(exported.config, {d("1"): layer("1")})
    assert index.match(chain_graph()[1]) and index.result_chains(index.match(chain_graph()[1])) == []


@pytest.mark.parametrize(
    "doc,message",
    [
        ({"layers": [{"blob": d("1"), "parent": 0}]}, "its own ancestor"),
        ({"layers": [{"blob": d("1"), "parent": 5}]}, "out of range"),
        ({"records": [{"digest": d("a"), "inputs": [[{"link": 0}]]}]}, "links to itself"),
        ({"records": [{"digest": d("a"), "inputs": [[{"link": 7}]]}]}, "out of range"),
        ({"records": [{"digest": d("a"), "inputs": [[]]}]}, "empty input"),
        ({"records": [{"digest": d("a"), "layers": [{"layer": 0}]}]}, "result layer 0 out of range"),
        ({"records": "x"}, "records is not a list"),
    ],
)
def test_bad_configs_are_refused_with_the_reason(doc, message):
    with pytest.raises(InvalidArgument, match=message):
        parse_config(json.dumps(doc).encode())


def test_reads_a_config_as_buildkit_writes_it():
    # Shape of a real BuildKit v0.2x export (parent omitted when 0, createdAt with nanoseconds).
    raw = json.dumps(
        {
            "layers": [{"blob": d("1"), "parent": -1}, {"blob": d("2")}],
            "records": [
                {"digest": d("a")},
                {
                    "layers": [{"layer": 1, "createdAt": "2024-05-01T10:00:00.123456789Z"}],
                    "digest": d("b"),
                    "inputs": [[{"selector": d("5"), "link": 0}]],
                },
            ],
        }
    )
    cc = parse_config(raw.encode())
    assert cc.layer_chain(1) == [0, 1]
    assert cc.records[1].inputs[0][0].selector == d("5")
    assert cc.records[1].results[0].created_at == "2024-05-01T10:00:00.123456789Z"
