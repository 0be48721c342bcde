"""Frontend images for the gateway tests, in a real loopback registry, and a daemon that pulls
from it over plain http.

``frontend_image``: our Dockerfile frontend image as ``hack/frontend-image`` builds it (from this
machine's Python runtime). ``test_frontend_image``: the same runtime with ``testfrontend.py`` as
the entrypoint.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from image.registryfixture import REGISTRY_BIN, Registry, busybox_rootfs, start_registry

from tests.conftest import REPO, Daemon, start_daemon, stop_daemon

HERE = Path(__file__).resolve().parent


@dataclass
class Images:
    registry: Registry
    frontend: str  # our Dockerfile frontend
    test_frontend: str  # testfrontend.py
    busybox: str


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layout_blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()


def _layout_config(layout: Path) -> dict:
    manifest = json.loads(_layout_blob(layout, json.loads((layout / "index.json").read_text())[
        "manifests"][0]["digest"]))
    return json.loads(_layout_blob(layout, manifest["config"]["digest"]))


def _push_layout(reg: Registry, layout: Path, repo: str, tag: str, *, extra_layer: bytes | None = None,
                 entrypoint: list[str] | None = None) -> str:
    blobs = layout / "blobs" / "sha256"
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_bytes())
    layers = list(manifest["layers"])
    for desc in layers:
        reg.push_blob(repo, (blobs / desc["digest"].split(":")[1]).read_bytes())
    if extra_layer is not None:
        gz = gzip.compress(extra_layer, mtime=0)
        reg.push_blob(repo, gz)
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": _sha(gz),
                       "size": len(gz)})
        config["rootfs"]["diff_ids"].append(_sha(extra_layer))
    if entrypoint is not None:
        config["config"]["Entrypoint"] = entrypoint
    config_bytes = json.dumps(config).encode()
    reg.push_blob(repo, config_bytes)
    manifest.update(config={"mediaType": manifest["config"]["mediaType"], "digest": _sha(config_bytes),
                            "size": len(config_bytes)}, layers=layers)
    reg.push_manifest(repo, tag, manifest)
    return f"{reg.host}/{repo}:{tag}"


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> Iterator[Images]:
    if not Path(REGISTRY_BIN).exists():
        pytest.fail("tests/gateway need docker-registry (apt-get install docker-registry)")
    work = tmp_path_factory.mktemp("gateway-images")
    reg = start_registry(work / "registry")
    try:
        layout = work / "layout"
        subprocess.run([sys.executable, str(REPO / "hack" / "frontend-image"), "--layout", str(layout)],
                       check=True, capture_output=True)
        frontend = _push_layout(reg, layout, "buildkitpy/dockerfile", "test")
        # the daemon mirrors docker.io here: `# syntax=docker/dockerfile:1` pulls our image
        _push_layout(reg, layout, "docker/dockerfile", "1")
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as tar:
            tar.add(HERE / "testfrontend.py", arcname="testfrontend.py")
        config = _layout_config(layout)
        python = config["config"]["Entrypoint"][0]
        test_frontend = _push_layout(reg, layout, "test/frontend", "latest", extra_layer=raw.getvalue(),
                                     entrypoint=[python, "/testfrontend.py"])
        reg.push_image("test/busybox", "latest", [(busybox_rootfs(), "gzip")])
        yield Images(reg, frontend, test_frontend, f"{reg.host}/test/busybox:latest")
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def gw_daemon(images: Images, tmp_path_factory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("gateway-daemon")
    config = root / "buildkitd.toml"
    config.write_text(f'[registry."docker.io"]\n  mirrors = ["{images.registry.host}"]\n'
                      f'[registry."{images.registry.host}"]\n  http = true\n')
    d = start_daemon(root / "d", "--config", str(config))
    yield d
    stop_daemon(d)
