"""``--output type=image,...,push=true`` through a real daemon and our CLI, to real registries."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import anyio
import pytest
from image.registryfixture import busybox_rootfs

from buildkitpy.image.hosts import HostSettings
from buildkitpy.image.reference import parse_reference
from buildkitpy.image.registry import Descriptor, RegistryClient

from .registries import PushRegistry

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runc, overlayfs)")


@pytest.fixture(scope="module")
def base_image(plain_registry: PushRegistry) -> str:
    """A busybox image in the plain registry to build FROM."""
    plain_registry.push_image("base/busybox", "latest", [(busybox_rootfs(), "gzip")])
    return f"{plain_registry.host}/base/busybox:latest"


def dockerfile_build(daemon, tmp_path: Path, dockerfile: str, output: str, *, check: bool = True,
                     files: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    ctx = tmp_path / f"ctx{len(list(tmp_path.glob('ctx*')))}"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(dockerfile)
    for name, text in (files or {}).items():
        (ctx / name).write_text(text)
    meta = ctx.with_suffix(".json")
    res = daemon.client("build", "--progress", "plain", "--frontend", "dockerfile.v0",
                        "--local", f"context={ctx}", "--local", f"dockerfile={ctx}",
                        "--output", output, "--metadata-file", str(meta), check=check)
    return res, (json.loads(meta.read_text()) if meta.exists() and meta.stat().st_size else {})


def daemon_blob(daemon, digest: str) -> bytes:
    found = list(daemon.root.glob(f"state/**/content/blobs/sha256/{digest[7:]}"))
    assert found, f"{digest} is not in the daemon's content store"
    return found[0].read_bytes()


async def fetch_image(client: RegistryClient, ref: str) -> tuple[Descriptor, bytes, dict, list[bytes]]:
    """(manifest descriptor, manifest bytes, config, layer blobs) as the registry serves them."""
    r = parse_reference(ref)
    desc, data = await client.get_manifest(r)
    manifest = json.loads(data)
    config_desc = Descriptor.from_json(manifest["config"], "manifest")
    config = json.loads(await client.get_blob_bytes(r, config_desc))
    layers = [await client.get_blob_bytes(r, Descriptor.from_json(layer, "manifest"), limit=64 << 20)
              for layer in manifest["layers"]]
    return desc, data, config, layers


@needs_root
def test_build_push_pull_back_and_build_from_it(daemon, plain_registry, base_image, tmp_path):
    names = [f"{plain_registry.host}/test/app:v1", f"{plain_registry.host}/test/app-copy:latest"]
    res, meta = dockerfile_build(
        daemon, tmp_path,
        f"FROM {base_image}\nRUN echo built > /built.txt\nCOPY a.txt /a.txt\n",
        f'type=image,"name={",".join(names)}",push=true', files={"a.txt": "from the context\n"})
    log = res.stderr.decode()
    assert "exporting to image" in log and f"pushing manifest for {names[0]}" in log, log
    assert " exporting layers" in log, log  # one status for all layers, as BuildKit shows it
    digest = meta["containerimage.digest"]
    # As buildctl shows BuildKit's push: one "pushing layers", then the manifest by name and digest.
    assert f"pushing manifest for {names[0]}@{digest}" in log and " pushing layers" in log, log
    assert meta["image.name"] == ",".join(names)
    top = meta["containerimage.descriptor"]  # the CLI inlines base64 JSON values, as buildctl does
    assert top["digest"] == digest

    client = RegistryClient()
    for name in names:
        desc, data, config, layers = anyio.run(fetch_image, client, name)
        assert desc.digest == digest
        # What the registry serves is byte for byte what the daemon assembled.
        assert data == daemon_blob(daemon, digest)
        manifest = json.loads(data)
        assert manifest["config"]["digest"] == meta["containerimage.config.digest"]
        for layer_desc, blob in zip(manifest["layers"], layers, strict=True):
            assert daemon_blob(daemon, layer_desc["digest"]) == blob
        assert len(layers) == 3 and len(config["rootfs"]["diff_ids"]) == 3
        assert any("RUN /bin/sh -c echo built" in h.get("created_by", "") for h in config["history"])
    base_manifest = json.loads(anyio.run(fetch_image, client, base_image)[1])
    assert manifest["layers"][0]["digest"] == base_manifest["layers"][0]["digest"]  # reused, not redone

    out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{names[0]}"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["Digest"] == digest
    copied = tmp_path / "skopeo-copy"
    out = subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{names[0]}",
                          f"dir:{copied}"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr

    # The pushed image is a working base image.
    dest = tmp_path / "out"
    dockerfile_build(daemon, tmp_path, f"FROM {names[1]}\nRUN cat /built.txt /a.txt > /both.txt\n",
                     f"type=local,dest={dest}")
    assert (dest / "both.txt").read_text() == "built\nfrom the context\n"


def test_bad_options_fail_clearly(daemon, plain_registry, tmp_path):
    res, _ = dockerfile_build(daemon, tmp_path, "FROM scratch\nCOPY a.txt /\n",
                              f"type=image,name={plain_registry.host}/x/y,push=maybe",
                              files={"a.txt": "a"}, check=False)
    assert res.returncode != 0 and "non-bool value 'maybe' specified for push" in res.stderr.decode()
    res, _ = dockerfile_build(daemon, tmp_path, "FROM scratch\nCOPY a.txt /\n",
                              "type=image,name=UPPER/Case:tag,push=true", files={"a.txt": "a"}, check=False)
    assert res.returncode != 0 and "invalid image name 'UPPER/Case:tag'" in res.stderr.decode()
    res, _ = dockerfile_build(daemon, tmp_path, "FROM scratch\nCOPY a.txt /\n", "type=image,push=true",
                              files={"a.txt": "a"}, check=False)
    assert res.returncode != 0 and "push=true needs an image name" in res.stderr.decode()
    assert daemon.alive()


def test_image_without_push_reports_digest(daemon, plain_registry, tmp_path):
    name = f"{plain_registry.host}/test/notpushed:v1"
    _, meta = dockerfile_build(daemon, tmp_path, "FROM scratch\nCOPY a.txt /\n",
                               f"type=image,name={name},unpack=true,store=true,name-canonical=true",
                               files={"a.txt": "not pushed"})
    assert meta["image.name"] == name
    assert json.loads(daemon_blob(daemon, meta["containerimage.digest"]))["config"]["digest"] == \
        meta["containerimage.config.digest"]
    with pytest.raises(Exception, match="not found"):
        anyio.run(RegistryClient().get_manifest, parse_reference(name))


def test_unreachable_registry_names_host(daemon, tmp_path):
    from image.registryfixture import free_port

    host = f"127.0.0.1:{free_port()}"
    res, _ = dockerfile_build(daemon, tmp_path, "FROM scratch\nCOPY a.txt /\n",
                              f"type=image,name={host}/x/y:z,push=true", files={"a.txt": "a"}, check=False)
    err = res.stderr.decode()
    assert res.returncode != 0 and f"failed to push {host}/x/y:z" in err, err
    assert "connection refused" in err.lower(), err
    assert daemon.alive()


def docker_config(tmp_path: Path, host: str, user: str, password: str) -> Path:
    d = tmp_path / "docker-config"
    d.mkdir(exist_ok=True)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (d / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return d


def test_token_auth_push_with_session_credentials(daemon, token_registry, tmp_path, monkeypatch):
    name = f"{token_registry.host}/team/app:v1"
    build = ("FROM scratch\nCOPY a.txt /\n", f"type=image,name={name},push=true")

    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "empty-config"))
    res, _ = dockerfile_build(daemon, tmp_path, *build, files={"a.txt": "secret"}, check=False)
    err = res.stderr.decode()
    assert res.returncode != 0 and token_registry.host in err and "access denied" in err, err

    monkeypatch.setenv("DOCKER_CONFIG", str(docker_config(tmp_path, token_registry.host, "alice", "wrong")))
    res, _ = dockerfile_build(daemon, tmp_path, *build, files={"a.txt": "secret"}, check=False)
    assert res.returncode != 0 and "refused the credentials" in res.stderr.decode()

    monkeypatch.setenv("DOCKER_CONFIG", str(docker_config(tmp_path, token_registry.host, "alice", "s3cret")))
    _, meta = dockerfile_build(daemon, tmp_path, *build, files={"a.txt": "secret"})
    requests = token_registry.token_server.requests
    assert any(r.get("user") == "alice" and "repository:team/app:pull,push" in " ".join(r.get("scopes", []))
               for r in requests)

    async def creds(host: str) -> tuple[str, str]:
        return "alice", "s3cret"

    desc, _ = anyio.run(RegistryClient(credentials=creds).get_manifest, parse_reference(name))
    assert desc.digest == meta["containerimage.digest"]
    assert daemon.alive()


def test_tls_registry_with_ca_from_daemon_config(make_daemon, tls_registry, tmp_path):
    config = tmp_path / "buildkitd.toml"
    config.write_text(f'[registry."{tls_registry.host}"]\nhttp = false\nca = ["{tls_registry.ca}"]\n')
    d = make_daemon("--config", str(config))
    name = f"{tls_registry.host}/secure/app:v1"
    _, meta = dockerfile_build(d, tmp_path, "FROM scratch\nCOPY a.txt /\n",
                               f"type=image,name={name},push=true", files={"a.txt": "over tls"})
    client = RegistryClient({tls_registry.host: HostSettings(http=False, ca=[str(tls_registry.ca)])})
    desc, _ = anyio.run(client.get_manifest, parse_reference(name))
    assert desc.digest == meta["containerimage.digest"]

    # Without the CA the daemon refuses the certificate, and says so.
    plain = make_daemon()
    res, _ = dockerfile_build(plain, tmp_path, "FROM scratch\nCOPY a.txt /\n",
                              f"type=image,name={tls_registry.host}/secure/other:v1,push=true",
                              files={"a.txt": "x"}, check=False)
    assert res.returncode != 0
    assert f"failed to push {tls_registry.host}/secure/other:v1" in res.stderr.decode()
    # Loopback defaults to plain HTTP, which a TLS server answers with 400; with registry.insecure the
    # push goes over TLS without verification.
    _, meta2 = dockerfile_build(plain, tmp_path, "FROM scratch\nCOPY a.txt /\n",
                                f"type=image,name={tls_registry.host}/secure/other:v1,push=true,"
                                "registry.insecure=true", files={"a.txt": "x"})
    desc, _ = anyio.run(client.get_manifest, parse_reference(f"{tls_registry.host}/secure/other:v1"))
    assert desc.digest == meta2["containerimage.digest"]


def test_push_by_digest_and_annotations(daemon, plain_registry, tmp_path):
    name = f"{plain_registry.host}/test/bydigest"
    _, meta = dockerfile_build(daemon, tmp_path, "FROM scratch\nCOPY a.txt /\n",
                               f"type=image,name={name},push=true,push-by-digest=true,"
                               "annotation.org.opencontainers.image.title=pushed", files={"a.txt": "d"})
    digest = meta["containerimage.digest"]
    desc, data = anyio.run(RegistryClient().get_manifest, parse_reference(f"{name}@{digest}"))
    assert desc.digest == digest
    assert json.loads(data)["annotations"] == {"org.opencontainers.image.title": "pushed"}
    with pytest.raises(Exception, match="not found"):  # no tag was pushed
        anyio.run(RegistryClient().get_manifest, parse_reference(f"{name}:latest"))
    res, _ = dockerfile_build(daemon, tmp_path, "FROM scratch\nCOPY a.txt /\n",
                              f"type=image,name={name}:v1,push=true,push-by-digest=true",
                              files={"a.txt": "d"}, check=False)
    assert res.returncode != 0 and "can't push tagged ref" in res.stderr.decode()
