"""Block-parallel gzip of layer blobs: valid for every gzip reader, and the same bytes whatever the
number of threads or the sizes of the writes."""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import subprocess
import tarfile
import zlib
from pathlib import Path

import pytest
from isal import isal_zlib

from buildkitpy.content.store import ContentStore
from buildkitpy.exporter.imagebuild.blobs import compress_layer
from buildkitpy.exporter.imagebuild.layertar import write_layer_tar
from buildkitpy.image import compression as comp

BLOCK = comp.GZIP_BLOCK


def _data(size: int, seed: int = 1) -> bytes:
    """Half random, half text, interleaved in pieces of odd sizes."""
    rnd = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        n = rnd.randrange(1, 300_000)
        out += rnd.randbytes(n) if rnd.random() < 0.5 else b"line %d of some text\n" % n * (n // 20 + 1)
    return bytes(out[:size])


def _gzip(data: bytes, threads: int, pieces: int, level: int | None = None) -> bytes:
    c = comp.new_compressor(comp.CompressionConfig("gzip", level), threads=threads)
    rnd = random.Random(pieces)
    out, pos = [], 0
    while pos < len(data):
        n = rnd.randrange(1, 2 * len(data) // pieces + 2)
        out.append(c.compress(data[pos:pos + n]))
        pos += n
    out.append(c.flush())
    return b"".join(out)


def test_same_bytes_for_any_threads_and_writes():
    data = _data(5 * BLOCK + 12345)
    first = _gzip(data, threads=1, pieces=3)
    for threads, pieces in ((2, 7), (4, 50), (3, 1000)):
        assert _gzip(data, threads, pieces) == first
    assert gzip.decompress(first) == data
    assert zlib.decompress(first, 31) == data  # one member: zlib's single-stream reader takes it
    assert first[:3] == b"\x1f\x8b\x08"


def test_system_gzip_checks_and_decompresses_it(tmp_path):
    data = _data(3 * BLOCK + 7, seed=2)
    path = tmp_path / "blob.gz"
    path.write_bytes(_gzip(data, threads=2, pieces=9))
    subprocess.run(["gzip", "-t", str(path)], check=True)
    out = subprocess.run(["gzip", "-dc", str(path)], check=True, capture_output=True).stdout
    assert out == data


@pytest.mark.parametrize("size", [0, 1, 1000, BLOCK - 1, BLOCK])
def test_one_block_or_less_is_one_plain_isal_stream(size):
    data = _data(size, seed=size)
    one = isal_zlib.compressobj(2, isal_zlib.DEFLATED, 31)
    plain = one.compress(data) + one.flush()
    assert _gzip(data, threads=2, pieces=5) == plain
    assert gzip.decompress(plain) == data


@pytest.mark.parametrize("size", [BLOCK + 1, 2 * BLOCK, 2 * BLOCK + 1])
def test_block_boundaries(size):
    data = _data(size, seed=size)
    blob = _gzip(data, threads=2, pieces=4)
    assert blob == _gzip(data, threads=1, pieces=1)
    assert gzip.decompress(blob) == data


@pytest.mark.parametrize("level", [1, 5, 9])
def test_levels(level):
    data = _data(2 * BLOCK + 99, seed=level)
    assert gzip.decompress(_gzip(data, threads=2, pieces=6, level=level)) == data


def test_compress_after_flush_is_refused():
    c = comp.new_compressor(comp.CompressionConfig("gzip"), threads=2)
    c.compress(_data(2 * BLOCK))
    c.flush()
    with pytest.raises(ValueError):
        c.compress(b"more")


def test_large_layer_blob(tmp_path):
    """A layer of several blocks through the whole pipeline: tar → diffID, gzip → digest."""
    root = tmp_path / "snap" / "fs"
    (root / "d").mkdir(parents=True)
    (root / "d" / "big").write_bytes(_data(4 * BLOCK + 333, seed=9))
    (root / "d" / "small").write_bytes(b"x" * 100)
    (root / "random").write_bytes(os.urandom(BLOCK // 2))

    class Sink:
        def __init__(self) -> None:
            self.parts: list[bytes] = []

        def write(self, data: bytes) -> int:
            self.parts.append(bytes(data))
            return len(data)

    sink = Sink()
    write_layer_tar(root, sink)
    raw = b"".join(sink.parts)
    store = ContentStore(tmp_path / "root")
    blob = compress_layer(root, store, comp.CompressionConfig("gzip"))
    data = store.read(blob.digest)
    assert blob.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert blob.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert blob.size == len(data)
    assert gzip.decompress(data) == raw
    assert data == _gzip(raw, threads=1, pieces=2)  # the tar's own chunking does not matter
    with tarfile.open(fileobj=gzip.open(store.path(blob.digest))) as t:
        assert sorted(t.getnames()) == ["d", "d/big", "d/small", "random"]
    for kind in ("zstd", "uncompressed"):
        other = compress_layer(root, store, comp.CompressionConfig(kind))
        assert other.diff_id == blob.diff_id
    assert not any(Path(tmp_path / "root" / "content" / "ingest").iterdir())
