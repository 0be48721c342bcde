"""``squash`` (through the Python SDK: the docker CLI offers --squash only to experimental daemons):
the build's layers become one on top of the base image's, with whiteouts of base content kept, and
the result works as a base for another build."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from .test_build import _write

DOCKERFILE = """FROM busybox
RUN mkdir /d && echo one > /d/a && echo keep > /d/b && echo x > /gone
RUN rm /d/a /gone && echo two > /d/c && rm /data/gone
RUN mkdir -p /o && echo old > /o/old
RUN rm -rf /o /opq && mkdir /o /opq && echo new > /o/new && echo new > /opq/new
ENV SQUASHED=yes
"""


def _layers(engine, name: str) -> tuple[dict, list[dict[str, tarfile.TarInfo]]]:
    saved = engine.docker("save", name).stdout
    with tarfile.open(fileobj=io.BytesIO(saved)) as t:
        manifest = json.loads(t.extractfile("manifest.json").read())[0]
        config = json.loads(t.extractfile(manifest["Config"]).read())
        layers = []
        for layer in manifest["Layers"]:
            with tarfile.open(fileobj=io.BytesIO(t.extractfile(layer).read())) as lt:
                layers.append({m.name.lstrip("./"): m for m in lt.getmembers()})
    return config, layers


def test_squash_merges_the_build_layers(engine, tmp_path):
    docker = pytest.importorskip("docker", reason="the dev dependency `docker` (Python SDK)")
    ctx = tmp_path / "squash"
    _write(ctx, {"Dockerfile": DOCKERFILE})
    client = docker.DockerClient(base_url=engine.host, version="1.47")
    try:
        plain, _ = client.images.build(path=str(ctx), tag="not-squashed")
        squashed, logs = client.images.build(path=str(ctx), tag="squashed", squash=True)
        logs = list(logs)
    finally:
        client.close()
    assert squashed.id != plain.id
    assert [e["aux"]["ID"] for e in logs if "aux" in e][-1] == squashed.id
    plain_config, plain_layers = _layers(engine, "not-squashed")
    config, layers = _layers(engine, "squashed")
    base_layers = len(plain_layers) - 4
    assert len(layers) == base_layers + 1
    assert config["rootfs"]["diff_ids"][:base_layers] == plain_config["rootfs"]["diff_ids"][:base_layers]
    assert "SQUASHED=yes" in config["config"]["Env"]
    history = config["history"]
    assert history[-1]["comment"].startswith(f"merge {plain.id} to sha256:")
    built = len(plain_config["history"]) - 5  # 4 RUN, 1 ENV
    assert len(history) == len(plain_config["history"]) + 1
    assert all(h.get("empty_layer") for h in history[built:-1]) and not history[-1].get("empty_layer")
    assert history[:built] == plain_config["history"][:built]
    merged = layers[-1]
    assert merged["d/b"].isfile() and merged["d/c"].isfile() and "d/a" not in merged and "gone" not in merged
    assert "data/.wh.gone" in merged  # base content removed by the build stays removed
    assert "o/new" in merged and "o/old" not in merged and "opq/new" in merged

    child = tmp_path / "child"
    _write(child, {"Dockerfile": "FROM squashed\nRUN test ! -e /data/gone && test ! -e /d/a && "
                                 "test ! -e /o/old && test ! -e /opq/a && test ! -e /opq/sub && "
                                 "cat /d/b /d/c /o/new /data/keep\n"})
    out = engine.docker("build", str(child)).stdout.decode().splitlines()
    assert ["keep", "two", "new", "keep"] == [ln for ln in out if ln in ("keep", "two", "new")]
