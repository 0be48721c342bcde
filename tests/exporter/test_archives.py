"""``--output type=oci|docker`` through the daemon and our CLI, validated by our own reader of the
layout and by skopeo."""

from __future__ import annotations

import base64
import json
import sqlite3
import urllib.request

from buildkitpy import llb

from .conftest import build, read_layout, sha256, skopeo

DOCKERFILE = "FROM scratch\nCOPY a.txt /a.txt\nENV X=1\nCOPY sub/ /dst/\nLABEL l=v\n"


def files_for(tmp_path) -> dict[str, str]:
    """Context files unique to the test: the shared daemon's cache must not hand back another
    test's (or session's) layers with other file times."""
    return {"a.txt": f"hello from {tmp_path.name}\n", "sub/s.txt": f"s {tmp_path.name}\n"}


def test_oci_archive_layout_config_and_response(daemon, tmp_path):
    dest, md = build(daemon, tmp_path, "type=oci,name=example.com/team/app:1.0", dockerfile=DOCKERFILE,
                     files=files_for(tmp_path))
    layout = read_layout(dest)
    image = layout.image
    assert image.manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert image.manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert [d["mediaType"] for d in image.manifest["layers"]] == \
        ["application/vnd.oci.image.layer.v1.tar+gzip"] * 2
    assert image.layer_names(0) == ["a.txt"]
    assert image.layer_names(1) == ["dst", "dst/s.txt"]  # tarfile strips the "dst/" slash
    assert image.layer_members(1)["dst"].isdir()
    members = image.layer_members(0)
    assert members["a.txt"].mtime == 1_600_000_000
    assert members["a.txt"].uname == members["a.txt"].gname == ""

    cfg = image.config
    assert cfg["os"] == "linux" and cfg["architecture"]
    assert "X=1" in cfg["config"]["Env"] and cfg["config"]["Labels"] == {"l": "v"}
    history = cfg["history"]
    assert [h["created_by"] for h in history] == ["COPY a.txt /a.txt # buildkit", "ENV X=1",
                                                  "COPY sub/ /dst/ # buildkit", 'LABEL l=v']
    assert [bool(h.get("empty_layer")) for h in history] == [False, True, False, True]
    assert cfg["created"] == history[-1]["created"]

    (entry,) = layout.index["manifests"]
    assert entry["annotations"]["io.containerd.image.name"] == "example.com/team/app:1.0"
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "1.0"
    assert "org.opencontainers.image.created" in entry["annotations"]
    # the one manifest's entry names its platform, as real BuildKit's index.json does
    assert entry["platform"] == {"architecture": cfg["architecture"], "os": "linux"}
    assert md["containerimage.digest"] == entry["digest"]
    assert md["containerimage.config.digest"] == image.manifest["config"]["digest"]
    assert md["image.name"] == "example.com/team/app:1.0"
    desc = md["containerimage.descriptor"]
    if isinstance(desc, str):
        desc = json.loads(base64.b64decode(desc))
    assert desc["digest"] == entry["digest"] and desc["size"] == entry["size"]

    inspected = json.loads(skopeo("inspect", f"oci-archive:{dest}"))
    assert inspected["Digest"] == entry["digest"]
    assert inspected["Layers"] == [d["digest"] for d in image.manifest["layers"]]
    copied = tmp_path / "copied"
    skopeo("copy", f"oci-archive:{dest}", f"dir:{copied}")
    assert sha256((copied / "manifest.json").read_bytes()) == entry["digest"]


def test_docker_archive_with_repo_tags(daemon, tmp_path):
    dest, md = build(daemon, tmp_path, 'type=docker,"name=myapp:v2,docker.io/user/other"',
                     dockerfile=DOCKERFILE, files=files_for(tmp_path))
    layout = read_layout(dest)
    image = layout.image
    assert image.manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert image.manifest["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    assert {d["mediaType"] for d in image.manifest["layers"]} == \
        {"application/vnd.docker.image.rootfs.diff.tar.gzip"}
    (entry,) = json.loads(layout.files["manifest.json"])
    assert entry["RepoTags"] == ["myapp:v2", "user/other:latest"]
    assert entry["Config"] == "blobs/sha256/" + image.manifest["config"]["digest"][7:]
    assert entry["Layers"] == ["blobs/sha256/" + d["digest"][7:] for d in image.manifest["layers"]]
    assert md["image.name"] == "docker.io/library/myapp:v2,docker.io/user/other:latest"
    assert len(layout.index["manifests"]) == 2
    inspected = json.loads(skopeo("inspect", f"docker-archive:{dest}"))
    # skopeo reads a docker archive's layers as uncompressed tars: it lists their diffIDs
    assert inspected["Layers"] == image.config["rootfs"]["diff_ids"]
    assert inspected["Env"] == image.config["config"]["Env"]


def test_docker_archive_with_oci_mediatypes(daemon, tmp_path):
    dest, _ = build(daemon, tmp_path, "type=docker,oci-mediatypes=true", dockerfile=DOCKERFILE,
                    files=files_for(tmp_path))
    image = read_layout(dest).image
    assert image.manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert json.loads(read_layout(dest).files["manifest.json"])[0]["RepoTags"] is None


def _whiteout_definition() -> bytes:
    state = (llb.scratch()
             .file(llb.mkdir("/keep", 0o755))
             .file(llb.mkfile("/keep/f", 0o600, b"x"))
             .file(llb.mkdir("/d", 0o755))
             .file(llb.mkfile("/d/old", 0o644, b"old"))
             .file(llb.mkfile("/gone", 0o644, b"bye"))
             .file(llb.rm("/gone"))
             .file(llb.rm("/d"))
             .file(llb.mkdir("/d", 0o700))
             .file(llb.mkfile("/d/new", 0o644, b"new")))
    return state.marshal().SerializeToString()


def test_deletions_become_whiteouts(daemon, tmp_path):
    dest, _ = build(daemon, tmp_path, "type=oci", definition=_whiteout_definition())
    image = read_layout(dest).image
    names = [image.layer_names(i) for i in range(len(image.layers))]
    assert names == [["keep"], ["keep", "keep/f"], ["d"], ["d", "d/old"], ["gone"], [".wh.gone"], [".wh.d"],
                     ["d"], ["d", "d/new"]]
    assert image.layer_members(1)["keep/f"].mode == 0o600
    # no overlay internals leak into the tars
    for i in range(len(image.layers)):
        for m in image.layer_members(i).values():
            assert not m.ischr(), m.name
            assert not any(k.startswith("SCHILY.xattr.trusted.overlay") for k in m.pax_headers), m.name
    assert image.config["history"][0]["comment"] == "buildkit.exporter.image.v0"


def test_opaque_directory_becomes_whiteouts(daemon, tmp_path):
    # rm and mkdir of a lower directory in one file op: overlay marks the upper dir opaque; as in
    # BuildKit's overlay differ, the layer whites out each lower entry it hides instead.
    state = (llb.scratch()
             .file(llb.mkdir("/d", 0o755))
             .file(llb.mkfile("/d/old", 0o644, b"old"))
             .file(llb.rm("/d").mkdir("/d", 0o755).mkfile("/d/new", 0o644, b"new")))
    dest, _ = build(daemon, tmp_path, "type=oci", definition=state.marshal().SerializeToString())
    image = read_layout(dest).image
    last = image.layer_names(len(image.layers) - 1)
    assert last == ["d", "d/.wh.old", "d/new"]
    marker = image.layer_members(len(image.layers) - 1)["d/.wh.old"]
    assert marker.isfile() and marker.size == 0


def test_rebuild_is_byte_identical(daemon, tmp_path):
    out = "type=oci,name=repro:1,rewrite-timestamp=true"
    epoch = ("--opt", "build-arg:SOURCE_DATE_EPOCH=1700000000")
    first, md1 = build(daemon, tmp_path, out, dockerfile=DOCKERFILE, files=files_for(tmp_path), extra=epoch,
                       name="a")
    second, md2 = build(daemon, tmp_path, out, dockerfile=DOCKERFILE, files=files_for(tmp_path),
                        extra=(*epoch, "--no-cache"), name="b")
    assert first.read_bytes() == second.read_bytes()
    assert md1["containerimage.digest"] == md2["containerimage.digest"]
    layout = read_layout(first)
    cfg = layout.image.config
    assert cfg["created"] == "2023-11-14T22:13:20Z"
    assert {h["created"] for h in cfg["history"]} == {"2023-11-14T22:13:20Z"}
    for i in range(len(layout.image.layers)):
        # file times as in the context; newer ones (the created /dst) clamped to the epoch
        assert {m.mtime for m in layout.image.layer_members(i).values()} <= {1_600_000_000, 1_700_000_000}
    assert layout.index["manifests"][0]["annotations"]["org.opencontainers.image.created"] == \
        "2023-11-14T22:13:20Z"


def test_zstd_and_uncompressed_layers(daemon, tmp_path):
    for compression, media_type in (("zstd", "application/vnd.oci.image.layer.v1.tar+zstd"),
                                    ("uncompressed", "application/vnd.oci.image.layer.v1.tar")):
        dest, _ = build(daemon, tmp_path, f"type=oci,compression={compression},compression-level=5",
                        dockerfile=DOCKERFILE, files=files_for(tmp_path), name=compression)
        image = read_layout(dest).image
        assert {d["mediaType"] for d in image.manifest["layers"]} == {media_type}
        if compression == "uncompressed":
            assert [d["digest"] for d in image.manifest["layers"]] == image.config["rootfs"]["diff_ids"]
        skopeo("inspect", f"oci-archive:{dest}")
    gz, _ = build(daemon, tmp_path, "type=oci", dockerfile=DOCKERFILE, files=files_for(tmp_path), name="gz")
    zs, _ = build(daemon, tmp_path, "type=oci,compression=zstd,compression-level=5", dockerfile=DOCKERFILE,
                  files=files_for(tmp_path), name="zs")
    # same layers, other compression: same diffIDs, other blobs
    a, b = read_layout(gz).image, read_layout(zs).image
    assert a.config["rootfs"] == b.config["rootfs"]
    assert {d["digest"] for d in a.manifest["layers"]}.isdisjoint(d["digest"] for d in b.manifest["layers"])


def test_second_export_reuses_cached_blobs(daemon, tmp_path):
    dockerfile = "FROM scratch\nCOPY big.txt /big.txt\n"
    files = {"big.txt": "".join(f"{i}\n" for i in range(200_000))}
    first, _ = build(daemon, tmp_path, "type=oci", dockerfile=dockerfile, files=files, name="one")
    db = daemon.root / "state" / "exporter" / "layers.db"
    rows = sqlite3.connect(db).execute("SELECT count(*) FROM layer_blobs").fetchone()[0]
    second, _ = build(daemon, tmp_path, "type=oci", dockerfile=dockerfile, files=files, name="two")
    assert sqlite3.connect(db).execute("SELECT count(*) FROM layer_blobs").fetchone()[0] == rows
    assert read_layout(first).image.manifest == read_layout(second).image.manifest


def test_multi_platform_index_and_docker_refuses_it(daemon, tmp_path):
    dockerfile = "FROM scratch\nARG TARGETARCH\nCOPY a.txt /a.txt\n"
    dest, md = build(daemon, tmp_path, "type=oci", dockerfile=dockerfile, files={"a.txt": "a\n"},
                     extra=("--opt", "platform=linux/amd64,linux/arm64"))
    layout = read_layout(dest)
    assert layout.index["manifests"][0]["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert [m["platform"] for m in layout.top["manifests"]] == \
        [{"architecture": "amd64", "os": "linux"}, {"architecture": "arm64", "os": "linux"}]
    assert [i.config["architecture"] for i in layout.images] == ["amd64", "arm64"]
    assert md["containerimage.digest"] == layout.index["manifests"][0]["digest"]
    assert "containerimage.config.digest" not in md
    skopeo("inspect", "--raw", f"oci-archive:{dest}")

    ctx = tmp_path / "out-ctx"
    res = daemon.client("build", "--frontend", "dockerfile.v0", "--local", f"context={ctx}",
                        "--local", f"dockerfile={ctx}", "--opt", "platform=linux/amd64,linux/arm64",
                        "--output", f"type=docker,dest={tmp_path}/d.tar", check=False)
    assert res.returncode != 0
    assert "does not currently support exporting manifest lists" in res.stderr.decode()
    assert daemon.alive()


def test_bad_options_are_clear_errors(daemon, tmp_path):
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text("FROM scratch\n")
    for output, message in (("type=oci,compression=lz4", "unsupported layer compression 'lz4'"),
                            ("type=oci,compression-level=x", "invalid compression-level"),
                            ("type=oci,compression=gzip,compression-level=12", "out of range"),
                            ("type=oci,oci-mediatypes=maybe", "invalid boolean value"),
                            ("type=docker,name=UPPER/Case", "invalid image name"),
                            ("type=docker,compression=zstd", 'conflicts with "oci-mediatypes=false"')):
        res = daemon.client("build", "--frontend", "dockerfile.v0", "--local", f"context={tmp_path}/ctx",
                            "--local", f"dockerfile={tmp_path}/ctx", "--output",
                            f"{output},dest={tmp_path}/x.tar", check=False)
        assert res.returncode != 0, output
        assert message in res.stderr.decode(), (output, res.stderr.decode())
    assert daemon.alive()


def test_base_layers_are_reused_from_the_registry(daemon, tmp_path, base_registry):
    req = urllib.request.Request(f"{base_registry.base}/v2/test/busybox/manifests/latest",
                                 headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    with urllib.request.urlopen(req) as r:
        base_manifest = json.loads(r.read())
    (base_layer,) = base_manifest["layers"]
    dockerfile = f"FROM {base_registry.host}/test/busybox\nCOPY a.txt /a.txt\n"

    dest, _ = build(daemon, tmp_path, "type=oci", dockerfile=dockerfile, files={"a.txt": "a\n"}, name="reuse")
    image = read_layout(dest).image
    assert image.manifest["layers"][0]["digest"] == base_layer["digest"]
    assert image.manifest["layers"][0]["size"] == base_layer["size"]
    assert image.layer_names(1) == ["a.txt"]
    assert image.config["config"]["Cmd"] == ["sh"]

    # asked for zstd without force: the base keeps its gzip blob (as BuildKit does) ...
    dest, _ = build(daemon, tmp_path, "type=oci,compression=zstd", dockerfile=dockerfile,
                    files={"a.txt": "a\n"}, name="mixed")
    image = read_layout(dest).image
    assert image.manifest["layers"][0]["digest"] == base_layer["digest"]
    assert image.manifest["layers"][1]["mediaType"].endswith("zstd")
    # ... and with force-compression it is recompressed
    dest, _ = build(daemon, tmp_path, "type=oci,compression=zstd,force-compression=true",
                    dockerfile=dockerfile, files={"a.txt": "a\n"}, name="forced")
    image = read_layout(dest).image
    assert image.manifest["layers"][0]["digest"] != base_layer["digest"]
    assert image.manifest["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
    skopeo("inspect", f"oci-archive:{dest}")


def test_large_layer_in_parallel_blocks(daemon, tmp_path):
    """A layer of several gzip blocks (compressed on all cores) in an archive sent in chunks: the
    blob is the block format of its tar whatever the daemon's thread count, and Go's gzip reader
    (skopeo decompressing every layer) takes it."""
    from buildkitpy.image import compression as comp

    text = "".join(f"line {i} {i * 7919 % 100003}\n" for i in range(400_000))  # ~6 MB
    dest, _ = build(daemon, tmp_path, "type=oci", dockerfile="FROM scratch\nCOPY big.txt /big.txt\n",
                    files={"big.txt": text})
    image = read_layout(dest).image
    raw = image.layers[0]
    assert len(raw) > 4 * comp.GZIP_BLOCK
    c = comp.new_compressor(comp.CompressionConfig("gzip"), threads=1)
    blob = read_layout(dest).files["blobs/sha256/" + image.manifest["layers"][0]["digest"][7:]]
    assert blob == c.compress(raw) + c.flush()
    assert image.layer_members(0)["big.txt"].size == len(text)
    skopeo("copy", "--dest-decompress", f"oci-archive:{dest}", f"dir:{tmp_path / 'copied'}")
    layer = tmp_path / "copied" / image.config["rootfs"]["diff_ids"][0][7:]  # stored decompressed
    assert layer.read_bytes() == raw


def test_client_exports_show_progress_as_buildkit_does(daemon, tmp_path):
    # buildctl shows "#N exporting to client tarball" with "sending tarball" as its status line, and
    # "#N exporting to client directory" with "copying files <size>".
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY a.txt /a.txt\n")
    (ctx / "a.txt").write_text("x" * 3000)
    cases = (("type=tar,dest=out.tar", "exporting to client tarball", "sending tarball"),
             ("type=local,dest=out", "exporting to client directory", "copying files 3.00kB"))
    for output, vertex_name, status in cases:
        res = daemon.client("build", "--progress", "plain", "--frontend", "dockerfile.v0",
                            "--local", f"context={ctx}", "--local", f"dockerfile={ctx}",
                            "--output", output.replace("dest=", f"dest={tmp_path}/"))
        lines = res.stderr.decode().splitlines()
        vertex = next(line.split()[0] for line in lines if line.endswith(" " + vertex_name))
        assert any(line.startswith(f"{vertex} {status} ") and line.endswith(" done") for line in lines), lines
        assert f"{vertex} DONE" in " ".join(lines), lines
