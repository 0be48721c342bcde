"""SBOM attestations (``attest:sbom``) through a real daemon, real runc and a real registry: the
scanner is an image of our own (the default docker/buildkit-syft-scanner cannot be pulled offline)
speaking BuildKit's scanner protocol: it lists the files under ``$BUILDKIT_SCAN_SOURCE`` (and each
tree under ``$BUILDKIT_SCAN_SOURCE_EXTRAS``) as SPDX documents in in-toto statements written to
``$BUILDKIT_SCAN_DESTINATION``."""

from __future__ import annotations

import json
import tarfile

import pytest
from image.registryfixture import Registry, TarBuilder, busybox_rootfs, start_registry

from attest.test_provenance import build, fetch_attested, get, read_layout, sha256
from tests.conftest import needs_root

SPDX = "https://spdx.dev/Document"
SLSA = "https://slsa.dev/provenance/v1"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"

SCAN_SCRIPT = r"""set -e
bb=/bin/busybox
doc() {
  files=""
  n=0
  for f in $(cd "$1" && $bb find . -type f | $bb sort); do
    n=$((n+1))
    [ -z "$files" ] || files="$files,"
    files="$files{\"fileName\":\"${f#.}\",\"SPDXID\":\"SPDXRef-File-$n\","\
"\"checksums\":[],\"copyrightText\":\"NOASSERTION\"}"
  done
  echo "{\"_type\":\"https://in-toto.io/Statement/v0.1\",\"predicateType\":\"https://spdx.dev/Document\","\
"\"subject\":[],\"predicate\":{\"spdxVersion\":\"SPDX-2.3\",\"dataLicense\":\"CC0-1.0\","\
"\"SPDXID\":\"SPDXRef-DOCUMENT\",\"name\":\"$2\",\"documentNamespace\":\"https://example.com/$2\","\
"\"comment\":\"mode=$BUILDKIT_SCAN_mode\",\"creationInfo\":{\"created\":\"2024-01-01T00:00:00Z\","\
"\"creators\":[\"Tool: test-scanner\"]},\"files\":[$files]}}"
}
doc "$BUILDKIT_SCAN_SOURCE" sbom > "$BUILDKIT_SCAN_DESTINATION/sbom.spdx.json"
if [ -n "$BUILDKIT_SCAN_SOURCE_EXTRAS" ]; then
  for d in "$BUILDKIT_SCAN_SOURCE_EXTRAS"/*; do
    name=$($bb basename "$d")
    doc "$d" "$name" > "$BUILDKIT_SCAN_DESTINATION/$name.spdx.json"
  done
fi
"""


def script_layer(script: str) -> bytes:
    return TarBuilder().add("scan.sh", mode=0o755, data=script.encode()).bytes()


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Registry:
    reg = start_registry(tmp_path_factory.mktemp("sbom-registry"))
    base = busybox_rootfs()
    reg.push_image("test/busybox", "latest", [(base, "gzip")])
    run = {"Env": ["PATH=/bin"], "Entrypoint": ["/bin/sh", "/scan.sh"], "WorkingDir": "/"}
    for tag, script in (("1", SCAN_SCRIPT), ("fail", "echo scanning failed >&2; exit 3\n"),
                        ("empty", "true\n")):
        reg.push_image("test/scanner", tag, [(base, "gzip"), (script_layer(script), "gzip")], config=run)
    reg.push_image("test/scanner", "nocmd", [(base, "gzip")], config={"Env": ["PATH=/bin"]})
    yield reg
    reg.stop()


def dockerfile(registry: Registry) -> str:
    return (f"FROM {registry.host}/test/busybox AS build\nRUN echo built > /built.txt\n"
            f"FROM {registry.host}/test/busybox\nRUN echo hi > /hello.txt\nCOPY a.txt /a.txt\n"
            "COPY --from=build /built.txt /from-build.txt\n")


def spdx_files(statement: dict) -> dict[str, dict]:
    return {f["fileName"]: f for f in statement["predicate"]["files"]}


@needs_root
def test_sbom_pushed_with_the_image_as_subject(daemon, registry, tmp_path) -> None:  # noqa: ANN001
    name = f"{registry.host}/sbom/app:1"
    res, meta = build(daemon, tmp_path, dockerfile(registry), f"type=image,name={name},push=true",
                      f"attest:sbom=generator={registry.host}/test/scanner:1,mode=fast")
    index, image_entry, att, st = fetch_attested(registry, "sbom/app", "1")
    assert meta["containerimage.digest"] == sha256(get(registry, "sbom/app", "manifests/1"))
    att_entry = index["manifests"][1]
    assert att_entry["annotations"] == {"vnd.docker.reference.digest": image_entry["digest"],
                                        "vnd.docker.reference.type": "attestation-manifest"}
    assert att_entry["platform"] == {"architecture": "unknown", "os": "unknown"}
    assert att["artifactType"] == "application/vnd.docker.attestation.manifest.v1+json"
    assert att["subject"] == {k: image_entry[k] for k in ("mediaType", "digest", "size")}
    [layer] = att["layers"]
    assert layer["mediaType"] == "application/vnd.in-toto+json"
    assert layer["annotations"] == {"in-toto.io/predicate-type": SPDX}
    arch = image_entry["platform"]["architecture"]
    port = registry.host.split(":")[1]
    assert st["_type"] == "https://in-toto.io/Statement/v1" and st["predicateType"] == SPDX
    assert st["subject"] == [{"name": f"pkg:docker/127.0.0.1%3A{port}/sbom/app@1?platform=linux%2F{arch}",
                              "digest": {"sha256": image_entry["digest"][7:]}}]
    pred = st["predicate"]
    assert pred["spdxVersion"] == "SPDX-2.3" and pred["name"] == "sbom"
    assert pred["comment"] == "mode=fast"  # the generator's other fields reach it as BUILDKIT_SCAN_<key>
    # what the scanner saw: the built image's files (not the build stage's)
    files = spdx_files(st)
    assert {"/a.txt", "/hello.txt", "/from-build.txt", "/bin/busybox", "/etc/passwd"} <= set(files)
    assert "/built.txt" not in files
    # each file is credited to the exported layer holding it, and the builder joins the creators
    manifest = json.loads(get(registry, "sbom/app", f"manifests/{image_entry['digest']}"))
    layers = [x["digest"] for x in manifest["layers"]]
    assert len(layers) == 4
    assert files["/bin/busybox"]["comment"] == f"layerID: {layers[0]}"
    assert files["/hello.txt"]["comment"] == f"layerID: {layers[1]}"
    assert files["/a.txt"]["comment"] == f"layerID: {layers[2]}"
    assert files["/from-build.txt"]["comment"] == f"layerID: {layers[3]}"
    creators = pred["creationInfo"]["creators"]
    assert creators[0] == "Tool: test-scanner" and creators[1].startswith("Tool: buildkitpy-")
    # in the order real BuildKit re-encodes the core document in (seen side by side)
    assert list(pred) == ["spdxVersion", "dataLicense", "SPDXID", "name", "documentNamespace", "comment",
                          "creationInfo", "files"]
    assert list(pred["creationInfo"]) == ["creators", "created"]
    assert list(files["/a.txt"]) == ["fileName", "SPDXID", "checksums", "copyrightText", "comment"]
    assert "generating sbom using" in res.stderr.decode()


@needs_root
@pytest.mark.parametrize("kind", ["oci", "docker"])
def test_sbom_with_extras_and_provenance_in_archives(daemon, registry, tmp_path, kind) -> None:  # noqa: ANN001
    """``BUILDKIT_SBOM_SCAN_CONTEXT``/``_STAGE`` add the context and the build stage to the scan
    (a build arg overrides a declared ``ARG``, here naming the stage); the core SBOM comes first,
    then the extras, then the provenance."""
    dest = tmp_path / "image.tar"
    text = "ARG BUILDKIT_SBOM_SCAN_CONTEXT=true\nARG BUILDKIT_SBOM_SCAN_STAGE=false\n" + dockerfile(registry)
    build(daemon, tmp_path, text,
          f"type={kind},dest={dest},name=example.com/x:1",
          f"attest:sbom=generator={registry.host}/test/scanner:1", "build-arg:BUILDKIT_SBOM_SCAN_STAGE=build",
          "attest:provenance=mode=min,inline-only=true")
    top, files = read_layout(dest)
    index = json.loads(files["blobs/sha256/" + top["manifests"][0]["digest"][7:]])
    image_entry, att_entry = index["manifests"]
    assert att_entry["platform"] == {"architecture": "unknown", "os": "unknown"}
    att = json.loads(files["blobs/sha256/" + att_entry["digest"][7:]])
    statements = [json.loads(files["blobs/sha256/" + x["digest"][7:]]) for x in att["layers"]]
    assert [x["annotations"]["in-toto.io/predicate-type"] for x in att["layers"]] == [SPDX, SPDX, SPDX, SLSA]
    assert [s["predicateType"] for s in statements] == [SPDX, SPDX, SPDX, SLSA]
    core, stage, context, _ = statements
    assert [core["predicate"]["name"], stage["predicate"]["name"], context["predicate"]["name"]] == [
        "sbom", "sbom-build", "sbom-context"]
    for s in statements:
        assert s["subject"][0]["digest"] == {"sha256": image_entry["digest"][7:]}
    assert "/built.txt" in spdx_files(stage)
    assert set(spdx_files(context)) == {"/a.txt"}  # the context as the build reads it (its followpaths)
    # only the core SBOM gets layer comments
    assert "comment" in spdx_files(core)["/a.txt"] and "comment" not in spdx_files(stage)["/built.txt"]


@needs_root
def test_bad_scanners_fail_naming_the_scanner(daemon, registry, tmp_path) -> None:  # noqa: ANN001
    text = f"FROM {registry.host}/test/busybox\nCOPY a.txt /a.txt\n"
    for tag, message in (
            ("fail", "failed for linux/"),
            ("empty", "wrote no SBOM for linux/"),
            ("nocmd", "does not have cmd")):
        scanner = f"{registry.host}/test/scanner:{tag}"
        dest = tmp_path / f"{tag}.tar"
        res, _ = build(daemon, tmp_path, text, f"type=oci,dest={dest}", f"attest:sbom=generator={scanner}",
                       check=False)
        err = res.stderr.decode()
        assert res.returncode != 0 and message in err and scanner in err, (tag, err)
        assert not dest.exists() or dest.stat().st_size == 0
    res, _ = build(daemon, tmp_path, text, f"type=oci,dest={tmp_path / 'bad.tar'}",
                   "attest:sbom=generator=Not/A/Valid:ref", check=False)
    assert res.returncode != 0 and "failed to parse sbom scanner Not/A/Valid:ref" in res.stderr.decode()


@needs_root
def test_local_and_tar_exports_write_the_sbom_next_to_the_files(daemon, registry, tmp_path) -> None:  # noqa: ANN001
    """As BuildKit's local exporter: each attestation as an indented statement named after it, the
    SBOM before the provenance, every exported file as subject (no layer ids: there are no layers)."""
    text = f"FROM {registry.host}/test/busybox\nCOPY a.txt /a.txt\n"
    scanner = f"attest:sbom=generator={registry.host}/test/scanner:1"
    out = tmp_path / "out"
    build(daemon, tmp_path, text, f"type=local,dest={out}", scanner, "attest:provenance=mode=min")
    sbom_file = (out / "sbom.spdx.json").read_text()
    assert sbom_file.startswith('{\n  "_type": "https://in-toto.io/Statement/v1",\n')
    st = json.loads(sbom_file)
    assert st["predicateType"] == SPDX
    assert {"name": "a.txt", "digest": {"sha256": sha256(b"aaa\n")[7:]}} in st["subject"]
    assert {s["name"] for s in st["subject"]} >= {"a.txt", "bin/busybox", "etc/passwd"}
    assert "/a.txt" in spdx_files(st) and "comment" not in spdx_files(st)["/a.txt"]
    assert json.loads((out / "provenance.json").read_text())["subject"] == st["subject"]
    dest = tmp_path / "out.tar"
    build(daemon, tmp_path, text, f"type=tar,dest={dest},attestation-prefix=att-", scanner)
    with tarfile.open(dest) as t:
        names = t.getnames()
        assert "att-sbom.spdx.json" in names and "a.txt" in names
        assert not any("provenance" in n for n in names)
        assert json.loads(t.extractfile("att-sbom.spdx.json").read())["predicateType"] == SPDX


@needs_root
def test_plain_llb_builds_are_scanned_by_the_daemon(daemon, registry, tmp_path) -> None:  # noqa: ANN001
    """No frontend to scan the result: the daemon runs the scanner on it (BuildKit's SBOM processor)."""
    from buildkitpy import llb

    state = llb.image(f"{registry.host}/test/busybox").file(llb.mkfile("/made.txt", 0o644, b"made\n"))
    dest = tmp_path / "llb.tar"
    res = daemon.client("build", "--progress", "plain", "--output", f"type=oci,dest={dest}",
                        "--opt", f"attest:sbom=generator={registry.host}/test/scanner:1",
                        input=state.marshal().SerializeToString())
    assert "generating sbom using" in res.stderr.decode()
    top, files = read_layout(dest)
    index = json.loads(files["blobs/sha256/" + top["manifests"][0]["digest"][7:]])
    image_entry, att_entry = index["manifests"]
    att = json.loads(files["blobs/sha256/" + att_entry["digest"][7:]])
    [st] = [json.loads(files["blobs/sha256/" + x["digest"][7:]]) for x in att["layers"]]
    assert st["predicateType"] == SPDX and st["subject"] == []  # no image name, so no subjects
    assert {"/made.txt", "/bin/busybox"} <= set(spdx_files(st))
    image = json.loads(files["blobs/sha256/" + image_entry["digest"][7:]])
    assert spdx_files(st)["/made.txt"]["comment"] == f"layerID: {image['layers'][-1]['digest']}"


@needs_root
def test_multi_platform_one_scan_per_platform(daemon, registry, tmp_path) -> None:  # noqa: ANN001
    """Each platform's result is scanned (by the scanner for the build platform) and gets its own
    attestation manifest with that platform's manifest as subject."""
    text = "FROM scratch\nARG TARGETARCH\nCOPY a.txt /a-$TARGETARCH.txt\n"
    dest = tmp_path / "multi.tar"
    res, _ = build(daemon, tmp_path, text, f"type=oci,dest={dest},name=example.com/m:1",
                   f"attest:sbom=generator={registry.host}/test/scanner:1",
                   "platform=linux/amd64,linux/arm64")
    log = res.stderr.decode()
    assert "[linux/amd64] generating sbom using" in log and "[linux/arm64] generating sbom using" in log
    top, files = read_layout(dest)
    index = json.loads(files["blobs/sha256/" + top["manifests"][0]["digest"][7:]])
    images, atts = index["manifests"][:2], index["manifests"][2:]
    assert [m["platform"]["architecture"] for m in images] == ["amd64", "arm64"]
    for image, entry in zip(images, atts, strict=True):
        assert entry["annotations"]["vnd.docker.reference.digest"] == image["digest"]
        att = json.loads(files["blobs/sha256/" + entry["digest"][7:]])
        [st] = [json.loads(files["blobs/sha256/" + x["digest"][7:]]) for x in att["layers"]]
        arch = image["platform"]["architecture"]
        assert st["subject"] == [{"name": f"pkg:docker/example.com/m@1?platform=linux%2F{arch}",
                                  "digest": {"sha256": image["digest"][7:]}}]
        assert set(spdx_files(st)) == {f"/a-{arch}.txt"}
