"""``llb.from_definition``: a marshalled definition as a state new ops build on (BuildKit's
``NewDefinitionOp``), its ops kept byte for byte."""

from __future__ import annotations

import pytest

from buildkitpy import llb
from buildkitpy.api import ops_pb2


def test_ops_are_kept_and_new_ops_build_on_the_result() -> None:
    base = llb.image("busybox").run(["sh", "-c", "echo hi > /x"], custom_name="make x", ignore_cache=True)
    first = llb.marshal(base.root(), platform="linux/amd64")
    state = llb.from_definition(first)
    out = llb.scratch().file(llb.copy(state, "/x", "/y"))
    second = llb.marshal(out, platform="linux/amd64")
    old, new = list(getattr(first, "def")), list(getattr(second, "def"))
    assert old[:-1] == new[:len(old) - 1]  # every op of the first definition, unchanged
    copy = ops_pb2.Op.FromString(new[-2])
    assert copy.inputs[0].digest == llb.head(first)
    for dgst in (llb.digest_of(d) for d in old[:-1]):  # and its metadata (names, ignore-cache)
        assert second.metadata[dgst].description == first.metadata[dgst].description
        assert second.metadata[dgst].ignore_cache == first.metadata[dgst].ignore_cache
    assert list(getattr(llb.marshal(llb.from_definition(first), platform="linux/amd64"), "def")) == old


def test_empty_and_broken_definitions() -> None:
    assert llb.from_definition(ops_pb2.Definition()).output is None
    broken = ops_pb2.Definition()
    op = ops_pb2.Op(inputs=[ops_pb2.Input(digest="sha256:" + "0" * 64, index=0)])
    getattr(broken, "def").extend([op.SerializeToString(), ops_pb2.Op().SerializeToString()])
    with pytest.raises(llb.LLBError, match="which is not one of its ops"):
        llb.from_definition(broken)


def test_ops_in_any_order() -> None:
    """BuildKit's NewDefinitionOp finds inputs by digest, so a definition need not list its ops in
    dependency order."""
    state = llb.image("busybox").run(["true"]).root().file(llb.mkdir("/d", 0o755))
    first = llb.marshal(state, platform="linux/amd64")
    ops = list(getattr(first, "def"))
    shuffled = ops_pb2.Definition()
    shuffled.CopyFrom(first)
    del getattr(shuffled, "def")[:]
    getattr(shuffled, "def").extend([*reversed(ops[:-1]), ops[-1]])
    again = llb.marshal(llb.from_definition(shuffled), platform="linux/amd64")
    assert list(getattr(again, "def")) == ops
