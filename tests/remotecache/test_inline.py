"""Inline cache: records in the pushed image's config, imported on a fresh daemon from the image."""

from __future__ import annotations

import base64
import json
import re
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import needs_root

from .conftest import build, write_context

DOCKERFILE = """FROM {base}
RUN echo one > /one
COPY input.txt /input.txt
RUN cat /one /input.txt > /two
"""


def _config(registry, repo: str, tag: str) -> dict:
    req = urllib.request.Request(
        f"{registry.base}/v2/{repo}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    manifest = json.loads(urllib.request.urlopen(req).read())
    digest = manifest["config"]["digest"]
    return json.loads(urllib.request.urlopen(f"{registry.base}/v2/{repo}/blobs/{digest}").read())


@needs_root
@pytest.mark.parametrize("how", ["export-cache", "build-arg"])
def test_inline_cache_roundtrip(make_daemon, cache_registry, base_image, tmp_path: Path, how: str):
    ctx = write_context(tmp_path / "ctx", DOCKERFILE.format(base=base_image), {"input.txt": "x\n"})
    image = f"{cache_registry.host}/inline/{how}:v1"
    flags = (
        ["--export-cache", "type=inline"]
        if how == "export-cache"
        else ["--opt", "build-arg:BUILDKIT_INLINE_CACHE=1"]
    )
    daemon = make_daemon()
    run1 = build(daemon, ctx, tmp_path / "o1", *flags, output=f"type=image,name={image},push=true")
    assert run1.proc.returncode == 0
    config = _config(cache_registry, f"inline/{how}", "v1")
    records = json.loads(base64.b64decode(config["moby.buildkit.cache.v0"]))
    results = sorted(r["layers"][0]["layer"] for r in records if r.get("layers"))
    assert results == [0, 1, 2, 3], records  # FROM, RUN, COPY and RUN: each step's top layer index
    # BuildKit parses createdAt as a Go time: "" made real buildkitd's import fail
    created = [x["createdAt"] for r in records for x in r.get("layers", [])]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", c) for c in created), created

    run2 = build(make_daemon(), ctx, tmp_path / "o2", "--import-cache", f"type=registry,ref={image}")
    assert run2.ran() == set() and len(run2.cached()) == 3, run2.text
    assert (tmp_path / "o2" / "two").read_text() == "one\nx\n"
