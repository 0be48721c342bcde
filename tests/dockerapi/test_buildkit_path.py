"""The BuildKit path: ``docker build`` with BuildKit on goes through buildx's docker driver, which
talks BuildKit's Control API over ``POST /grpc`` and serves its session over ``POST /session``; the
result lands in the Engine API's image store through the ``moby`` exporter."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from .test_build import _write

BUILDX_CANDIDATES = [Path("/work/tools/bin/docker-buildx"), Path.home() / ".docker/cli-plugins/docker-buildx",
                     Path("/usr/libexec/docker/cli-plugins/docker-buildx"),
                     Path("/usr/local/lib/docker/cli-plugins/docker-buildx")]


@pytest.fixture(scope="module")
def buildx_env(engine, tmp_path_factory):
    plugin = next((p for p in BUILDX_CANDIDATES if p.exists()), None)
    if plugin is None and shutil.which("docker-buildx"):
        plugin = Path(shutil.which("docker-buildx"))
    if plugin is None:
        pytest.fail("the docker buildx plugin is needed for the BuildKit path (docker-buildx)")
    plugins = Path(engine.env["DOCKER_CONFIG"]) / "cli-plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    if not (plugins / "docker-buildx").exists():
        os.symlink(plugin, plugins / "docker-buildx")
    return {"BUILDX_CONFIG": str(tmp_path_factory.mktemp("buildx-config"))}


def test_buildx_docker_driver_with_secret_and_cache_mount(engine, buildx_env, tmp_path):
    ctx = tmp_path / "bk"
    _write(ctx, {"Dockerfile": "FROM busybox\n"
                               "RUN --mount=type=secret,id=tok cat /run/secrets/tok > /tok.txt\n"
                               "RUN --mount=type=cache,target=/cache echo run >> /cache/log"
                               " && cat /cache/log\n"
                               "LABEL path=buildkit\n"})
    secret = tmp_path / "tok"
    secret.write_text("s3cret-token")
    engine.env.update(buildx_env)
    res = engine.docker("build", "--progress", "plain", "--secret", f"id=tok,src={secret}", "-t", "bk-image",
                        str(ctx), classic=False)
    progress = res.stderr.decode()
    assert "[internal] load build definition from Dockerfile" in progress
    assert "RUN --mount=type=cache,target=/cache" in progress
    assert "naming to" in progress and "bk-image" in progress
    inspect = json.loads(engine.docker("image", "inspect", "bk-image").stdout)[0]
    assert inspect["Config"]["Labels"] == {"path": "buildkit"}
    saved = engine.docker("save", "bk-image").stdout
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(saved)) as t:
        manifest = json.loads(t.extractfile("manifest.json").read())[0]
        contents = {}
        for layer in manifest["Layers"]:
            with tarfile.open(fileobj=io.BytesIO(t.extractfile(layer).read())) as lt:
                for m in lt.getmembers():
                    if m.isfile():
                        contents[m.name] = lt.extractfile(m).read()
    assert contents["tok.txt"] == b"s3cret-token"
    assert not any(name.startswith("run/secrets") for name in contents)

    again = engine.docker("build", "--progress", "plain", "--secret", f"id=tok,src={secret}", "-t",
                          "bk-image", str(ctx), classic=False).stderr.decode()
    assert "CACHED" in again
