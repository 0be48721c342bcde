"""``type=local`` cache through the client session: our CLI serves the OCI layout directory, a fresh
daemon imports it by tag (index.json) or digest."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import needs_root

from .conftest import build, write_context

DOCKERFILE = """FROM {base}
RUN echo one > /one
COPY input.txt /input.txt
RUN cat /one /input.txt > /two
"""


@needs_root
def test_local_cache_roundtrip_by_tag_and_digest(make_daemon, base_image, tmp_path: Path):
    ctx = write_context(tmp_path / "ctx", DOCKERFILE.format(base=base_image), {"input.txt": "x\n"})
    cache = tmp_path / "cache"
    run1 = build(
        make_daemon(), ctx, tmp_path / "o1", "--export-cache", f"type=local,dest={cache},mode=max,tag=v1"
    )
    assert len(run1.ran()) == 3, run1.text
    index = json.loads((cache / "index.json").read_text())
    (entry,) = [
        m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == "v1"
    ]
    assert entry["mediaType"] == "application/vnd.oci.image.manifest.v1+json"  # image-manifest by default
    manifest = json.loads((cache / "blobs" / "sha256" / entry["digest"][7:]).read_text())
    assert manifest["config"]["mediaType"] == "application/vnd.buildkit.cacheconfig.v0"
    assert all((cache / "blobs" / "sha256" / layer["digest"][7:]).exists() for layer in manifest["layers"])

    run2 = build(make_daemon(), ctx, tmp_path / "o2", "--import-cache", f"type=local,src={cache},tag=v1")
    assert run2.ran() == set() and len(run2.cached()) == 3, run2.text
    assert (tmp_path / "o2" / "two").read_text() == "one\nx\n"

    run3 = build(
        make_daemon(),
        ctx,
        tmp_path / "o3",
        "--import-cache",
        f"type=local,src={cache},digest={entry['digest']}",
    )
    assert run3.ran() == set(), run3.text

    missing = build(
        make_daemon(), ctx, tmp_path / "o4", "--import-cache", f"type=local,src={cache},tag=nope", check=False
    )
    assert missing.proc.returncode != 0 and "no manifest tagged 'nope'" in missing.text, missing.text
