"""Helpers for the exporter tests: builds through the daemon, and an independent reader of the
archives (every digest, size and diffID recomputed here, not taken from our code)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zstandard
from image.registryfixture import REGISTRY_BIN, Registry, busybox_rootfs, start_registry

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def decompress(media_type: str, blob: bytes) -> bytes:
    if media_type.endswith("gzip"):
        return gzip.decompress(blob)
    if media_type.endswith("zstd"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    assert media_type.endswith(".tar") or media_type.endswith(".diff.tar"), media_type
    return blob


@dataclass
class Image:
    manifest: dict
    config: dict
    layers: list[bytes]  # uncompressed layer tars

    def layer_names(self, i: int) -> list[str]:
        with tarfile.open(fileobj=io.BytesIO(self.layers[i])) as t:
            return t.getnames()

    def layer_members(self, i: int) -> dict[str, tarfile.TarInfo]:
        with tarfile.open(fileobj=io.BytesIO(self.layers[i])) as t:
            return {m.name: m for m in t.getmembers()}


@dataclass
class Layout:
    raw: bytes
    files: dict[str, bytes]
    index: dict
    images: list[Image] = field(default_factory=list)
    top: dict | None = None  # index or manifest the index.json entry points to

    @property
    def image(self) -> Image:
        assert len(self.images) == 1
        return self.images[0]


def read_layout(path: Path) -> Layout:
    """Parse an oci/docker archive and check every blob against its descriptor."""
    raw = path.read_bytes()
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(raw)) as t:
        for m in t.getmembers():
            if m.isfile():
                files[m.name] = t.extractfile(m).read()
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert sha256(data) == "sha256:" + name.rsplit("/", 1)[1], f"{name}: content does not match"
    layout = Layout(raw, files, json.loads(files["index.json"]))

    def blob(desc: dict) -> bytes:
        data = files["blobs/sha256/" + desc["digest"][7:]]
        assert len(data) == desc["size"], desc
        return data

    def manifest(desc: dict) -> Image:
        doc = json.loads(blob(desc))
        assert doc["mediaType"] == desc["mediaType"]
        config = json.loads(blob(doc["config"]))
        layers = [decompress(d["mediaType"], blob(d)) for d in doc["layers"]]
        assert config["rootfs"]["type"] == "layers"
        assert config["rootfs"]["diff_ids"] == [sha256(t) for t in layers] or (
            not layers and not config["rootfs"]["diff_ids"])
        non_empty = [h for h in config["history"] if not h.get("empty_layer")]
        assert len(non_empty) == len(layers), config["history"]
        assert all(h.get("created") for h in config["history"])
        return Image(doc, config, layers)

    entries = layout.index["manifests"]
    assert entries
    top = entries[0]
    for e in entries:
        assert {k: e[k] for k in ("mediaType", "digest", "size")} == \
            {k: top[k] for k in ("mediaType", "digest", "size")}
    layout.top = json.loads(blob(top))
    if top["mediaType"] in (OCI_INDEX, DOCKER_LIST):
        layout.images = [manifest(d) for d in layout.top["manifests"]]
    else:
        layout.images = [manifest(top)]
    return layout


def build(daemon, tmp_path: Path, output: str, *, dockerfile: str | None = None,
          files: dict[str, str] | None = None, definition: bytes | None = None, extra: tuple = (),
          name: str = "out") -> tuple[Path, dict]:
    """Run one build with our CLI; returns (the written archive, the metadata file's JSON)."""
    dest = tmp_path / f"{name}.tar"
    md = tmp_path / f"{name}.md.json"
    args = ["build", "--progress", "plain", "--output", f"{output},dest={dest}", "--metadata-file", str(md)]
    if dockerfile is not None:
        ctx = tmp_path / f"{name}-ctx"
        ctx.mkdir(exist_ok=True)
        (ctx / "Dockerfile").write_text(dockerfile)
        for rel, text in (files or {}).items():
            (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
            (ctx / rel).write_text(text)
            os.utime(ctx / rel, (1_600_000_000, 1_600_000_000))
        args += ["--frontend", "dockerfile.v0", "--local", f"context={ctx}", "--local", f"dockerfile={ctx}"]
    daemon.client(*args, *extra, input=definition)
    return dest, json.loads(md.read_text())


def skopeo(*args: str) -> str:
    res = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"skopeo {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout


@pytest.fixture(scope="session")
def base_registry(tmp_path_factory) -> Registry:
    """A loopback registry holding ``test/busybox`` (one gzip layer)."""
    if not Path(REGISTRY_BIN).exists() or shutil.which("skopeo") is None:
        pytest.fail("tests/exporter need docker-registry and skopeo (apt-get install docker-registry skopeo)")
    reg = start_registry(tmp_path_factory.mktemp("exporter-registry"))
    reg.push_image("test/busybox", "latest", [(busybox_rootfs(), "gzip")])
    yield reg
    reg.stop()
