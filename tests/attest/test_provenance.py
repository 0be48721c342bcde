"""Provenance attestations (``attest:provenance``) through a real daemon, real gRPC and a real
registry, checked against the structure real buildkitd writes for the same Dockerfile (its
attestation manifest and statement were compared field by field; the values asserted here are the
ones both daemons produce)."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import tarfile
import threading
import urllib.request
from pathlib import Path

import pytest
from image.registryfixture import Registry, busybox_rootfs, start_registry

from buildkitpy.api import content_pb2, content_pb2_grpc, control_pb2, control_pb2_grpc
from tests.conftest import needs_root

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
ACCEPT = ",".join([OCI_INDEX, OCI_MANIFEST, "application/vnd.docker.distribution.manifest.v2+json",
                   "application/vnd.docker.distribution.manifest.list.v2+json"])
HTTP_BODY = b"hello over http\n"


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Registry:
    reg = start_registry(tmp_path_factory.mktemp("attest-registry"))
    reg.push_image("test/busybox", "latest", [(busybox_rootfs(), "gzip")])
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def http_url() -> str:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(HTTP_BODY)))
            self.end_headers()
            self.wfile.write(HTTP_BODY)

        def log_message(self, *args) -> None:  # noqa: ANN002
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/file.txt"
    server.shutdown()


def dockerfile(registry: Registry, http_url: str) -> str:
    return (f"FROM {registry.host}/test/busybox\nARG FOO=bar\nADD {http_url} /f.txt\n"
            "COPY a.txt /a.txt\nRUN echo $FOO > /x\n")


def build(daemon, tmp_path: Path, text: str, output: str, *opts: str, check: bool = True):  # noqa: ANN001, ANN201
    ctx = tmp_path / f"ctx{len(list(tmp_path.glob('ctx*')))}"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(text)
    (ctx / "a.txt").write_text("aaa\n")
    meta = ctx.with_suffix(".json")
    args = ["build", "--progress", "plain", "--frontend", "dockerfile.v0", "--local", f"context={ctx}",
            "--local", f"dockerfile={ctx}", "--output", output, "--metadata-file", str(meta)]
    for o in opts:
        args += ["--opt", o]
    res = daemon.client(*args, check=check)
    return res, (json.loads(meta.read_text()) if meta.exists() and meta.stat().st_size else {})


def get(registry: Registry, repo: str, what: str) -> bytes:
    req = urllib.request.Request(f"{registry.base}/v2/{repo}/{what}", headers={"Accept": ACCEPT})
    with urllib.request.urlopen(req) as r:
        return r.read()


def fetch_attested(registry: Registry, repo: str, tag: str) -> tuple[dict, dict, dict, dict]:
    """(index, image manifest entry, attestation manifest, statement) as the registry serves them."""
    index = json.loads(get(registry, repo, f"manifests/{tag}"))
    assert index["mediaType"] == OCI_INDEX
    image_entry, att_entry = index["manifests"]
    att = json.loads(get(registry, repo, f"manifests/{att_entry['digest']}"))
    layer = att["layers"][0]
    blob = get(registry, repo, f"blobs/{layer['digest']}")
    assert "sha256:" + hashlib.sha256(blob).hexdigest() == layer["digest"] and len(blob) == layer["size"]
    return index, image_entry, att, json.loads(blob)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_attestation_manifest(index: dict, image_entry: dict, att: dict, statement: dict,
                               predicate_type: str) -> None:
    """The index entry, manifest and statement shapes BuildKit writes (field by field)."""
    att_entry = index["manifests"][1]
    assert image_entry["mediaType"] == OCI_MANIFEST and image_entry["platform"]["os"] == "linux"
    assert att_entry["mediaType"] == OCI_MANIFEST
    assert att_entry["annotations"] == {"vnd.docker.reference.digest": image_entry["digest"],
                                        "vnd.docker.reference.type": "attestation-manifest"}
    assert att_entry["platform"] == {"architecture": "unknown", "os": "unknown"}
    assert att["schemaVersion"] == 2 and att["mediaType"] == OCI_MANIFEST
    assert att["artifactType"] == "application/vnd.docker.attestation.manifest.v1+json"
    assert att["config"] == {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(b"{}"),
                             "size": 2, "data": "e30="}
    assert att["subject"] == {k: image_entry[k] for k in ("mediaType", "digest", "size")}
    [layer] = att["layers"]
    assert layer["mediaType"] == "application/vnd.in-toto+json"
    assert layer["annotations"] == {"in-toto.io/predicate-type": predicate_type}
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == predicate_type


@needs_root
def test_max_provenance_pushed_like_buildkit(daemon, registry, http_url, tmp_path) -> None:  # noqa: ANN001
    text = dockerfile(registry, http_url)
    name = f"{registry.host}/att/max:latest"
    _, meta = build(daemon, tmp_path, text, f"type=image,name={name},push=true",
                    "build-arg:FOO=baz", "attest:provenance=mode=max")
    index, image_entry, att, st = fetch_attested(registry, "att/max", "latest")
    assert meta["containerimage.digest"] == sha256(get(registry, "att/max", "manifests/latest"))
    check_attestation_manifest(index, image_entry, att, st, "https://slsa.dev/provenance/v1")
    arch = image_entry["platform"]["architecture"]
    port = registry.host.split(":")[1]
    assert st["subject"] == [{"name": f"pkg:docker/127.0.0.1%3A{port}/att/max@latest?platform=linux%2F{arch}",
                              "digest": {"sha256": image_entry["digest"][7:]}}]
    pred = st["predicate"]
    bd, rd = pred["buildDefinition"], pred["runDetails"]
    assert bd["buildType"] == "https://github.com/moby/buildkit/blob/master/docs/attestations/slsa-definitions.md"
    base_digest = registry.pushed["test/busybox:latest"]
    assert bd["resolvedDependencies"] == [
        {"uri": f"pkg:docker/127.0.0.1%3A{port}/test/busybox@latest?platform=linux%2F{arch}",
         "digest": {"sha256": base_digest[7:]}},
        {"uri": http_url, "digest": {"sha256": hashlib.sha256(HTTP_BODY).hexdigest()}}]
    # Our CLI runs the Dockerfile frontend client-side, as buildctl does: the Solve itself has no
    # frontend, so its attrs are the root request.
    assert bd["externalParameters"] == {
        "configSource": {},
        "request": {"frontend": "dockerfile.v0", "args": {"build-arg:FOO": "baz"},
                    "locals": [{"name": "context"}, {"name": "dockerfile"}],
                    "root": {"configSource": {}, "request": {"args": {"build-arg:FOO": "baz"}}},
                    "compatibilityVersion": 30}}
    internal = bd["internalParameters"]
    assert internal["builderPlatform"] == f"linux/{arch}" and internal["dockerfileVersion"]
    steps = internal["buildConfig"]["llbDefinition"]
    assert [s["id"] for s in steps] == [f"step{i}" for i in range(7)]
    assert steps[0]["op"]["Op"]["source"]["identifier"] == \
        f"docker-image://{registry.host}/test/busybox:latest@{base_digest}"
    assert steps[0]["op"]["platform"] == {"Architecture": arch, "OS": "linux"}
    assert steps[1]["op"]["Op"]["source"] == {"identifier": http_url, "attrs": {"http.filename": "file.txt"}}
    assert steps[2]["inputs"] == ["step0:0", "step1:0"]
    action = steps[2]["op"]["Op"]["file"]["actions"][0]
    assert (action["input"], action["secondaryInput"], action["output"]) == (0, 1, 0)
    assert action["Action"]["copy"]["src"] == "/file.txt" and action["Action"]["copy"]["dest"] == "/f.txt"
    assert steps[3]["op"]["Op"]["source"]["identifier"] == "local://context"
    assert "local.session" not in steps[3]["op"]["Op"]["source"]["attrs"]
    assert steps[4]["inputs"] == ["step2:0", "step3:0"]
    assert steps[5]["op"]["Op"]["exec"]["meta"]["args"] == ["/bin/sh", "-c", "echo $FOO > /x"]
    assert steps[6] == {"id": "step6", "op": {"Op": {}}, "inputs": ["step5:0"]}
    assert sorted(internal["buildConfig"]["digestMapping"].values()) == [f"step{i}" for i in range(7)]
    md = rd["metadata"]
    assert rd["builder"] == {"id": ""}
    assert md["buildkit_completeness"] == {"request": True, "resolvedDependencies": False}
    assert len(md["invocationId"]) == 25 and md["startedOn"] <= md["finishedOn"]
    source = md["buildkit_metadata"]["source"]
    [info] = source["infos"]
    assert (info["filename"], info["language"]) == ("Dockerfile", "Dockerfile")
    assert base64.b64decode(info["data"]).decode() == text
    assert info["llbDefinition"][0]["op"]["Op"]["source"]["identifier"] == "local://dockerfile"
    lines = {k: v["locations"][0]["ranges"][0]["start"]["line"] for k, v in source["locations"].items()
             if v.get("locations")}
    assert lines == {"step0": 1, "step2": 3, "step4": 4, "step5": 5}
    assert "buildkit_hermetic" not in md  # a local context and a RUN with network
    # Max mode lists the layer chain of every step whose result is (part of) the exported image:
    # the base image, ADD, COPY and RUN (not the http or local sources, nor the final step).
    image = json.loads(get(registry, "att/max", f"manifests/{image_entry['digest']}"))
    layers = md["buildkit_metadata"]["layers"]
    assert sorted(layers) == ["step0:0", "step2:0", "step4:0", "step5:0"]
    for key, count in (("step0:0", 1), ("step2:0", 2), ("step4:0", 3), ("step5:0", 4)):
        assert layers[key] == [image["layers"][:count]], key


@needs_root
def test_min_and_v02_provenance(daemon, registry, http_url, tmp_path) -> None:  # noqa: ANN001
    text = dockerfile(registry, http_url)
    # buildx's default: min, inline-only; the image exporter attaches it.
    build(daemon, tmp_path, text, f"type=image,name={registry.host}/att/min:latest,push=true",
          "build-arg:FOO=baz", "attest:provenance=mode=min,inline-only=true")
    index, image_entry, att, st = fetch_attested(registry, "att/min", "latest")
    check_attestation_manifest(index, image_entry, att, st, "https://slsa.dev/provenance/v1")
    bd = st["predicate"]["buildDefinition"]
    assert bd["externalParameters"]["request"] == {
        "frontend": "dockerfile.v0", "locals": [{"name": "context"}, {"name": "dockerfile"}],
        "root": {"configSource": {}, "request": {}}, "compatibilityVersion": 30}
    assert "buildConfig" not in bd["internalParameters"]
    md = st["predicate"]["runDetails"]["metadata"]
    assert md["buildkit_metadata"] == {}
    assert md["buildkit_completeness"] == {"request": False, "resolvedDependencies": False}

    build(daemon, tmp_path, text, f"type=image,name={registry.host}/att/v02:latest,push=true",
          "build-arg:FOO=baz", "attest:provenance=mode=max,version=v0.2")
    index, image_entry, att, st = fetch_attested(registry, "att/v02", "latest")
    check_attestation_manifest(index, image_entry, att, st, "https://slsa.dev/provenance/v0.2")
    pred = st["predicate"]
    assert pred["buildType"] == "https://mobyproject.org/buildkit@v1" and pred["builder"] == {"id": ""}
    assert [m["uri"] for m in pred["materials"]][1] == http_url
    inv = pred["invocation"]
    assert inv["configSource"] == {} and inv["parameters"]["args"] == {"build-arg:FOO": "baz"}
    assert inv["environment"]["platform"].startswith("linux/")
    assert [s["id"] for s in pred["buildConfig"]["llbDefinition"]][-1] == "step6"
    meta = pred["metadata"]
    assert meta["completeness"] == {"parameters": True, "environment": True, "materials": False}
    assert meta["reproducible"] is False and "source" in meta["https://mobyproject.org/buildkit@v1#metadata"]


def read_layout(path: Path) -> tuple[dict, dict[str, bytes]]:
    with tarfile.open(path) as t:
        files = {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}
    for n, data in files.items():
        if n.startswith("blobs/sha256/"):
            assert sha256(data)[7:] == n.rsplit("/", 1)[1]
    return json.loads(files["index.json"]), files


@needs_root
@pytest.mark.parametrize("kind", ["oci", "docker"])
def test_archive_exporters_attach_unless_inline_only(daemon, registry, http_url, tmp_path, kind) -> None:  # noqa: ANN001
    text = dockerfile(registry, http_url)
    dest = tmp_path / "max.tar"
    build(daemon, tmp_path, text, f"type={kind},dest={dest},name=example.com/x:1",
          "attest:provenance=mode=max")
    top, files = read_layout(dest)
    index = json.loads(files["blobs/sha256/" + top["manifests"][0]["digest"][7:]])
    image_entry, att_entry = index["manifests"]
    att = json.loads(files["blobs/sha256/" + att_entry["digest"][7:]])
    statement = json.loads(files["blobs/sha256/" + att["layers"][0]["digest"][7:]])
    check_attestation_manifest(index, image_entry, att, statement, "https://slsa.dev/provenance/v1")
    assert statement["subject"][0]["name"].startswith("pkg:docker/example.com/x@1?platform=linux%2F")
    # inline-only (buildx's default) single-platform archives stay a plain manifest, as BuildKit's
    dest = tmp_path / "min.tar"
    build(daemon, tmp_path, text, f"type={kind},dest={dest},name=example.com/x:1",
          "attest:provenance=mode=min,inline-only=true")
    top, files = read_layout(dest)
    assert top["manifests"][0]["mediaType"] == OCI_MANIFEST


def test_bad_provenance_options_fail_clearly(daemon, tmp_path) -> None:  # noqa: ANN001
    text = "FROM scratch\nCOPY a.txt /\n"
    for opt, message in (("attest:provenance=mode=bogus", 'invalid mode "bogus"'),
                         ("attest:provenance=version=v9", "invalid provenance SLSA version: v9"),
                         ("attest:frobnicate=x", 'unknown attestation type "frobnicate"')):
        res, _ = build(daemon, tmp_path, text, f"type=local,dest={tmp_path / 'o2'}", opt, check=False)
        assert res.returncode != 0 and message in res.stderr.decode(), (opt, res.stderr.decode())


@needs_root
def test_history_record_keeps_max_provenance(daemon, registry, http_url, tmp_path) -> None:  # noqa: ANN001
    import grpc

    text = dockerfile(registry, http_url)
    build(daemon, tmp_path, text, f"type=local,dest={tmp_path / 'out'}", "build-arg:FOO=hist")
    with grpc.insecure_channel(f"unix:{daemon.unix_addr.removeprefix('unix://')}") as ch:
        events = list(control_pb2_grpc.ControlStub(ch).ListenBuildHistory(
            control_pb2.BuildHistoryRequest(EarlyExit=True), timeout=20))
        recs = [e.record for e in events if e.record.FrontendAttrs.get("build-arg:FOO") == "hist"]
        assert len(recs) == 1, [e.record.FrontendAttrs for e in events]
        [desc] = recs[0].Result.Attestations
        assert desc.media_type == "application/vnd.in-toto+json"
        assert desc.annotations["in-toto.io/predicate-type"] == "https://slsa.dev/provenance/v1"
        data = b"".join(r.data for r in content_pb2_grpc.ContentStub(ch).Read(
            content_pb2.ReadContentRequest(digest=desc.digest), timeout=10))
    assert sha256(data) == desc.digest and len(data) == desc.size
    pred = json.loads(data)  # the predicate itself, as BuildKit stores it (buildx reads it so)
    assert pred["buildDefinition"]["externalParameters"]["request"]["args"] == {"build-arg:FOO": "hist"}
    assert pred["buildDefinition"]["internalParameters"]["buildConfig"]["llbDefinition"]
    # a local export has no layer blobs, but the pulled base image's are known (as BuildKit lists them)
    port = registry.host.split(":")[1]
    base = json.loads(get(registry, "test/busybox", "manifests/latest"))
    assert pred["runDetails"]["metadata"]["buildkit_metadata"]["layers"] == {"step0:0": [base["layers"]]}
    assert pred["buildDefinition"]["resolvedDependencies"][0]["uri"].startswith(
        f"pkg:docker/127.0.0.1%3A{port}/test/busybox@latest")


@needs_root
def test_local_and_tar_exports_write_provenance_json(daemon, registry, http_url, tmp_path) -> None:  # noqa: ANN001
    text = "FROM scratch\nCOPY a.txt /sub/a.txt\nADD " + http_url + " /f.txt\n"
    out = tmp_path / "out"
    build(daemon, tmp_path, text, f"type=local,dest={out}", "attest:provenance=mode=min")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == \
        ["f.txt", "provenance.json", "sub/a.txt"]
    statement = json.loads((out / "provenance.json").read_text())
    assert (out / "provenance.json").stat().st_mode & 0o777 == 0o600
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    assert statement["subject"] == [
        {"name": "f.txt", "digest": {"sha256": hashlib.sha256(HTTP_BODY).hexdigest()}},
        {"name": "sub/a.txt", "digest": {"sha256": hashlib.sha256(b"aaa\n").hexdigest()}}]
    assert statement["predicate"]["buildDefinition"]["resolvedDependencies"] == \
        [{"uri": http_url, "digest": {"sha256": hashlib.sha256(HTTP_BODY).hexdigest()}}]

    dest = tmp_path / "out.tar"
    build(daemon, tmp_path, text, f"type=tar,dest={dest}", "attest:provenance=mode=max,filename=prov.json")
    with tarfile.open(dest) as t:
        names = t.getnames()
        statement = json.load(t.extractfile("prov.json"))
    assert sorted(n for n in names if not n.endswith("sub")) == ["f.txt", "prov.json", "sub/a.txt"]
    assert [s["name"] for s in statement["subject"]] == ["f.txt", "sub/a.txt"]
    assert statement["predicate"]["buildDefinition"]["internalParameters"]["buildConfig"]

    # buildx's default (inline-only) writes nothing next to the files
    out = tmp_path / "inline"
    build(daemon, tmp_path, text, f"type=local,dest={out}", "attest:provenance=mode=min,inline-only=true")
    assert not (out / "provenance.json").exists() and (out / "f.txt").exists()


@needs_root
def test_multi_platform_one_attestation_per_platform(daemon, registry, tmp_path) -> None:  # noqa: ANN001
    _, amd = registry.push_image("test/multi", "amd64", [(busybox_rootfs(), "gzip")], arch="amd64")
    _, arm = registry.push_image("test/multi", "arm64", [(busybox_rootfs(), "gzip")], arch="arm64")
    index_digest = registry.push_manifest("test/multi", "latest", {
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [amd, arm]})
    text = f"FROM {registry.host}/test/multi\nCOPY a.txt /a.txt\n"
    build(daemon, tmp_path, text, f"type=image,name={registry.host}/att/multi:latest,push=true",
          "platform=linux/amd64,linux/arm64", "attest:provenance=mode=min", "build-arg:MP=1")
    index = json.loads(get(registry, "att/multi", "manifests/latest"))
    images, atts = index["manifests"][:2], index["manifests"][2:]
    assert [m["platform"]["architecture"] for m in images] == ["amd64", "arm64"]
    port = registry.host.split(":")[1]
    for image_entry, att_entry in zip(images, atts, strict=True):
        att = json.loads(get(registry, "att/multi", f"manifests/{att_entry['digest']}"))
        st = json.loads(get(registry, "att/multi", f"blobs/{att['layers'][0]['digest']}"))
        check_attestation_manifest({"manifests": [image_entry, att_entry]}, image_entry, att, st,
                                   "https://slsa.dev/provenance/v1")
        arch = image_entry["platform"]["architecture"]
        assert st["subject"][0]["name"].endswith(f"?platform=linux%2F{arch}")
        # the base image resolved for both platforms is listed for this platform only (as BuildKit)
        assert st["predicate"]["buildDefinition"]["resolvedDependencies"] == [
            {"uri": f"pkg:docker/127.0.0.1%3A{port}/test/multi@latest?platform=linux%2F{arch}",
             "digest": {"sha256": index_digest[7:]}}]
    # the history record has a predicate per platform (buildx.build.provenance/<platform>)
    import grpc

    with grpc.insecure_channel(f"unix:{daemon.unix_addr.removeprefix('unix://')}") as ch:
        events = list(control_pb2_grpc.ControlStub(ch).ListenBuildHistory(
            control_pb2.BuildHistoryRequest(EarlyExit=True), timeout=20))
    [rec] = [e.record for e in events if e.record.FrontendAttrs.get("build-arg:MP") == "1"]
    assert sorted(rec.Results) == ["linux/amd64", "linux/arm64"]
    assert all(len(r.Attestations) == 1 for r in rec.Results.values())
