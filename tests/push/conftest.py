from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from image.registryfixture import REGISTRY_BIN, sha256

from buildkitpy.content.store import ContentStore
from buildkitpy.image import mediatypes
from buildkitpy.image.registry import Descriptor

from .registries import PushRegistry, make_ca, make_server_cert, make_token_server, start_push_registry

USERS = {"alice": "s3cret"}
REFRESH_TOKENS = {"refresh-abc": "alice"}


def _need_tools() -> None:
    missing = [t for t in ("openssl", "skopeo") if shutil.which(t) is None]
    if not Path(REGISTRY_BIN).exists():
        missing.append("docker-registry")
    if missing:
        pytest.fail(f"tests/push need {', '.join(missing)} (hack/setup installs them)")


@pytest.fixture(scope="session")
def plain_registry(tmp_path_factory) -> PushRegistry:
    _need_tools()
    reg = start_push_registry(tmp_path_factory.mktemp("push-registry"))
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory) -> PushRegistry:
    _need_tools()
    d = tmp_path_factory.mktemp("token-registry")
    tokens = make_token_server(d / "token", USERS, REFRESH_TOKENS)
    reg = start_push_registry(d / "registry", token_server=tokens)
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory) -> PushRegistry:
    _need_tools()
    d = tmp_path_factory.mktemp("tls-registry")
    ca = make_ca(d / "ca")
    cert = make_server_cert(d / "ca", ca)
    reg = start_push_registry(d / "registry", tls=cert, ca=ca[0])
    yield reg
    reg.stop()


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    s = ContentStore(tmp_path / "content-root")
    yield s
    s.close()


def put_json(store: ContentStore, doc: dict) -> tuple[str, int]:
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return store.write_bytes(data), len(data)


def make_image(store: ContentStore, layers: list[bytes], *, arch: str = "amd64",
               media_types: str = "oci") -> Descriptor:
    """A manifest over ``layers`` (stored as given, called gzip) written into ``store``."""
    docker = media_types == "docker"
    layer_mt = ("application/vnd.docker.image.rootfs.diff.tar.gzip" if docker
                else "application/vnd.oci.image.layer.v1.tar+gzip")
    descs = [{"mediaType": layer_mt, "digest": store.write_bytes(blob), "size": len(blob)} for blob in layers]
    config = {"architecture": arch, "os": "linux", "config": {"Cmd": ["sh"]},
              "rootfs": {"type": "layers", "diff_ids": [sha256(b) for b in layers]}}
    config_digest, config_size = put_json(store, config)
    manifest_mt = mediatypes.DOCKER_MANIFEST if docker else mediatypes.OCI_MANIFEST
    manifest = {"schemaVersion": 2, "mediaType": manifest_mt,
                "config": {"mediaType": mediatypes.DOCKER_CONFIG if docker else mediatypes.OCI_CONFIG,
                           "digest": config_digest, "size": config_size},
                "layers": descs}
    digest, size = put_json(store, manifest)
    return Descriptor(manifest_mt, digest, size, {"architecture": arch, "os": "linux"})


def make_index(store: ContentStore, manifests: list[Descriptor]) -> Descriptor:
    index = {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX,
             "manifests": [{"mediaType": m.media_type, "digest": m.digest, "size": m.size,
                            "platform": dict(m.platform or {})} for m in manifests]}
    digest, size = put_json(store, index)
    return Descriptor(mediatypes.OCI_INDEX, digest, size)
