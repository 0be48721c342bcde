"""Registry cache export on one daemon, import on a fresh one (its own root): real registry, real
runc, our CLI."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import needs_root

from .conftest import build, write_context

DOCKERFILE = """FROM {base}
RUN echo one > /one
RUN cat /one > /two && echo two >> /two
COPY input.txt /input.txt
RUN cat /two /input.txt > /three
"""


@needs_root
def test_registry_max_roundtrip_fresh_daemon(make_daemon, cache_registry, base_image, tmp_path: Path):
    ref = f"{cache_registry.host}/cache/app:max"
    ctx = write_context(tmp_path / "ctx", DOCKERFILE.format(base=base_image), {"input.txt": "hello\n"})
    first = make_daemon()
    run1 = build(first, ctx, tmp_path / "out1", "--export-cache", f"type=registry,ref={ref},mode=max")
    assert len(run1.ran()) == 4, run1.text

    second = make_daemon()
    run2 = build(second, ctx, tmp_path / "out2", "--import-cache", f"type=registry,ref={ref}")
    assert run2.ran() == set(), run2.text
    assert len(run2.cached()) == 4, run2.text
    assert (tmp_path / "out2" / "three").read_text() == "one\ntwo\nhello\n"
    # The second daemon pulled the layers the final result is made of and no other layer (the rest
    # of its content store is the base image's manifest and config, read to resolve FROM).
    stored = {p.name: p for p in second.root.glob("state/content/blobs/sha256/*")}
    listed = {d[7:] for d in _cache_layer_blobs(cache_registry, "cache/app", "max")}
    assert listed <= set(stored), (stored, listed)
    for name in set(stored) - listed:
        json.loads(stored[name].read_bytes())  # a JSON document, not a layer


def _cache_layer_blobs(registry, repo: str, tag: str) -> list[str]:
    """Digests of the layers a cache manifest lists that are not the base image's."""
    import json
    import urllib.request

    req = urllib.request.Request(
        f"{registry.base}/v2/{repo}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.index.v1+json"},
    )
    doc = json.loads(urllib.request.urlopen(req).read())
    return [
        m["digest"] for m in doc["manifests"] if m["mediaType"] != "application/vnd.buildkit.cacheconfig.v0"
    ]


def _blob_file(registry, digest: str) -> Path:
    hexd = digest.split(":", 1)[1]
    return (
        registry.data
        / "storage"
        / "docker"
        / "registry"
        / "v2"
        / "blobs"
        / "sha256"
        / hexd[:2]
        / hexd
        / "data"
    )


@needs_root
def test_registry_min_only_final_result_and_partial_hits(
    make_daemon, cache_registry, base_image, tmp_path: Path
):
    ctx = write_context(tmp_path / "ctx", DOCKERFILE.format(base=base_image), {"input.txt": "hello\n"})
    first = make_daemon()
    build(
        first,
        ctx,
        tmp_path / "o1",
        "--export-cache",
        f"type=registry,ref={cache_registry.host}/c/min",
        "--export-cache",
        f"type=registry,ref={cache_registry.host}/c/max,mode=max",
    )

    # mode=min: only the final result is in the cache; a fresh daemon gets the last step from it
    run = build(
        make_daemon(),
        ctx,
        tmp_path / "o2",
        "--import-cache",
        f"type=registry,ref={cache_registry.host}/c/min",
    )
    assert run.cached() == {"[5/5] RUN cat /two /input.txt > /three"}, run.text
    assert (tmp_path / "o2" / "three").read_text() == "one\ntwo\nhello\n"

    # mode=max, one input file changed: the steps before the COPY hit, the COPY and after run
    (ctx / "input.txt").write_text("changed\n")
    run = build(
        make_daemon(),
        ctx,
        tmp_path / "o3",
        "--import-cache",
        f"type=registry,ref={cache_registry.host}/c/max",
    )
    assert run.cached() == {"[2/5] RUN echo one > /one", "[3/5] RUN cat /one > /two && echo two >> /two"}, (
        run.text
    )
    assert run.ran() == {"[4/5] COPY input.txt /input.txt", "[5/5] RUN cat /two /input.txt > /three"}, (
        run.text
    )
    assert (tmp_path / "o3" / "three").read_text() == "one\ntwo\nchanged\n"


@needs_root
def test_registry_corrupted_and_missing_blobs(make_daemon, cache_registry, base_image, tmp_path: Path):
    ctx = write_context(tmp_path / "ctx", DOCKERFILE.format(base=base_image), {"input.txt": "hello\n"})
    for repo, damage in (("bad/corrupt", "corrupt"), ("bad/missing", "missing")):
        ref = f"{cache_registry.host}/{repo}"
        build(
            make_daemon(),
            ctx,
            tmp_path / f"o-{damage}",
            "--export-cache",
            f"type=registry,ref={ref},mode=max",
        )
        base_layers = set(_base_layers(cache_registry))
        victims = [d for d in _cache_layer_blobs(cache_registry, repo, "latest") if d not in base_layers]
        assert victims
        for digest in victims:
            path = _blob_file(cache_registry, digest)
            if damage == "corrupt":
                data = bytearray(path.read_bytes())
                data[len(data) // 2] ^= 0xFF
                path.write_bytes(bytes(data))
            else:
                path.unlink()
        failed = build(
            make_daemon(),
            ctx,
            tmp_path / f"f-{damage}",
            "--import-cache",
            f"type=registry,ref={ref}",
            check=False,
        )
        assert failed.proc.returncode != 0, failed.text
        assert "importing cache from registry" in failed.text and any(d in failed.text for d in victims), (
            failed.text
        )

        ok = build(
            make_daemon(),
            ctx,
            tmp_path / f"i-{damage}",
            "--import-cache",
            f"type=registry,ref={ref},ignore-error=true",
            timeout=40,
        )
        assert len(ok.ran()) == 4, ok.text
        assert (tmp_path / f"i-{damage}" / "three").read_text() == "one\ntwo\nhello\n"


def _base_layers(registry) -> list[str]:
    import json
    import urllib.request

    req = urllib.request.Request(
        f"{registry.base}/v2/base/busybox/manifests/latest",
        headers={
            "Accept": "application/vnd.oci.image.manifest.v1+json, "
            "application/vnd.docker.distribution.manifest.v2+json"
        },
    )
    doc = json.loads(urllib.request.urlopen(req).read())
    return [layer["digest"] for layer in doc["layers"]]
