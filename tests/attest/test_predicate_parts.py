"""The pure parts of provenance: attribute parsing, package URLs, BuildKit's JSON form of LLB ops,
the v0.2 conversion and the per-platform image filter (values as BuildKit produces them)."""

from __future__ import annotations

import json

import pytest

from buildkitpy.api import ops_pb2
from buildkitpy.attest import gojson, options, sbom
from buildkitpy.attest.capture import BuildCapture, ImageSource
from buildkitpy.attest.provenance import BuildInfo, image_purl, predicate_v1, to_v02
from buildkitpy.errors import InvalidArgument


def test_attrs_parse_like_buildkit() -> None:
    assert options.provenance_request({}) is None
    req = options.provenance_request({"attest:provenance": "mode=min,inline-only=true"})
    assert (req.mode, req.version, req.inline_only) == ("min", "v1", True)
    req = options.provenance_request({"attest:provenance": ""})  # no fields: max, v1
    assert (req.mode, req.version) == ("max", "v1")
    req = options.provenance_request({"build-arg:BUILDKIT_ATTEST_PROVENANCE": "mode=full,version=v0.2,"
                                      '"builder-id=https://x/y,z"'})
    assert (req.mode, req.version, req.builder_id) == ("max", "v0.2", "https://x/y,z")
    with pytest.raises(InvalidArgument, match="provenance SLSA version cannot be empty"):
        options.provenance_request({"attest:provenance": "version="})
    with pytest.raises(InvalidArgument, match='failed to parse reproducible flag "maybe"'):
        options.provenance_request({"attest:provenance": "reproducible=maybe"})
    assert options.provenance_request({"attest:SBOM": "generator=example/scanner"}) is None


def test_sbom_requests_parse_like_buildkit() -> None:
    assert sbom.sbom_request({"attest:provenance": ""}) is None
    assert sbom.sbom_request({"attest:sbom": ""}) == sbom.SBOMRequest(
        "docker.io/docker/buildkit-syft-scanner:stable-1")
    req = sbom.sbom_request({"build-arg:BUILDKIT_ATTEST_SBOM": "generator=example/scanner,mode=fast"})
    assert req == sbom.SBOMRequest("docker.io/example/scanner:latest", {"mode": "fast"})
    assert sbom.sbom_request({"attest:sbom": "generator=localhost:5000/s@sha256:" + "a" * 64}).generator == \
        "localhost:5000/s@sha256:" + "a" * 64
    with pytest.raises(InvalidArgument, match="sbom scanner cannot be empty"):
        sbom.sbom_request({"attest:sbom": "generator="})
    with pytest.raises(InvalidArgument, match="failed to parse sbom scanner Bad/Ref"):
        sbom.sbom_request({"attest:sbom": "generator=Bad/Ref"})
    assert sbom.enabled_for_stage("build", "true") and not sbom.enabled_for_stage("build", "0")
    assert sbom.enabled_for_stage("build", "x,build") and not sbom.enabled_for_stage("build", "x,y")


def test_package_urls() -> None:
    assert image_purl("busybox", ("linux", "arm64", "v8")) == \
        "pkg:docker/busybox@latest?platform=linux%2Farm64"
    arm = {"os": "linux", "architecture": "arm", "variant": "v7"}
    assert image_purl("docker.io/library/alpine:3.20", arm) == \
        "pkg:docker/alpine@3.20?platform=linux%2Farm%2Fv7"
    digest = "sha256:" + "ab" * 32
    assert image_purl(f"ghcr.io/o/r/img:v1@{digest}", None) == \
        f"pkg:docker/ghcr.io/o/r/img@v1?digest={digest}"
    assert image_purl("localhost:5000/x", None, local=True) == "pkg:oci/localhost%3A5000/x@latest"


def test_ops_in_buildkit_json_form() -> None:
    op = ops_pb2.Op()
    op.file.actions.add(input=-1, secondaryInput=-1, output=0).symlink.oldpath = "a"
    mk = op.file.actions.add(input=0, secondaryInput=-1, output=0).mkfile
    mk.path, mk.mode, mk.data = "/f", 0o644, b"hi"
    mk.owner.user.byID = 7
    op.platform.OS, op.platform.Architecture = "linux", "amd64"
    doc = gojson.to_go(op)
    assert list(doc) == ["Op", "platform"]
    a0, a1 = doc["Op"]["file"]["actions"]
    assert a0 == {"input": -1, "secondaryInput": -1, "output": 0, "Action": {}}  # symlink: unknown to it
    assert a1["Action"] == {"mkfile": {"path": "/f", "mode": 420, "data": "aGk=",
                                       "owner": {"user": {"User": {"byId": 7}}}}}
    assert doc["platform"] == {"Architecture": "amd64", "OS": "linux"}
    assert gojson.to_go(ops_pb2.Op()) == {"Op": {}}


def test_v02_conversion_and_root_request() -> None:
    info = BuildInfo(frontend="", frontend_attrs={"build-arg:A": "1", "platform": "linux/arm64",
                                                   "attest:provenance": "mode=max"},
                     invocation_id="i", started=0.0, builder_platform="linux/amd64", dockerfile_version="x")
    capture = BuildCapture("r").capture_for(None, [])
    ref_request = ("dockerfile.v0", {"build-arg:A": "1", "filename": "Dockerfile.x", "context": "https://u:p@h/r.git",
                                     "vcs:source": "https://u:p@h/r.git", "vcs:revision": "abc"})
    pred = predicate_v1(options.ProvenanceRequest(), info, capture, None, 1.5, ref_request)
    ext = pred["buildDefinition"]["externalParameters"]
    assert ext["configSource"] == {"uri": "https://u:xxxxx@h/r.git", "path": "Dockerfile.x"}
    assert ext["request"]["args"] == {"build-arg:A": "1"}
    assert ext["request"]["root"] == {"configSource": {}, "request": {"args": {"build-arg:A": "1"}}}
    md = pred["runDetails"]["metadata"]
    assert md["buildkit_metadata"]["vcs"] == {"source": "https://u:xxxxx@h/r.git", "revision": "abc"}
    assert md["buildkit_hermetic"] is True and md["finishedOn"] == "1970-01-01T00:00:01.5Z"
    v02 = to_v02(pred)
    assert v02["invocation"]["configSource"] == {"uri": "https://u:xxxxx@h/r.git",
                                                 "entryPoint": "Dockerfile.x"}
    assert v02["metadata"]["completeness"] == {"parameters": True, "environment": True, "materials": True}
    assert v02["metadata"]["https://mobyproject.org/buildkit@v1#hermetic"] is True
    assert "materials" not in v02


def test_images_resolved_for_every_platform_listed_per_platform() -> None:
    cap = BuildCapture("r")
    for arch in ("amd64", "arm64"):
        cap.resolved.append(ImageSource("example.com/multi:latest", ("linux", arch, ""),
                                        "sha256:" + "1" * 64))
    cap.resolved.append(ImageSource("example.com/only:latest", ("linux", "amd64", ""), "sha256:" + "2" * 64))
    platforms = [("linux/amd64", ("linux", "amd64", "")), ("linux/arm64", ("linux", "arm64", ""))]
    arm = cap.capture_for(None, [], platforms, "linux/arm64")
    assert [(i.ref, i.platform[1]) for i in arm.images] == [("example.com/multi:latest", "arm64"),
                                                           ("example.com/only:latest", "amd64")]


def test_history_copy_leaves_out_large_inline_file_data() -> None:
    import hashlib

    from buildkitpy.attest.manifest import HISTORY_INLINE_DATA_LIMIT, _drop_large_inline_data

    definition = ops_pb2.Definition()
    digests = []
    for size in (10, HISTORY_INLINE_DATA_LIMIT + 1):
        op = ops_pb2.Op()
        op.file.actions.add(input=-1, secondaryInput=-1, output=0).mkfile.data = b"x" * size
        if digests:
            op.inputs.add(digest=digests[-1], index=0)
        dt = op.SerializeToString()
        getattr(definition, "def").append(dt)
        digests.append("sha256:" + hashlib.sha256(dt).hexdigest())
    last = ops_pb2.Op()
    last.inputs.add(digest=digests[-1], index=0)
    getattr(definition, "def").append(last.SerializeToString())
    info = BuildInfo(frontend="", frontend_attrs={}, invocation_id="i", started=0.0,
                     builder_platform="linux/amd64")
    pred = predicate_v1(options.ProvenanceRequest(), info, BuildCapture("r").capture_for(definition, []),
                        definition, 1.0)
    steps = pred["buildDefinition"]["internalParameters"]["buildConfig"]["llbDefinition"]
    mkfile = [s["op"]["Op"]["file"]["actions"][0]["Action"]["mkfile"] for s in steps[:2]]
    assert [len(m["data"]) for m in mkfile] == [16, 87384]  # base64 in the attestation, as BuildKit's
    _drop_large_inline_data(pred)
    assert "data" in mkfile[0] and "data" not in mkfile[1]
    # the next build of the same ops (their Go JSON is remembered by their bytes) is whole again
    again = predicate_v1(options.ProvenanceRequest(), info, BuildCapture("r").capture_for(definition, []),
                         definition, 1.0)
    steps = again["buildDefinition"]["internalParameters"]["buildConfig"]["llbDefinition"]
    assert [len(s["op"]["Op"]["file"]["actions"][0]["Action"]["mkfile"]["data"]) for s in steps[:2]] == \
        [16, 87384]
    for step, dt in zip(steps, getattr(definition, "def"), strict=True):
        op = ops_pb2.Op.FromString(dt)
        del op.inputs[:]
        assert step["op"] == gojson.to_go(op)


def _bundle_dir(tmp_path, files: dict[str, bytes]):  # noqa: ANN001, ANN202
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    for name, data in files.items():
        (out / name).write_bytes(data)
    return out


def test_bundles_unbundle_like_buildkit(tmp_path) -> None:  # noqa: ANN001
    """A scanner's output directory: one in-toto statement per file, in name order, the core SBOM
    first, each file's subjects kept (none: the image), predicates as Go re-encodes them."""
    from buildkitpy.attest import bundle
    from buildkitpy.gateway.bridge import SUBJECT_RAW, InTotoSubject

    spdx = "https://spdx.dev/Document"
    statement = {"_type": "https://in-toto.io/Statement/v0.1", "predicateType": spdx, "subject": [],
                 "predicate": {"spdxVersion": "SPDX-2.3", "name": "<x>"}}
    raw = {"_type": "x", "predicateType": spdx, "subject": [{"name": "f", "digest": {"sha256": "ab"}}],
           "predicate": {"b": 1, "a": 2}}
    root = _bundle_dir(tmp_path, {"sbom-context.spdx.json": json.dumps(raw).encode(),
                                  "sbom.spdx.json": json.dumps(statement).encode()})
    att = sbom.bundle_attestation(None)
    found = bundle.unbundle_dir(root.parent, type(att)(kind=att.kind, path="out",
                                                          predicate_type=spdx, metadata=att.metadata))
    found.sort(key=lambda s: not s.is_core_sbom)
    assert [s.path for s in found] == ["out/sbom.spdx.json", "out/sbom-context.spdx.json"]
    assert found[0].predicate == b'{"name":"\\u003cx\\u003e","spdxVersion":"SPDX-2.3"}'
    assert found[1].subjects == [InTotoSubject(SUBJECT_RAW, "f", ["sha256:ab"])]
    subjects = [{"name": "pkg:docker/x@1", "digest": {"sha256": "cd"}}]
    assert json.loads(bundle.statement_json(found[0], subjects))["subject"] == subjects
    assert json.loads(bundle.statement_json(found[1], subjects))["subject"] == [
        {"name": "f", "digest": {"sha256": "ab"}}]


@pytest.mark.parametrize(("name", "data", "message"), [
    ("sbom.spdx.json", b"not json", "cannot decode in-toto statement /sbom.spdx.json"),
    ("sbom.spdx.json", b"[1]", "not a JSON object"),
    ("sbom.spdx.json", b'{"predicateType": "https://example.com/other"}', "not the required"),
    ("sbom.spdx.json", b'{"predicateType": "https://spdx.dev/Document", "subject": ["x"]}', "bad subject"),
])
def test_bad_bundle_entries_are_refused_clearly(tmp_path, name, data, message) -> None:  # noqa: ANN001
    from buildkitpy.attest import bundle

    root = _bundle_dir(tmp_path, {name: data})
    att = sbom.bundle_attestation(None)
    with pytest.raises(InvalidArgument, match=message):
        bundle.unbundle_dir(root, att)


def test_bundle_entries_must_be_regular_files(tmp_path) -> None:  # noqa: ANN001
    from buildkitpy.attest import bundle

    root = _bundle_dir(tmp_path, {})
    (root / "sbom.spdx.json").symlink_to("/etc/passwd")
    with pytest.raises(InvalidArgument, match="/sbom.spdx.json is not a regular file"):
        bundle.unbundle_dir(root, sbom.bundle_attestation(None))
    provenance = tmp_path / "p"
    provenance.mkdir()
    (provenance / "x.json").write_text('{"predicateType": "https://slsa.dev/provenance/v1"}')
    att = sbom.bundle_attestation(None)
    with pytest.raises(InvalidArgument, match="frontend may not bundle provenance attestations"):
        bundle.unbundle_dir(provenance, type(att)(kind=att.kind, metadata=att.metadata))
