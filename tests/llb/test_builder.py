"""Each op, action and mount builds, round-trips through ops_pb2, and carries client/llb's caps."""

from __future__ import annotations

import hashlib

import pytest
from llb_helpers import decode

from buildkitpy import llb
from buildkitpy.api import ops_pb2
from buildkitpy.llb.vertex import serialize_op

BUSYBOX = "docker.io/library/busybox:latest"


def test_scratch_marshals_to_an_empty_definition() -> None:
    d = llb.marshal(llb.scratch())
    assert list(getattr(d, "def")) == [] and not d.metadata and not d.HasField("Source")


def test_definition_shape_digests_and_terminal_op() -> None:
    st = llb.scratch().file(llb.mkfile("/a", 0o644, b"x"))
    d = decode(st)
    raw = list(getattr(d.definition, "def"))
    assert len(raw) == 2
    digest = "sha256:" + hashlib.sha256(raw[0]).hexdigest()
    assert set(d.definition.metadata) == {digest, "sha256:" + hashlib.sha256(raw[1]).hexdigest()}
    assert list(d.terminal.inputs) == [ops_pb2.Input(digest=digest, index=0)]
    assert d.terminal.WhichOneof("op") is None and not d.terminal.HasField("platform")
    assert d.caps(digest) == {"file.base"}
    assert set(d.definition.metadata[d.terminal.inputs[0].digest].caps) == {"file.base"}
    assert llb.head(d.definition) == digest
    # stable: a second marshal of an equal graph gives the same bytes
    again = llb.marshal(llb.scratch().file(llb.mkfile("/a", 0o644, b"x")), platform="linux/amd64")
    assert again.SerializeToString(deterministic=True) == d.definition.SerializeToString(deterministic=True)


def test_op_bytes_put_the_oneof_after_platform_and_constraints_like_go() -> None:
    op = ops_pb2.Op(inputs=[ops_pb2.Input(digest="sha256:x")], platform=ops_pb2.Platform(OS="linux"),
                    source=ops_pb2.SourceOp(identifier="local://a"))
    op.constraints.SetInParent()
    data = serialize_op(op)
    assert [data[0], data[data.index(b"\x52"[0])]] == [0x0A, 0x52]
    assert data.index(b"\x5a\x00") < data.index(b"\x1a")  # constraints(11) before source(3)
    assert ops_pb2.Op.FromString(data) == op


@pytest.mark.parametrize("ref,normalized", [
    ("busybox", "docker.io/library/busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36"),
    ("library/alpine", "docker.io/library/alpine:latest"),
    ("user/app:v1", "docker.io/user/app:v1"),
    ("index.docker.io/user/app", "docker.io/user/app:latest"),
    ("ghcr.io/org/app", "ghcr.io/org/app:latest"),
    ("localhost:5000/app", "localhost:5000/app:latest"),
    ("localhost/app", "localhost/app:latest"),
    ("alpine@sha256:" + "a" * 64, "docker.io/library/alpine@sha256:" + "a" * 64),
    ("alpine:3@sha256:" + "a" * 64, "docker.io/library/alpine:3@sha256:" + "a" * 64),
])
def test_image_reference_normalisation(ref: str, normalized: str) -> None:
    assert llb.normalize_image_ref(ref) == normalized
    d = decode(llb.image(ref))
    _, op = d.one("source")
    assert op.source.identifier == "docker-image://" + normalized


@pytest.mark.parametrize("ref,reason", [
    ("Busybox", "must be lowercase"),
    ("a" * 64, "64-byte hexadecimal"),
    ("busybox:", "invalid reference format"),
    ("", "invalid reference format"),
])
def test_invalid_image_reference_names_the_cause(ref: str, reason: str) -> None:
    with pytest.raises(llb.LLBError, match=reason):
        llb.image(ref)


def test_image_source_attrs_platform_and_caps() -> None:
    st = llb.image("busybox", platform=llb.Platform.parse("linux/arm64/v8"), resolve_mode="pull",
                   layer_limit=2, checksum="sha256:" + "b" * 64)
    assert st.get_platform() == llb.Platform("linux", "arm64")
    d = decode(st)
    digest, op = d.one("source")
    assert op.platform == ops_pb2.Platform(OS="linux", Architecture="arm64")
    assert dict(op.source.attrs) == {"image.resolvemode": "pull", "image.layerlimit": "2",
                                     "image.checksum": "sha256:" + "b" * 64}
    assert d.caps(digest) == {"source.image", "source.image.resolvemode", "source.image.layerlimit",
                              "source.image.checksum"}
    # without an explicit platform the marshal platform is used; "default" writes no attr
    d = decode(llb.image("busybox", resolve_mode="default"), platform="linux/s390x")
    _, op = d.one("source")
    assert op.platform.Architecture == "s390x" and not op.source.attrs


def test_local_source_attrs_and_caps() -> None:
    st = llb.local("context", session_id="sess", include_patterns=["a", "b<c"], exclude_patterns=["*.tmp"],
                   follow_paths=["Dockerfile"], shared_key_hint="ctx", differ="none")
    d = decode(st)
    digest, op = d.one("source")
    assert op.source.identifier == "local://context" and not op.HasField("platform")
    assert dict(op.source.attrs) == {
        "local.session": "sess", "local.includepattern": '["a","b\\u003cc"]',
        "local.excludepatterns": '["*.tmp"]', "local.followpaths": '["Dockerfile"]',
        "local.sharedkeyhint": "ctx", "local.differ": "none"}
    assert d.caps(digest) == {"source.local", "source.local.sessionid", "source.local.includepatterns",
                              "source.local.excludepatterns", "source.local.followpaths",
                              "source.local.sharedkeyhint"}


def test_local_without_session_gets_a_unique_id() -> None:
    d = decode(llb.local("ctx"), local_unique_id="u1")
    digest, op = d.one("source")
    assert op.source.attrs["local.unique"] == "u1"
    assert d.caps(digest) == {"source.local", "source.local.unique"}
    d = decode(llb.local("ctx", unique="mine"), local_unique_id="u1")
    assert d.one("source")[1].source.attrs["local.unique"] == "mine"
    # random per marshal call otherwise
    a, b = (llb.marshal(llb.local("ctx")) for _ in range(2))
    assert getattr(a, "def")[0] != getattr(b, "def")[0]


def test_http_source() -> None:
    st = llb.http("https://example.com/f.tgz", checksum="sha256:" + "c" * 64, filename="f.tgz",
                  chmod=0o100755, chown=(1, 2))
    d = decode(st)
    digest, op = d.one("source")
    assert op.source.identifier == "https://example.com/f.tgz" and not op.HasField("platform")
    assert dict(op.source.attrs) == {"http.checksum": "sha256:" + "c" * 64, "http.filename": "f.tgz",
                                     "http.perm": "0755", "http.uid": "1", "http.gid": "2"}
    assert d.caps(digest) == {"source.http", "source.http.checksum", "source.http.perm", "soruce.http.uidgid"}


@pytest.mark.parametrize("remote,ref,subdir,identifier,full_url,ssh", [
    ("https://github.com/moby/buildkit.git", "v0.11.6", None, "github.com/moby/buildkit.git#v0.11.6",
     "https://github.com/moby/buildkit.git", False),
    ("github.com/moby/buildkit", "", None, "github.com/moby/buildkit", "https://github.com/moby/buildkit",
     False),
    ("https://github.com/moby/buildkit.git", "main", "/docs/../frontend/",
     "github.com/moby/buildkit.git#main:frontend", "https://github.com/moby/buildkit.git", False),
    ("git@github.com:moby/buildkit.git", "", None, "github.com/moby/buildkit.git",
     "git@github.com:moby/buildkit.git", True),
])
def test_git_source(remote: str, ref: str, subdir: str | None, identifier: str, full_url: str,
                    ssh: bool) -> None:
    d = decode(llb.git(remote, ref, subdir=subdir, keep_git_dir=True))
    digest, op = d.one("source")
    assert op.source.identifier == "git://" + identifier
    attrs = dict(op.source.attrs)
    assert attrs.pop("git.fullurl") == full_url
    assert attrs.pop("git.authtokensecret") == "GIT_AUTH_TOKEN"
    assert attrs.pop("git.authheadersecret") == "GIT_AUTH_HEADER"
    assert attrs.pop("git.keepgitdir") == "true"
    expected_caps = {"source.git", "source.git.fullurl", "source.git.keepgitdir"}
    if ssh:
        assert attrs.pop("git.mountsshsock") == "default"
        expected_caps |= {"source.git.knownsshhosts", "source.git.mountsshsock"}
    assert attrs == {}
    assert d.caps(digest) == expected_caps


def test_git_rejects_unsupported_protocol() -> None:
    with pytest.raises(llb.LLBError, match="unsupported protocol ftp"):
        llb.git("ftp://example.com/repo.git")
