"""Push throughput to a loopback docker-registry.

Stores an image of random (incompressible) layers totalling about ``--size-mb`` MB in a fresh
content store, pushes it (cold: every blob uploaded), pushes it again (warm: every blob found by
HEAD) and to a second repository (cross-repository mounts), and prints the times and MB/s.

    .venv/bin/python hack/bench/bench_push.py [--size-mb 100] [--layers 4] [--chunk-mb 0]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import anyio

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from buildkitpy.content.store import ContentStore  # noqa: E402
from buildkitpy.image import mediatypes  # noqa: E402
from buildkitpy.image.push import DEFAULT_CHUNK_SIZE, ImagePusher  # noqa: E402
from buildkitpy.image.reference import parse_reference  # noqa: E402
from buildkitpy.image.registry import Descriptor, RegistryClient  # noqa: E402
from tests.image.registryfixture import start_registry  # noqa: E402


def store_image(store: ContentStore, layers: int, per_layer: int) -> Descriptor:
    descs = []
    for _ in range(layers):
        blob = os.urandom(per_layer)
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                      "digest": store.write_bytes(blob), "size": len(blob)})
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in descs]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": mediatypes.OCI_MANIFEST,
                           "config": {"mediaType": mediatypes.OCI_CONFIG, "digest": store.write_bytes(config),
                                      "size": len(config)},
                           "layers": descs}).encode()
    return Descriptor(mediatypes.OCI_MANIFEST, store.write_bytes(manifest), len(manifest))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--chunk-mb", type=int, default=0, help="PATCH chunk size (0: the default)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-push-") as tmp:
        tmp_path = Path(tmp)
        reg = start_registry(tmp_path / "registry")
        store = ContentStore(tmp_path / "state")
        try:
            root = store_image(store, args.layers, args.size_mb * 1_000_000 // args.layers)
            chunk = args.chunk_mb << 20 if args.chunk_mb else DEFAULT_CHUNK_SIZE
            pusher = ImagePusher(RegistryClient(), store, chunk_size=chunk)

            async def timed(name: str):
                t0 = time.monotonic()
                result = await pusher.push(parse_reference(f"{reg.host}/{name}"), root)
                return time.monotonic() - t0, result

            cold, result = anyio.run(timed, "bench/push:v1")
            warm, _ = anyio.run(timed, "bench/push:v2")
            mount, mounted = anyio.run(timed, "bench/other:v1")
            mb = result.bytes_uploaded / 1e6
            print(f"cold push: {len(result.uploaded)} blobs, {mb:.1f} MB in {cold:.2f}s: "
                  f"{mb / cold:.1f} MB/s "
                  f"(chunk size {chunk >> 20} MiB)")
            print(f"warm push (all blobs present): {warm:.3f}s")
            print(f"push to another repository ({len(mounted.mounted)} blobs mounted): {mount:.3f}s")
        finally:
            store.close()
            reg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
