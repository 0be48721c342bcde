"""ImagePusher against real docker-registry instances: plain HTTP, token auth, TLS with a custom CA."""

from __future__ import annotations

import json
import os
import subprocess

import anyio
import pytest
from image.registryfixture import free_port

from buildkitpy.content.store import ContentStore
from buildkitpy.errors import NotFound
from buildkitpy.image.hosts import HostSettings
from buildkitpy.image.push import ImagePusher, push_image, push_registries
from buildkitpy.image.reference import Reference, parse_reference
from buildkitpy.image.registry import (
    Descriptor,
    RegistryClient,
    RegistryError,
    RegistryNotFound,
    RegistryUnauthorized,
)

from .conftest import make_image, make_index
from .registries import SERVICE, PushRegistry

pytestmark = pytest.mark.anyio


def creds(username: str, secret: str):
    async def credentials(host: str) -> tuple[str, str]:
        return username, secret
    return credentials


async def pull_back(client: RegistryClient, ref: Reference, store: ContentStore,
                    root: Descriptor) -> None:
    """The registry serves exactly the bytes of ``root`` and of everything under it."""
    desc, data = await client.get_manifest(ref)
    assert desc.digest == root.digest
    assert data == store.read(root.digest)
    doc = json.loads(data)
    manifests = [Descriptor.from_json(m, "index") for m in doc.get("manifests", [])] or [root]
    for m in manifests:
        mdesc, mdata = await client.get_manifest(ref, m.digest)
        assert mdata == store.read(m.digest)
        mdoc = json.loads(mdata)
        for blob in [mdoc["config"], *mdoc["layers"]]:
            bdesc = Descriptor.from_json(blob, "manifest")
            assert await client.get_blob_bytes(ref, bdesc) == store.read(bdesc.digest)


def layer(tag: bytes, size: int = 200_000) -> bytes:
    return tag + os.urandom(size)


async def test_push_roundtrip_existing_and_mount(plain_registry: PushRegistry, store: ContentStore):
    root = make_image(store, [layer(b"a"), layer(b"b")])
    client = RegistryClient()
    ref = parse_reference(f"{plain_registry.host}/push/basic:v1")
    first = await ImagePusher(client, store).push(ref, root)
    assert len(first.uploaded) == 3 and first.bytes_uploaded > 400_000  # two layers + config
    await pull_back(client, ref, store, root)

    again = await ImagePusher(client, store).push(ref, root)
    assert again.uploaded == [] and sorted(again.existing) == sorted(first.uploaded)

    # Another repository of the same registry: the blobs are mounted, not sent again.
    other = parse_reference(f"{plain_registry.host}/push/other:v2")
    mounted = await ImagePusher(client, store).push(other, root)
    assert mounted.uploaded == [] and sorted(mounted.mounted) == sorted(first.uploaded)
    await pull_back(client, other, store, root)


async def test_push_several_names_and_progress(plain_registry: PushRegistry, store: ContentStore):
    root = make_image(store, [layer(b"n", 50_000)], media_types="docker")
    refs = [parse_reference(f"{plain_registry.host}/push/names:{t}") for t in ("one", "two")]
    events: list[tuple[str, int, int, bool]] = []
    results = await push_image(RegistryClient(), store, refs, root, progress=lambda *e: events.append(e))
    assert [r.digest for r in results] == [root.digest] * 2
    assert results[1].uploaded == []
    for ref in refs:
        desc, _ = await RegistryClient().get_manifest(ref)
        assert desc.digest == root.digest and desc.media_type == root.media_type
    finished = {e[0] for e in events if e[3]}
    layer_digest = json.loads(store.read(root.digest))["layers"][0]["digest"]
    assert layer_digest in finished


async def test_chunked_upload(plain_registry: PushRegistry, store: ContentStore):
    root = make_image(store, [layer(b"c", 1_000_000)])
    client = RegistryClient()
    ref = parse_reference(f"{plain_registry.host}/push/chunked:latest")
    result = await ImagePusher(client, store, chunk_size=300_000).push(ref, root)
    assert len(result.uploaded) == 2
    await pull_back(client, ref, store, root)


async def test_push_index(plain_registry: PushRegistry, store: ContentStore):
    amd = make_image(store, [layer(b"amd", 1000)], arch="amd64")
    arm = make_image(store, [layer(b"arm", 1000)], arch="arm64")
    root = make_index(store, [amd, arm])
    client = RegistryClient()
    ref = parse_reference(f"{plain_registry.host}/push/multi:latest")
    await ImagePusher(client, store).push(ref, root)
    await pull_back(client, ref, store, root)


async def test_push_by_digest_reference(plain_registry: PushRegistry, store: ContentStore):
    root = make_image(store, [layer(b"d", 1000)])
    client = RegistryClient()
    ref = parse_reference(f"{plain_registry.host}/push/bydigest@{root.digest}")
    await ImagePusher(client, store).push(ref, root)
    desc, _ = await client.get_manifest(ref)
    assert desc.digest == root.digest
    wrong = parse_reference(f"{plain_registry.host}/push/bydigest@sha256:{'0' * 64}")
    with pytest.raises(Exception, match="names another digest"):
        await ImagePusher(client, store).push(wrong, root)


async def test_missing_blob_fails_before_sending(plain_registry: PushRegistry, store: ContentStore):
    root = make_image(store, [layer(b"m", 1000)])
    layer_digest = json.loads(store.read(root.digest))["layers"][0]["digest"]
    store.delete(layer_digest)
    ref = parse_reference(f"{plain_registry.host}/push/missing:latest")
    with pytest.raises(NotFound, match=layer_digest):
        await ImagePusher(RegistryClient(), store).push(ref, root)
    with pytest.raises(RegistryNotFound):  # nothing was pushed
        await RegistryClient().get_manifest(ref)


async def test_unreachable_registry_names_host(store: ContentStore):
    root = make_image(store, [layer(b"u", 100)])
    host = f"127.0.0.1:{free_port()}"
    with pytest.raises(RegistryError, match=host.replace(".", r"\.")):
        await ImagePusher(RegistryClient(timeout=5), store).push(parse_reference(f"{host}/x/y:z"), root)


async def test_skopeo_accepts_pushed_image(plain_registry: PushRegistry, store: ContentStore, tmp_path):
    root = make_image(store, [layer(b"s", 5000)])
    ref = f"{plain_registry.host}/push/skopeo:v1"
    await ImagePusher(RegistryClient(), store).push(parse_reference(ref), root)

    def skopeo(*args: str) -> str:
        res = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        return res.stdout

    info = json.loads(await anyio.to_thread.run_sync(skopeo, "inspect", "--tls-verify=false",
                                                     f"docker://{ref}"))
    assert info["Digest"] == root.digest and len(info["Layers"]) == 1
    await anyio.to_thread.run_sync(skopeo, "copy", "--src-tls-verify=false", f"docker://{ref}",
                                   f"dir:{tmp_path / 'copy'}")
    assert (tmp_path / "copy" / "manifest.json").read_bytes() == store.read(root.digest)


# ----------------------------------------------------------------- token auth


async def test_token_auth_push_with_basic_credentials(token_registry: PushRegistry, store: ContentStore):
    root = make_image(store, [layer(b"t", 10_000)])
    client = RegistryClient(credentials=creds("alice", "s3cret"))
    ref = parse_reference(f"{token_registry.host}/team/lib:v1")
    await ImagePusher(client, store).push(ref, root)
    await pull_back(client, ref, store, root)
    asked = [r for r in token_registry.token_server.requests if r.get("user") == "alice"]
    assert asked and all(r.get("service") == SERVICE for r in asked if not r.get("denied"))
    assert any("repository:team/lib:pull,push" in " ".join(r.get("scopes", [])) for r in asked)


async def test_token_auth_refresh_token(token_registry: PushRegistry, store: ContentStore):
    root = make_image(store, [layer(b"r", 1000)])
    client = RegistryClient(credentials=creds("", "refresh-abc"))
    ref = parse_reference(f"{token_registry.host}/team/refresh:v1")
    await ImagePusher(client, store).push(ref, root)
    assert any(r["method"] == "POST" and r["user"] == "alice" for r in token_registry.token_server.requests)
    desc, _ = await client.get_manifest(ref)
    assert desc.digest == root.digest


async def test_token_auth_failures_name_the_host(token_registry: PushRegistry, store: ContentStore):
    root = make_image(store, [layer(b"f", 1000)])
    ref = parse_reference(f"{token_registry.host}/team/denied:v1")
    with pytest.raises(RegistryUnauthorized, match="refused the credentials"):
        await ImagePusher(RegistryClient(credentials=creds("alice", "wrong")), store).push(ref, root)
    with pytest.raises(RegistryUnauthorized, match=token_registry.host.replace(".", r"\.")):
        await ImagePusher(RegistryClient(), store).push(ref, root)  # anonymous: a token without access


# ----------------------------------------------------------------- TLS


async def test_tls_registry_with_custom_ca(tls_registry: PushRegistry, store: ContentStore):
    root = make_image(store, [layer(b"tls", 10_000)])
    ref = parse_reference(f"{tls_registry.host}/secure/app:v1")
    with_ca = {tls_registry.host: HostSettings(http=False, ca=[str(tls_registry.ca)])}
    client = RegistryClient(with_ca)
    await ImagePusher(client, store).push(ref, root)
    await pull_back(client, ref, store, root)

    untrusted = RegistryClient({tls_registry.host: HostSettings(http=False)}, timeout=10)
    with pytest.raises(RegistryError, match=r"(?i)certificate verify failed") as err:
        await ImagePusher(untrusted, store).push(ref, root)
    assert tls_registry.host in str(err.value)

    # registry.insecure: TLS without verification.
    insecure = RegistryClient(push_registries({tls_registry.host: HostSettings(http=False)}, [ref],
                                              insecure=True))
    result = await ImagePusher(insecure, store).push(ref, root)
    assert result.uploaded == []


async def test_insecure_falls_back_to_plain_http(plain_registry: PushRegistry, store: ContentStore):
    root = make_image(store, [layer(b"h", 1000)])
    ref = parse_reference(f"{plain_registry.host}/push/insecure:v1")
    registries = push_registries({plain_registry.host: HostSettings(http=False)}, [ref], insecure=True)
    await ImagePusher(RegistryClient(registries), store).push(ref, root)
    desc, _ = await RegistryClient().get_manifest(ref)
    assert desc.digest == root.digest


def test_push_registries_drop_mirrors_for_targets():
    ref = parse_reference("example.com/a/b:c")
    regs = {"example.com": HostSettings(mirrors=["mirror.local"], ca=["/ca.pem"]),
            "other.com": HostSettings(mirrors=["m2"])}
    out = push_registries(regs, [ref])
    assert out["example.com"].mirrors == [] and out["example.com"].ca == ["/ca.pem"]
    assert out["other.com"].mirrors == ["m2"]


async def test_pulled_blob_is_mounted_from_its_source_repository(plain_registry: PushRegistry,
                                                                 store: ContentStore, tmp_path):
    """A blob the content store got by pulling ``<host>/<repo>`` is mounted from there, not re-sent."""
    from image.registryfixture import TarBuilder

    from buildkitpy.image.pull import ImagePuller
    from buildkitpy.image.resolve import resolve_image
    from buildkitpy.snapshot.manager import OverlaySnapshotManager

    if os.geteuid() != 0:
        pytest.skip("pulling unpacks into overlay snapshots (root)")
    base = TarBuilder().add("base.txt", data=os.urandom(4000)).bytes()
    plain_registry.push_image("push/pulled-base", "latest", [(base, "gzip")])
    client = RegistryClient()
    snapshots = OverlaySnapshotManager(tmp_path / "state")
    try:
        base_ref = parse_reference(f"{plain_registry.host}/push/pulled-base")
        resolved = await resolve_image(client, store, base_ref)
        pulled = await ImagePuller(tmp_path / "state", store, snapshots).pull(client, resolved)
        pulled.snapshot.release()
    finally:
        snapshots.close()
    base_layer = resolved.layers[0]
    manifest = json.loads(store.read(make_image(store, [layer(b"top", 1000)]).digest))
    manifest["layers"].insert(0, {"mediaType": base_layer.media_type, "digest": base_layer.digest,
                                  "size": base_layer.size})
    data = json.dumps(manifest).encode()
    root = Descriptor(manifest["mediaType"], store.write_bytes(data), len(data))
    result = await ImagePusher(client, store).push(parse_reference(f"{plain_registry.host}/push/derived:v1"),
                                                   root)
    assert result.mounted == [base_layer.digest]
    await pull_back(client, parse_reference(f"{plain_registry.host}/push/derived:v1"), store, root)
