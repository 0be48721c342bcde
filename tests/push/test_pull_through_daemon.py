"""Pulls through a real daemon and our CLI with a Dockerfile ``FROM``: bearer-token auth with
credentials from the client session, TLS with a CA from the daemon config, resolve modes,
image names recorded by the image exporter, and pull progress in ``--progress rawjson``."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

from image.registryfixture import TarBuilder, sha256

from .test_image_exporter import daemon_blob, docker_config, dockerfile_build


def unique_layer(text: str) -> bytes:
    """A layer no other test pushes (so the daemon has not seen its blob)."""
    return TarBuilder().add("version", data=f"{text}\n".encode()).add(
        "nonce", data=uuid.uuid4().hex.encode()).bytes()


def build_from(daemon, tmp_path: Path, base: str, *opts: str, check: bool = True):
    """``FROM base`` + a COPY, exported as a local directory; returns (result, dest)."""
    ctx = tmp_path / f"ctx-{uuid.uuid4().hex[:8]}"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {base}\nCOPY added.txt /\n")
    (ctx / "added.txt").write_text("added\n")
    dest = ctx.with_suffix(".out")
    args = ["build", "--progress", "plain", "--frontend", "dockerfile.v0", "--local", f"context={ctx}",
            "--local", f"dockerfile={ctx}", "--output", f"type=local,dest={dest}"]
    for opt in opts:
        args += ["--opt", opt]
    return daemon.client(*args, check=check), dest


def test_bearer_token_pull_with_session_credentials(daemon, token_registry, tmp_path, monkeypatch):
    base = f"{token_registry.host}/team/base:v1"
    monkeypatch.setenv("DOCKER_CONFIG", str(docker_config(tmp_path, token_registry.host, "alice", "s3cret")))
    dockerfile_build(daemon, tmp_path, "FROM scratch\nCOPY a.txt /\n", f"type=image,name={base},push=true",
                     files={"a.txt": "private base\n"})
    before = len(token_registry.token_server.requests)
    _, dest = build_from(daemon, tmp_path, base)
    assert (dest / "a.txt").read_text() == "private base\n" and (dest / "added.txt").exists()
    pulls = token_registry.token_server.requests[before:]
    assert any(r.get("user") == "alice" and "repository:team/base:pull" in r.get("scopes", [])
               for r in pulls), pulls

    # Without credentials the registry refuses, and what alice pulled is not handed out instead.
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-config"))
    res, _ = build_from(daemon, tmp_path, base, check=False)
    err = res.stderr.decode()
    assert res.returncode != 0 and token_registry.host in err and "team/base" in err, err
    monkeypatch.setenv("DOCKER_CONFIG", str(docker_config(tmp_path, token_registry.host, "alice", "nope")))
    res, _ = build_from(daemon, tmp_path, base, check=False)
    assert res.returncode != 0 and "refused the credentials" in res.stderr.decode()
    assert daemon.alive()


def test_tls_registry_pull_with_ca_from_daemon_config(make_daemon, tls_registry, tmp_path):
    config = tmp_path / "buildkitd.toml"
    config.write_text(f'[registry."{tls_registry.host}"]\nhttp = false\nca = ["{tls_registry.ca}"]\n')
    d = make_daemon("--config", str(config))
    base = f"{tls_registry.host}/secure/base:v1"
    dockerfile_build(d, tmp_path, "FROM scratch\nCOPY a.txt /\n", f"type=image,name={base},push=true",
                     files={"a.txt": "over tls\n"})
    other = make_daemon("--config", str(config))  # a fresh daemon: nothing of the image is local
    _, dest = build_from(other, tmp_path, base)
    assert (dest / "a.txt").read_text() == "over tls\n"

    # Without the CA the certificate is refused (loopback is tried over plain HTTP, then TLS fails).
    plain = make_daemon()
    res, _ = build_from(plain, tmp_path, base, check=False)
    assert res.returncode != 0 and tls_registry.host in res.stderr.decode()


def test_dockerfile_image_resolve_mode(daemon, plain_registry, tmp_path):
    repo = f"modes/{uuid.uuid4().hex[:8]}"
    base = f"{plain_registry.host}/{repo}:latest"
    plain_registry.push_image(repo, "latest", [(unique_layer("v1"), "gzip")])
    _, dest = build_from(daemon, tmp_path, base)
    assert (dest / "version").read_text() == "v1\n"
    plain_registry.push_image(repo, "latest", [(unique_layer("v2"), "gzip")])
    _, dest = build_from(daemon, tmp_path, base, "image-resolve-mode=local")
    assert (dest / "version").read_text() == "v1\n"  # what the tag last resolved to here
    _, dest = build_from(daemon, tmp_path, base, "image-resolve-mode=pull")
    assert (dest / "version").read_text() == "v2\n"
    _, dest = build_from(daemon, tmp_path, base)
    assert (dest / "version").read_text() == "v2\n"
    res, _ = build_from(daemon, tmp_path, base, "image-resolve-mode=sometimes", check=False)
    assert res.returncode != 0 and "image-resolve-mode" in res.stderr.decode()


def _image_refs(daemon) -> dict[str, str]:
    (db,) = daemon.root.glob("state/**/image/chains.db")
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT name, digest FROM image_refs WHERE platform=''").fetchall())


def test_exported_names_are_local_images_and_name_canonical(daemon, tmp_path):
    tag = uuid.uuid4().hex[:8]
    name = f"registry.invalid/local/app:{tag}"  # never resolvable: only the local record can serve it
    _, meta = dockerfile_build(daemon, tmp_path, "FROM scratch\nCOPY a.txt /\n",
                               f"type=image,name={name},name-canonical=true", files={"a.txt": "named\n"})
    digest = meta["containerimage.digest"]
    assert meta["image.name"] == name  # the canonical name is an extra record, not a reported name
    refs = _image_refs(daemon)
    assert refs[name] == digest and refs[f"{name}@{digest}"] == digest

    for opts in (("image-resolve-mode=local",), ()):  # default falls back when the registry fails
        _, dest = build_from(daemon, tmp_path, name, *opts)
        assert (dest / "a.txt").read_text() == "named\n"
    res, _ = build_from(daemon, tmp_path, name, "image-resolve-mode=pull", check=False)
    assert res.returncode != 0 and "registry.invalid" in res.stderr.decode()

    # Without name-canonical only the name; with store=false no record at all.
    other = f"registry.invalid/local/other:{tag}"
    dockerfile_build(daemon, tmp_path, "FROM scratch\nCOPY a.txt /\n", f"type=image,name={other}",
                     files={"a.txt": "x\n"})
    unstored = f"registry.invalid/local/unstored:{tag}"
    dockerfile_build(daemon, tmp_path, "FROM scratch\nCOPY a.txt /\n",
                     f"type=image,name={unstored},store=false", files={"a.txt": "y\n"})
    refs = _image_refs(daemon)
    assert other in refs and not any(k.startswith(f"{other}@") for k in refs) and unstored not in refs


def test_pull_progress_in_rawjson(daemon, plain_registry, tmp_path):
    repo = f"progress/{uuid.uuid4().hex[:8]}"
    layer = unique_layer("progress") + b"\0" * (3 << 20)  # tar padding: a few MiB to download
    plain_registry.push_image(repo, "latest", [(layer, "none")])
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {plain_registry.host}/{repo}\n")
    res = daemon.client("build", "--progress", "rawjson", "--frontend", "dockerfile.v0", "--local",
                        f"context={ctx}", "--local", f"dockerfile={ctx}", "--output",
                        f"type=local,dest={tmp_path / 'out'}")
    statuses = [s for line in res.stderr.decode().splitlines() if line.startswith("{")
                for s in json.loads(line).get("statuses") or []]
    blob = [s for s in statuses if s["id"].startswith("sha256:")]
    assert blob, statuses
    total = blob[-1]["total"]
    assert total == len(layer) and all(s["total"] == total for s in blob)
    assert blob[-1]["current"] == total and "completed" in blob[-1]
    assert any(s["id"] == f"extracting {blob[-1]['id']}" and "completed" in s for s in statuses)
    assert (tmp_path / "out" / "version").read_text() == "progress\n"


def _blobs(daemon) -> set[str]:
    return {"sha256:" + p.name for p in daemon.root.glob("state/**/content/blobs/sha256/*")}


def test_prune_collects_pulled_layers_and_keeps_named_images(make_daemon, plain_registry, tmp_path):
    d = make_daemon()
    repo = f"prune/{uuid.uuid4().hex[:8]}"
    layer = unique_layer("pruned")
    plain_registry.push_image(repo, "latest", [(layer, "none")])
    layer_digest = sha256(layer)
    manifest_digest = plain_registry.pushed[f"{repo}:latest"]
    _, dest = build_from(d, tmp_path, f"{plain_registry.host}/{repo}")
    assert (dest / "version").read_text() == "pruned\n"
    _, meta = dockerfile_build(d, tmp_path, "FROM scratch\nCOPY a.txt /\n",
                               "type=image,name=registry.invalid/kept/app:v1", files={"a.txt": "kept\n"})
    named = json.loads(daemon_blob(d, meta["containerimage.digest"]))
    named_blobs = {meta["containerimage.digest"], named["config"]["digest"],
                   *(entry["digest"] for entry in named["layers"])}
    before = _blobs(d)
    assert layer_digest in before and manifest_digest in before and named_blobs <= before

    d.client("prune", "--all")
    after = _blobs(d)
    assert layer_digest not in after  # its snapshot was pruned: nothing needs the blob
    assert manifest_digest in after  # what the tag resolved to stays (local resolve mode)
    assert named_blobs <= after  # a named image keeps everything
    # The named image still builds, without a registry.
    _, dest = build_from(d, tmp_path, "registry.invalid/kept/app:v1", "image-resolve-mode=local")
    assert (dest / "a.txt").read_text() == "kept\n"
    assert d.alive()
