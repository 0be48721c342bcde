"""Cache-mount contents carried in a registry cache (``cache-mounts=…`` on the export), seeded on
a fresh daemon that imports it; without the attribute nothing is carried."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from tests.conftest import needs_root

from .conftest import build, write_context

WRITE = """FROM {base}
RUN --mount=type=cache,id=deps,target=/c echo warm > /c/warm && echo built > /built
"""
READ = """FROM {base}
RUN --mount=type=cache,id=deps,target=/c (cat /c/warm 2>/dev/null || echo none) > /got
"""


def _entries(registry, repo: str) -> list[dict]:
    req = urllib.request.Request(
        f"{registry.base}/v2/{repo}/manifests/latest",
        headers={"Accept": "application/vnd.oci.image.index.v1+json"},
    )
    return json.loads(urllib.request.urlopen(req).read())["manifests"]


@needs_root
def test_cache_mounts_travel_only_when_asked(make_daemon, cache_registry, base_image, tmp_path: Path):
    writer = write_context(tmp_path / "w", WRITE.format(base=base_image))
    reader = write_context(tmp_path / "r", READ.format(base=base_image))
    with_mounts = f"{cache_registry.host}/mounts/with"
    without = f"{cache_registry.host}/mounts/without"
    first = make_daemon()
    build(
        first,
        writer,
        tmp_path / "o1",
        "--export-cache",
        f"type=registry,ref={with_mounts},cache-mounts=true",
        "--export-cache",
        f"type=registry,ref={without}",
    )
    carried = [
        e
        for e in _entries(cache_registry, "mounts/with")
        if (e.get("annotations") or {}).get("buildkitpy.cachemount.id")
        == "/deps"  # the frontend prefixes ids with /
    ]
    assert len(carried) == 1
    assert not any(
        "buildkitpy.cachemount.id" in (e.get("annotations") or {})
        for e in _entries(cache_registry, "mounts/without")
    )

    build(make_daemon(), reader, tmp_path / "o2", "--import-cache", f"type=registry,ref={with_mounts}")
    assert (tmp_path / "o2" / "got").read_text() == "warm\n"
    build(make_daemon(), reader, tmp_path / "o3", "--import-cache", f"type=registry,ref={without}")
    assert (tmp_path / "o3" / "got").read_text() == "none\n"
