"""Cold pull throughput from a loopback docker-registry.

Pushes an image of random (incompressible) gzip layers totalling about ``--size-mb`` MB, then pulls
it into a fresh content store and snapshot root and prints download+unpack MB/s.

    .venv/bin/python hack/bench/bench_pull.py [--size-mb 200] [--layers 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import anyio

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from buildkitpy.content.store import ContentStore  # noqa: E402
from buildkitpy.image.platforms import Platform  # noqa: E402
from buildkitpy.image.pull import ImagePuller  # noqa: E402
from buildkitpy.image.reference import parse_reference  # noqa: E402
from buildkitpy.image.registry import RegistryClient  # noqa: E402
from buildkitpy.image.resolve import resolve_image  # noqa: E402
from buildkitpy.snapshot.manager import OverlaySnapshotManager  # noqa: E402
from tests.image.registryfixture import TarBuilder, start_registry  # noqa: E402


def random_layer(size: int, files: int = 8) -> bytes:
    t = TarBuilder()
    t.dir("data")
    for i in range(files):
        t.add(f"data/blob{i}", data=os.urandom(size // files))
    return t.bytes()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pull-") as tmp:
        tmp_path = Path(tmp)
        reg = start_registry(tmp_path / "registry")
        try:
            per_layer = args.size_mb * 1_000_000 // args.layers
            layers = [(random_layer(per_layer), "gzip") for _ in range(args.layers)]
            reg.push_image("bench/random", "latest", layers)
            uncompressed = sum(len(t) for t, _ in layers)
            snapshots = OverlaySnapshotManager(tmp_path / "state")
            store = ContentStore(tmp_path / "state")
            puller = ImagePuller(tmp_path / "state", store, snapshots)
            client = RegistryClient()

            async def go():
                t0 = time.monotonic()
                resolved = await resolve_image(client, store, parse_reference(f"{reg.host}/bench/random"),
                                               Platform("linux", "amd64"))
                result = await puller.pull(client, resolved)
                elapsed = time.monotonic() - t0
                result.snapshot.release()
                return elapsed, sum(d.size for d in resolved.layers)

            elapsed, blob_bytes = anyio.run(go)
            mb = blob_bytes / 1e6
            print(f"pulled {args.layers} layers, {mb:.1f} MB of gzip blobs "
                  f"({uncompressed / 1e6:.1f} MB uncompressed) "
                  f"in {elapsed:.2f}s: {mb / elapsed:.1f} MB/s (snapshot mode {snapshots.mode})")
            snapshots.close()
        finally:
            reg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
