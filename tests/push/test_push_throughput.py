"""Push throughput of a ~100 MB image through the daemon (slow; ``-s`` prints the numbers)."""

from __future__ import annotations

import json
import os
import time

import anyio
import pytest

from buildkitpy.image.reference import parse_reference
from buildkitpy.image.registry import RegistryClient

SIZE = 100 * 1_000_000


@pytest.mark.slow
def test_push_100mb_image(daemon, plain_registry, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY big.bin /big.bin\n")
    (ctx / "big.bin").write_bytes(os.urandom(SIZE))  # incompressible: the blob is as large as the file
    name = f"{plain_registry.host}/bench/big:v1"

    def build(output: str) -> tuple[float, dict]:
        meta = tmp_path / "meta.json"
        t0 = time.monotonic()
        daemon.client("build", "--frontend", "dockerfile.v0", "--local", f"context={ctx}",
                      "--local", f"dockerfile={ctx}", "--output", output, "--metadata-file", str(meta))
        return time.monotonic() - t0, json.loads(meta.read_text())

    assemble, _ = build(f"type=image,name={name}")  # transfers the context, compresses the layer
    cached, _ = build(f"type=image,name={name}")  # everything cached: the fixed cost of a build
    pushed, meta = build(f"type=image,name={name},push=true")
    desc, _ = anyio.run(RegistryClient().get_manifest, parse_reference(name))
    assert desc.digest == meta["containerimage.digest"]
    push = pushed - cached
    print(f"\nfirst build (context + gzip of a 100 MB layer): {assemble:.2f}s; "
          f"cached rebuild: {cached:.2f}s; "
          f"cached rebuild + push: {pushed:.2f}s -> push {push:.2f}s, {SIZE / 1e6 / push:.0f} MB/s")
