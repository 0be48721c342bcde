"""Merge/diff, deduplication, ordering, state settings and metadata."""

from __future__ import annotations

import json

from llb_helpers import decode

from buildkitpy import llb
from buildkitpy.api import ops_pb2


def test_merge() -> None:
    a, b = llb.image("alpine"), llb.image("busybox")
    assert llb.merge([llb.scratch(), llb.scratch()]).is_scratch
    assert llb.merge([llb.scratch(), a]) is a
    st = llb.merge([a, llb.scratch(), b, a], custom_name="merge")
    d = decode(st)
    digest, op = d.head
    assert [m.input for m in op.merge.inputs] == [0, 1, 2]
    assert [i.digest for i in op.inputs] == [decode(a).head[0], decode(b).head[0], decode(a).head[0]]
    assert not op.HasField("platform") and d.caps(digest) == {"mergeop"}
    assert d.definition.metadata[digest].description["llb.customname"] == "merge"


def test_diff() -> None:
    a, b = llb.image("alpine"), llb.image("alpine").run(["touch", "/x"]).root()
    assert llb.diff(llb.scratch(), llb.scratch()).is_scratch
    assert llb.diff(llb.scratch(), b) is b
    d = decode(llb.diff(a, b))
    digest, op = d.head
    assert (op.diff.lower.input, op.diff.upper.input) == (0, 1) and d.caps(digest) == {"diffop"}
    _, op = decode(llb.diff(a, llb.scratch())).head
    assert op.diff.HasField("lower") and (op.diff.lower.input, op.diff.upper.input) == (0, -1)


def test_identical_ops_are_emitted_once_and_inputs_come_first() -> None:
    one = llb.image("busybox", custom_name="first")
    two = llb.image("busybox", custom_name="second", ignore_cache=True)
    st = llb.merge([one.run(["a"]).root(), two.run(["b"]).root()])
    d = decode(st)
    raw = list(getattr(d.definition, "def"))
    assert len(raw) == len(set(raw)) == 5  # image, 2 execs, merge, terminal
    seen: set[str] = set()
    for digest, op in d.ops.items():
        assert all(i.digest in seen for i in op.inputs)
        seen.add(digest)
    image_digest = d.one("source")[0]
    md = d.definition.metadata[image_digest]
    assert md.description["llb.customname"] == "second" and md.ignore_cache  # merged, later wins
    terminal_caps = set(d.definition.metadata[llb.digest_of(raw[-1])].caps)
    assert terminal_caps == {"constraints", "platform", "meta.description", "meta.ignorecache"}


def test_metadata_options() -> None:
    pg = llb.ProgressGroup("g1", "group", weak=True)
    st = llb.scratch().file(llb.mkdir("/a", 0o755), progress_group=pg, export_cache=False,
                            worker_constraints=["node=a"])
    d = decode(st, ignore_cache=True, description={"k": "v"})
    digest, op = d.head
    md = d.definition.metadata[digest]
    assert md.ignore_cache and dict(md.description) == {"k": "v"}
    assert md.export_cache == ops_pb2.ExportCache(Value=False)
    assert md.progress_group == ops_pb2.ProgressGroup(id="g1", name="group", weak=True)
    assert list(op.constraints.filter) == ["node=a"]
    terminal_caps = set(d.definition.metadata[llb.digest_of(getattr(d.definition, "def")[-1])].caps)
    assert terminal_caps == {"constraints", "platform", "meta.ignorecache", "meta.description",
                             "meta.exportcache"}


def test_state_settings() -> None:
    st = llb.scratch()
    assert st.get_dir() == "/" and st.get_platform() is None
    st = st.add_env("A", "1").add_env("B", "2").add_env("A", "3")
    assert st.env() == [("B", "2"), ("A", "3")]  # a replaced variable moves to the end, like client/llb
    assert st.del_env("B").env() == [("A", "3")]
    assert st.dir("x").dir("../y").get_dir() == "/y"
    assert st.dir("/abs//p/").get_dir() == "/abs//p/"  # absolute dirs are kept verbatim, as in Go
    assert st.with_platform("linux/aarch64").get_platform() == llb.Platform("linux", "arm64")
    cfg = {"architecture": "arm", "os": "linux", "variant": "v6",
           "config": {"Env": ["PATH=/bin", "EMPTY=", "X=a=b"], "WorkingDir": "/srv"}}
    img = llb.image("busybox").with_image_config(json.dumps(cfg))
    assert img.env() == [("PATH", "/bin"), ("EMPTY", ""), ("X", "a=b")]
    assert img.get_dir() == "/srv" and str(img.get_platform()) == "linux/arm/v6"
    # ops keep the settings of the state they were applied to
    after = img.file(llb.mkdir("/x", 0o755))
    assert after.env() == img.env() and after.get_dir() == "/srv"
    assert llb.scratch().reset(img).get_dir() == "/srv"


def test_api_example_from_the_brief() -> None:
    st = llb.scratch().file(llb.mkfile("/a", 0o644, b"x"))
    definition = llb.marshal(st)
    assert len(getattr(definition, "def")) == 2 and st.marshal() == definition


def test_required_caps_lists_every_cap_in_the_metadata() -> None:
    st = llb.image("busybox").run(["true"], mounts=[llb.tmpfs("/t")]).root().file(llb.mkdir("/a", 0o755))
    assert llb.required_caps(llb.marshal(st)) == {
        "source.image", "exec.meta.base", "exec.mount.bind", "exec.mount.tmpfs", "file.base", "constraints",
        "platform"}
    assert llb.required_caps(llb.marshal(llb.http("https://x/y", chmod=0o1000))) == {
        "source.http", "constraints", "platform"}
