"""Resolve and pull real images from a real docker-registry into real snapshots."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import anyio
import pytest

from buildkitpy.content.store import ContentStore
from buildkitpy.errors import NotFound
from buildkitpy.image.platforms import Platform
from buildkitpy.image.pull import ImagePuller, PullResult
from buildkitpy.image.reference import parse_reference
from buildkitpy.image.registry import RegistryClient, RegistryNotFound, RegistryUnauthorized
from buildkitpy.image.resolve import resolve_image
from buildkitpy.snapshot.layer import TRUSTED_OPAQUE_XATTR, is_whiteout

from .registryfixture import BUSYBOX

AMD64 = Platform("linux", "amd64")


def pull(tmp_path: Path, snapshots, ref: str, *, client: RegistryClient | None = None,
         platform: Platform = AMD64, puller: ImagePuller | None = None, progress=None):
    store = ContentStore(tmp_path / "state")
    puller = puller or ImagePuller(tmp_path / "state", store, snapshots)
    client = client or RegistryClient()

    async def go():
        resolved = await resolve_image(client, store, parse_reference(ref), platform)
        return resolved, await puller.pull(client, resolved, progress)

    return anyio.run(go)


def test_pull_single_layer_busybox(tmp_path, snapshots, registry):
    events = []
    resolved, result = pull(tmp_path, snapshots, f"{registry.host}/test/busybox",
                            progress=lambda *e: events.append(e))
    assert resolved.digest == registry.pushed["test/busybox:latest"]
    assert str(resolved.ref) == f"{registry.host}/test/busybox:latest@{resolved.digest}"
    assert resolved.config["architecture"] == "amd64"
    assert len(result.fetched) == 1 and len(result.unpacked) == 1
    with result.snapshot.mount() as root:
        assert (root / "bin/busybox").read_bytes() == BUSYBOX.read_bytes()
        assert os.readlink(root / "bin/sh") == "busybox"
        assert stat.S_IMODE(os.lstat(root / "tmp").st_mode) == 0o1777
        assert (root / "etc/passwd").read_text().startswith("root:x:0:0")
    result.snapshot.release()
    layer_digest = resolved.layers[0].digest
    assert any(e[0] == layer_digest and e[3] for e in events), events
    assert any(e[0] == f"extracting {layer_digest}" and e[3] for e in events), events


def test_whiteouts_opaque_dirs_and_special_files(tmp_path, snapshots, registry):
    resolved, result = pull(tmp_path, snapshots, f"{registry.host}/test/layered:latest")
    assert len(result.unpacked) == 3
    with result.snapshot.mount() as root:
        assert (root / "data/keep").read_text() == "keep\n"
        assert not os.path.lexists(root / "data/gone")
        assert sorted(os.listdir(root / "opq")) == ["c"]  # a and sub/ hidden by the opaque marker
        assert stat.S_IMODE(os.stat(root / "opq").st_mode) == 0o750
        new = os.lstat(root / "data/new")
        assert (new.st_uid, new.st_gid, stat.S_IMODE(new.st_mode)) == (1000, 1000, 0o600)
        assert os.getxattr(root / "data/new", "user.note") == b"hello"
        assert os.lstat(root / "data/link-to-new").st_ino == new.st_ino
        assert os.readlink(root / "data/sym") == "../etc/passwd"
        assert stat.S_ISFIFO(os.lstat(root / "data/fifo").st_mode)
        null = os.lstat(root / "data/null")
        assert stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1 and os.minor(null.st_rdev) == 3
        assert stat.S_IMODE(os.lstat(root / "data/setuid").st_mode) == 0o4755
        assert (root / "data/zstd").read_text() == "zstd layer\n"
        assert not any(n.startswith(".wh.") for _, dirs, files in os.walk(root) for n in dirs + files)
    if snapshots.mode == "overlay":
        # The second layer's own diff dir holds real overlay whiteouts / opaque markers.
        second = result.snapshot.layers()[1]
        assert is_whiteout(os.lstat(second / "data/gone"))
        assert os.getxattr(second / "opq", TRUSTED_OPAQUE_XATTR) == b"y"
    result.snapshot.release()


def test_second_pull_downloads_and_unpacks_nothing(tmp_path, snapshots, registry):
    store = ContentStore(tmp_path / "state")
    puller = ImagePuller(tmp_path / "state", store, snapshots)
    _, first = pull(tmp_path, snapshots, f"{registry.host}/test/layered", puller=puller)
    _, again = pull(tmp_path, snapshots, f"{registry.host}/test/layered", puller=puller)
    assert (again.fetched, again.unpacked) == ([], [])
    assert again.snapshot.id == first.snapshot.id
    # A different image sharing the base layer reuses its snapshot (same chain ID).
    _, base = pull(tmp_path, snapshots, f"{registry.host}/test/busybox", puller=puller)
    assert (base.fetched, base.unpacked) == ([], [])
    shared = puller.lookup_chain(first.chain_ids[0])
    assert shared is not None and base.snapshot.id == shared.id
    shared.release()
    for r in (first, again, base):
        r.snapshot.release()


def test_chain_records_survive_a_new_puller(tmp_path, snapshots, registry):
    _, first = pull(tmp_path, snapshots, f"{registry.host}/test/busybox")
    _, again = pull(tmp_path, snapshots, f"{registry.host}/test/busybox")  # fresh ImagePuller + store
    assert again.unpacked == [] and again.snapshot.id == first.snapshot.id
    first.snapshot.release()
    again.snapshot.release()


def test_digest_pinned_reference_resolves_offline(tmp_path, snapshots, registry):
    digest = registry.pushed["test/busybox:latest"]
    _, first = pull(tmp_path, snapshots, f"{registry.host}/test/busybox@{digest}")
    first.snapshot.release()
    # Nothing listens here any more: everything must come from the content store.
    client = RegistryClient({f"127.0.0.1:{registry.port}": None})
    resolved, again = pull(tmp_path, snapshots, f"127.0.0.1:1/test/busybox@{digest}", client=client)
    assert resolved.digest == digest and again.fetched == []
    again.snapshot.release()


def test_concurrent_pulls_share_downloads(tmp_path, snapshots, registry):
    store = ContentStore(tmp_path / "state")
    puller = ImagePuller(tmp_path / "state", store, snapshots)
    client = RegistryClient()
    results: list[PullResult] = []

    async def one():
        ref = parse_reference(f"{registry.host}/test/layered")
        resolved = await resolve_image(client, store, ref, AMD64)
        results.append(await puller.pull(client, resolved))

    async def main():
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(one)

    anyio.run(main)
    fetched = [d for r in results for d in r.fetched]
    unpacked = [c for r in results for c in r.unpacked]
    assert len(fetched) == len(set(fetched)) == 3
    assert len(unpacked) == len(set(unpacked)) == 3
    assert len({r.snapshot.id for r in results}) == 1
    for r in results:
        r.snapshot.release()


@pytest.mark.parametrize(("wanted", "expected"), [
    (Platform("linux", "amd64"), "amd64\n"),
    (Platform("linux", "arm", "v7"), "armv7\n"),
    (Platform("linux", "arm64"), "armv7\n"),  # arm64 runs arm/v7 when nothing better exists
])
def test_index_platform_selection(tmp_path, snapshots, registry, wanted, expected):
    resolved, result = pull(tmp_path, snapshots, f"{registry.host}/test/multi", platform=wanted)
    assert resolved.digest == registry.pushed["test/multi:latest"]
    assert resolved.manifest_digest != resolved.digest
    with result.snapshot.mount() as root:
        assert (root / "arch").read_text() == expected
    result.snapshot.release()


def test_no_matching_platform_is_a_clear_error(tmp_path, snapshots, registry):
    with pytest.raises(NotFound, match=r"no image for platform linux/s390x "
                                       r"\(available: linux/arm/v7, linux/amd64\)"):
        pull(tmp_path, snapshots, f"{registry.host}/test/multi", platform=Platform("linux", "s390x"))


def test_docker_schema2_media_types(tmp_path, snapshots, registry):
    resolved, result = pull(tmp_path, snapshots, f"{registry.host}/test/docker:v1")
    with result.snapshot.mount() as root:
        assert (root / "data/new").read_text() == "new\n"
        assert not os.path.lexists(root / "data/gone")
    result.snapshot.release()


def test_unknown_repository_and_tag(tmp_path, snapshots, registry):
    with pytest.raises(RegistryNotFound, match="not found"):
        pull(tmp_path, snapshots, f"{registry.host}/test/nothing:latest")
    with pytest.raises(RegistryNotFound):
        pull(tmp_path, snapshots, f"{registry.host}/test/busybox:missing")


def test_basic_auth_with_credentials_callback(tmp_path, snapshots, auth_registry):
    asked = []

    async def creds(host: str) -> tuple[str, str]:
        asked.append(host)
        return "alice", "s3cret"

    resolved, result = pull(tmp_path, snapshots, f"{auth_registry.host}/private/busybox",
                            client=RegistryClient(credentials=creds))
    assert asked == [auth_registry.host]  # asked once, then the authorization is reused
    assert resolved.digest == auth_registry.pushed["private/busybox:latest"]
    result.snapshot.release()


def test_auth_failures(tmp_path, snapshots, auth_registry):
    with pytest.raises(RegistryUnauthorized, match="no credentials"):
        pull(tmp_path, snapshots, f"{auth_registry.host}/private/busybox")

    async def wrong(host):
        return "alice", "wrong"

    with pytest.raises(RegistryUnauthorized, match="access denied"):
        pull(tmp_path, snapshots, f"{auth_registry.host}/private/busybox",
             client=RegistryClient(credentials=wrong))


def test_mirror_is_tried_first_and_dead_mirror_falls_through(tmp_path, snapshots, registry):
    from buildkitpy.daemon.config import RegistryConfig

    # The origin is dead, the mirror (our registry) serves the image.
    client = RegistryClient({"127.0.0.1:1": RegistryConfig(mirrors=[registry.host])})
    resolved, result = pull(tmp_path / "a", snapshots, "127.0.0.1:1/test/busybox", client=client)
    assert resolved.digest == registry.pushed["test/busybox:latest"]
    result.snapshot.release()
    # A dead mirror in front of a live origin.
    client = RegistryClient({registry.host: RegistryConfig(mirrors=["127.0.0.1:1"])})
    resolved, result = pull(tmp_path / "b", snapshots, f"{registry.host}/test/busybox", client=client)
    assert resolved.digest == registry.pushed["test/busybox:latest"]
    result.snapshot.release()


def test_layer_size_and_digest_are_verified(tmp_path, snapshots, registry):
    from dataclasses import replace

    from buildkitpy.image.registry import RegistryError
    from buildkitpy.image.unpack import LayerError

    store = ContentStore(tmp_path / "state")
    client = RegistryClient()
    puller = ImagePuller(tmp_path / "state", store, snapshots)

    async def pull_with(change):
        ref = parse_reference(f"{registry.host}/test/busybox")
        resolved = await resolve_image(client, store, ref, AMD64)
        change(resolved)
        await puller.pull(client, resolved)

    def shorter(resolved):
        resolved.layers[0] = replace(resolved.layers[0], size=resolved.layers[0].size - 1)

    def missing(resolved):
        resolved.layers[0] = replace(resolved.layers[0], digest="sha256:" + "0" * 64)

    def wrong_diff_id(resolved):
        resolved.diff_ids[0] = "sha256:" + "1" * 64

    with pytest.raises(RegistryError, match="larger than its descriptor"):
        anyio.run(pull_with, shorter)
    assert not store.exists(registry_layer_digest(store, client, registry))
    with pytest.raises(RegistryNotFound, match="blob unknown"):
        anyio.run(pull_with, missing)
    with pytest.raises(LayerError, match="but the image config says"):
        anyio.run(pull_with, wrong_diff_id)
    assert puller.chains.snapshot_ids() == set()
    assert list(snapshots.walk_ids()) == []  # the failed unpack left no snapshot behind


def registry_layer_digest(store, client, registry) -> str:
    ref = parse_reference(f"{registry.host}/test/busybox")
    resolved = anyio.run(resolve_image, client, store, ref, AMD64)
    return resolved.layers[0].digest
