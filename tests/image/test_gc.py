"""Prune's content-store garbage collection: real pulls through the real solver, then
``control.usage.prune`` over the same worker."""

from __future__ import annotations

import json

import anyio
import pytest

import buildkitpy.solver.ops.source_image  # noqa: F401  (registers docker-image://)
from buildkitpy import llb
from buildkitpy.control import usage
from buildkitpy.image.reference import parse_reference
from buildkitpy.image.resolvemode import record_exported_names
from buildkitpy.progress import ProgressBus
from buildkitpy.solver import Job, Solver
from buildkitpy.worker import Worker

from .registryfixture import TarBuilder


@pytest.fixture
def env(tmp_path, snapshots):
    worker = Worker(id="test", root=tmp_path / "state", snapshots=snapshots, sessions=None)
    s = Solver(worker)
    yield s
    s.close()


def pull(solver, ref: str, mode: str | None = None):
    job = Job(id="job", progress=ProgressBus())
    return anyio.run(solver.solve, llb.image(ref, resolve_mode=mode).marshal(platform="linux/amd64"), job)


def image_blobs(registry, repo_tag: str) -> tuple[str, str, list[str]]:
    """(manifest digest, config digest, layer digests) of what the registry holds for ``repo_tag``."""
    import urllib.request

    digest = registry.pushed[repo_tag]
    repo = repo_tag.split(":")[0]
    req = urllib.request.Request(f"{registry.base}/v2/{repo}/manifests/{digest}",
                                 headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    manifest = json.loads(urllib.request.urlopen(req).read())
    return digest, manifest["config"]["digest"], [layer["digest"] for layer in manifest["layers"]]


def prune(solver, busy: bool = False):
    return usage.prune(solver.worker, solver.cache, usage.PruneOptions(all=True), busy=busy)


def test_prune_drops_blobs_and_records_of_gone_snapshots_keeps_tag_metadata(env, registry):
    ref = f"{registry.host}/test/layered:latest"
    manifest, config, layers = image_blobs(registry, "test/layered:latest")
    store, chains = env.worker.image_puller.store, env.worker.image_puller.chains
    pull(env, ref).ref.release()
    assert all(store.exists(d) for d in [manifest, config, *layers])
    garbage = store.write_bytes(b"nobody refers to this")
    assert chains.snapshot_ids()

    # While builds run nothing is deleted.
    prune(env, busy=True)
    assert store.exists(garbage) and all(store.exists(d) for d in layers)

    prune(env)
    assert not store.exists(garbage)
    assert not any(store.exists(d) for d in layers)  # their snapshots are gone
    assert store.exists(manifest) and store.exists(config)  # what the tag resolved to, for local mode
    assert chains.snapshot_ids() == set() and chains.layer_blob_records() == []

    # The tag still resolves locally; the layers are downloaded again.
    res = pull(env, ref, "local")
    with res.ref.mount() as root:
        assert (root / "data/zstd").read_text() == "zstd layer\n"
    res.ref.release()
    assert all(store.exists(d) for d in layers)


def test_prune_keeps_blobs_of_live_snapshots_and_named_images(env, registry):
    store = env.worker.image_puller.store
    held = pull(env, f"{registry.host}/test/busybox:latest")  # a result nobody released: live
    _, _, busy_layers = image_blobs(registry, "test/busybox:latest")

    # An image named by the image exporter keeps its whole graph, layers included.
    layer = TarBuilder().add("named", data=b"kept\n").bytes()
    layer_digest = store.write_bytes(layer)
    config_digest = store.write_bytes(json.dumps({"rootfs": {"diff_ids": [layer_digest]}}).encode())
    named = store.write_bytes(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": 1},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest,
                    "size": len(layer)}]}).encode())
    record_exported_names(env.worker.image_puller.chains, [parse_reference("example.com/app:v1")], named,
                          True)
    prune(env)
    assert all(store.exists(d) for d in busy_layers)
    assert all(store.exists(d) for d in (named, config_digest, layer_digest))
    with held.ref.mount() as root:
        assert (root / "bin/busybox").exists()
    held.ref.release()
    prune(env)
    assert not any(store.exists(d) for d in busy_layers)
    assert all(store.exists(d) for d in (named, config_digest, layer_digest))
