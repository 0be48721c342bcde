from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from buildkitpy.snapshot.manager import OverlaySnapshotManager
from buildkitpy.snapshot.mount import mounted_under

from .registryfixture import (
    REGISTRY_BIN,
    Registry,
    TarBuilder,
    busybox_rootfs,
    second_layer,
    start_registry,
    third_layer,
)


def _need_registry() -> None:
    if not Path(REGISTRY_BIN).exists() or shutil.which("zstd") is None:
        pytest.fail("tests/image need docker-registry and zstd (apt-get install docker-registry zstd)")


@pytest.fixture(scope="session")
def registry(tmp_path_factory) -> Registry:
    _need_registry()
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    base = busybox_rootfs()
    reg.push_image("test/busybox", "latest", [(base, "gzip")])
    reg.push_image("test/layered", "latest", [(base, "gzip"), (second_layer(), "gzip"),
                                              (third_layer(), "zstd")])
    reg.push_image("test/docker", "v1", [(base, "gzip"), (second_layer(), "none")], docker_types=True)
    amd = TarBuilder().add("arch", data=b"amd64\n").bytes()
    arm = TarBuilder().add("arch", data=b"armv7\n").bytes()
    _, amd_desc = reg.push_image("test/multi", "amd64-only", [(amd, "gzip")])
    _, arm_desc = reg.push_image("test/multi", "arm-only", [(arm, "gzip")], arch="arm", variant="v7")
    reg.push_manifest("test/multi", "latest", {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [arm_desc, amd_desc]})
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory) -> Registry:
    _need_registry()
    reg = start_registry(tmp_path_factory.mktemp("auth-registry"), auth=("alice", "s3cret"))
    reg.push_image("private/busybox", "latest", [(busybox_rootfs(), "gzip")])
    yield reg
    reg.stop()


@pytest.fixture
def snapshots(tmp_path: Path):
    if os.geteuid() != 0:
        pytest.fail("image tests need root (mount, chown, mknod)")
    mgr = OverlaySnapshotManager(tmp_path / "state")
    yield mgr
    mgr.close()
    assert mounted_under(tmp_path) == [], "a test left a mount behind"
