"""Layer export throughput: one layer of ``--size-mb`` MB (half random, half compressible text,
interleaved per MiB) through the exporter's tar → compress → hash → content-store pipeline.

Rows: our gzip (ISA-L, pipelined), zstd (zstandard threads), uncompressed (tar + hashes only, the
ceiling), and the baseline: the same tar compressed with single-threaded zlib -6 (what Go's
compress/gzip default, and so BuildKit, does), sequentially. Also two layers of half the size
exported concurrently with gzip. MB/s is uncompressed layer bytes per second.

    .venv/bin/python hack/bench/bench_export.py [--size-mb 1024]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from buildkitpy.content.store import ContentStore  # noqa: E402
from buildkitpy.exporter.imagebuild.blobs import compress_layer  # noqa: E402
from buildkitpy.exporter.imagebuild.layertar import write_layer_tar  # noqa: E402
from buildkitpy.image.compression import CompressionConfig, new_compressor  # noqa: E402

MIB = 1 << 20


def make_layer(directory: Path, size_mb: int, seed: int = 0) -> int:
    directory.mkdir(parents=True)
    text = b"".join(b"%08d the quick brown fox jumps over the lazy dog %d\n" % (i, i * 7 + seed)
                    for i in range(MIB // 48 + 1))[:MIB]
    with open(directory / "data.bin", "wb") as f:
        for i in range(size_mb):
            f.write(os.urandom(MIB) if i % 2 == 0 else text)
    return size_mb * MIB


class _Null:
    def __init__(self) -> None:
        self.n = 0

    def write(self, data: bytes) -> int:
        self.n += len(data)
        return len(data)

    def tell(self) -> int:
        return self.n


class _ZlibSink:
    """Baseline: compress and hash in the writing thread, one zlib stream (or ``compressor``)."""

    def __init__(self, out, compressor=None) -> None:
        self._z = compressor or zlib.compressobj(6, zlib.DEFLATED, 31)
        self._out = out
        self.diff = hashlib.sha256()
        self.blob = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.diff.update(data)
        c = self._z.compress(data)
        self.blob.update(c)
        self._out.write(c)
        return len(data)

    def close(self) -> None:
        c = self._z.flush()
        self.blob.update(c)
        self._out.write(c)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-export-", dir="/var/tmp") as tmp:
        root = Path(tmp)
        layer = root / "snap1" / "fs"
        total = make_layer(layer, args.size_mb)
        store = ContentStore(root / "store")
        print(f"layer: {total / MIB:.0f} MiB (half random, half text), {os.cpu_count()} CPUs")

        def row(name: str, seconds: float, size: int, nbytes: int = total) -> None:
            print(f"{name:44s} {nbytes / seconds / 1e6:8.1f} MB/s  {seconds:6.2f} s  "
                  f"ratio {size / nbytes:.3f}")

        for kind in ("gzip", "zstd", "uncompressed"):
            os.sync()  # earlier rows' dirty pages are not this row's cost
            start = time.perf_counter()
            blob = compress_layer(layer, store, CompressionConfig(kind))
            row(f"{kind} (ours)", time.perf_counter() - start, blob.size)

        os.sync()
        start = time.perf_counter()
        with open(root / "zlib.out", "wb") as out:
            sink = _ZlibSink(out)
            write_layer_tar(layer, sink)
            sink.close()
            size = out.tell()
            out.flush()
            os.fsync(out.fileno())  # the content store fsyncs its blobs too
        row("gzip, single-threaded zlib -6 (baseline)", time.perf_counter() - start, size)
        os.unlink(root / "zlib.out")

        print("CPU only (tar + compress + both hashes in one thread, output discarded; layer file cached):")
        for name, compressor in (("  isal gzip", new_compressor(CompressionConfig("gzip"))),
                                 ("  zstd (threads)", new_compressor(CompressionConfig("zstd"))),
                                 ("  zlib -6", zlib.compressobj(6, zlib.DEFLATED, 31))):
            null = _Null()
            sink = _ZlibSink(null, compressor)
            start = time.perf_counter()
            write_layer_tar(layer, sink)
            sink.close()
            row(name, time.perf_counter() - start, null.n)

        halves = [root / f"half{i}" / "fs" for i in range(2)]
        for i, h in enumerate(halves):
            make_layer(h, args.size_mb // 2, seed=i + 1)
        sizes: list[int] = []
        os.sync()
        start = time.perf_counter()
        threads = [threading.Thread(target=lambda p=h: sizes.append(
            compress_layer(p, store, CompressionConfig("gzip")).size)) for h in halves]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        row("gzip (ours), 2 layers concurrently", time.perf_counter() - start, sum(sizes),
            2 * (args.size_mb // 2) * MIB)

        start = time.perf_counter()
        again = compress_layer(layer, store, CompressionConfig("gzip"))
        first = compress_layer(layer, store, CompressionConfig("gzip"))
        print(f"determinism: two gzip exports of the layer give the same blob: {again.digest == first.digest}"
              f" ({(time.perf_counter() - start) / 2:.2f} s each without the exporter's cache)")
        store.close()


if __name__ == "__main__":
    main()
