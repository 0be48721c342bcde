"""Layer compression for exports: gzip, zstd or none, as the exporters' ``compression`` options ask.

Choice of libraries (measured on the build hosts, see ``hack/bench/bench_export.py``): ISA-L's
deflate (``isal``) compresses about 10x faster than zlib at a comparable ratio and releases the GIL.
A gzip layer larger than one block (``GZIP_BLOCK``) is compressed block by block on all cores, as
pigz does: each block is deflated on its own with the previous block's last 32 KiB as dictionary and
ends on a byte boundary (sync flush), the blocks are joined in order into one gzip member and the
CRC is combined. Block boundaries are fixed offsets of the uncompressed stream, so the blob is a
pure function of the layer (the number of threads never changes a byte). A layer of at most one
block is one plain ISA-L stream (mtime 0). zstd uses ``zstandard`` with worker threads; its
multi-threaded output does not depend on the number of workers, so it is deterministic too.
"""

from __future__ import annotations

import collections
import os
import struct
import threading
import zlib
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from buildkitpy.errors import InvalidArgument
from buildkitpy.image import mediatypes

GZIP = "gzip"
ZSTD = "zstd"
UNCOMPRESSED = "uncompressed"
KINDS = (GZIP, ZSTD, UNCOMPRESSED)

DEFAULT_ZSTD_LEVEL = 3
_ISAL_DEFAULT_LEVEL = 2  # ISA-L's own default: its fastest level here, ratio close to zlib -6
GZIP_BLOCK = 1 << 20  # uncompressed bytes per independently deflated block (part of the format)
_WINDOW = 32 * 1024  # deflate's window: the dictionary each block gets from the one before


@dataclass(frozen=True)
class CompressionConfig:
    kind: str = GZIP
    level: int | None = None  # None: the algorithm's default
    force: bool = False  # recompress blobs that already exist in another compression

    @property
    def variant(self) -> str:
        """What distinguishes blobs of one layer (cache key part)."""
        return f"{self.kind}:{'' if self.level is None else self.level}"


def parse_bool(value: str, option: str) -> bool:
    v = value.strip().lower()
    if v in ("", "1", "true", "t", "yes", "on"):
        return True
    if v in ("0", "false", "f", "no", "off"):
        return False
    raise InvalidArgument(f"invalid boolean value {value!r} for option {option}")


def parse_options(attrs: Mapping[str, str]) -> CompressionConfig:
    """``compression``, ``compression-level`` and ``force-compression`` exporter attributes."""
    kind = attrs.get("compression", GZIP).strip().lower() or GZIP
    if kind not in KINDS:
        raise InvalidArgument(f"unsupported layer compression {kind!r} (want gzip, zstd or uncompressed)")
    level: int | None = None
    raw = attrs.get("compression-level", "").strip()
    if raw:
        try:
            level = int(raw)
        except ValueError:
            raise InvalidArgument(f"invalid compression-level {raw!r}: not an integer") from None
        limits = {GZIP: (0, 9), ZSTD: (1, 22), UNCOMPRESSED: (-1 << 31, 1 << 31)}[kind]
        if not limits[0] <= level <= limits[1]:
            raise InvalidArgument(f"compression-level {level} out of range {limits[0]}..{limits[1]} "
                                  f"for {kind}")
        if kind == UNCOMPRESSED:
            level = None
    force = parse_bool(attrs.get("force-compression", "false"), "force-compression")
    return CompressionConfig(kind, level, force)


class Compressor(Protocol):
    def compress(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


class _Identity:
    def compress(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


def _isal_level(level: int) -> int:
    """zlib's 1..9 onto ISA-L's 1..3 (its level 0 is a poorer ratio than any zlib level)."""
    return 1 if level <= 3 else 2 if level <= 6 else 3


def compression_threads() -> int:
    """Worker threads for one blob's compression (the cores this process may use)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def new_compressor(config: CompressionConfig, threads: int | None = None) -> Compressor:
    """A streaming compressor for one blob (not thread-safe; one per blob). ``threads``: workers
    for gzip and zstd (default: ``compression_threads()``); it never changes the output."""
    if config.kind == UNCOMPRESSED:
        return _Identity()
    threads = compression_threads() if threads is None else max(1, threads)
    if config.kind == GZIP:
        if config.level == 0:  # stored blocks: only zlib does exactly that
            return zlib.compressobj(0, zlib.DEFLATED, 31)
        level = _ISAL_DEFAULT_LEVEL if config.level is None else _isal_level(config.level)
        return ParallelGzip(level, threads)
    import zstandard

    level = DEFAULT_ZSTD_LEVEL if config.level is None else config.level
    return _Zstd(zstandard.ZstdCompressor(level=level, threads=min(threads, 8)).compressobj())


class ParallelGzip:
    """gzip with ISA-L on ``threads`` threads, deterministic (see the module docstring).

    ``compress`` takes input of any size and returns the compressed bytes that are ready, in
    order; at most ``2 × threads`` blocks are in flight, so memory stays bounded whatever the
    input. ``flush`` ends the stream. Errors of a worker surface from ``compress``/``flush``.
    """

    _HEADER = struct.pack("<BBBBIBB", 0x1F, 0x8B, 8, 0, 0, 0, 0xFF)  # no name, mtime 0, OS unknown

    def __init__(self, level: int, threads: int) -> None:
        self._level = level
        self._threads = threads
        self._pending = bytearray()  # input not yet handed to a worker
        self._previous = b""  # the last block handed out (its tail is the next dictionary)
        self._inflight: collections.deque[tuple[Future, int]] = collections.deque()
        self._pool: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._crc = 0
        self._size = 0
        self._done = False

    # -- workers

    def _deflate(self, block: bytes, zdict: bytes) -> tuple[bytes, int]:
        from isal import isal_zlib

        worker = getattr(self._local, "compressor", None)
        if worker is None:  # one reusable stream and output buffer per thread; level 0 may expand
            worker = self._local.compressor = isal_zlib._ParallelCompress(
                buffersize=2 * GZIP_BLOCK + 1024, level=self._level)
        return worker.compress_and_crc(block, zdict)

    def _submit(self, block: bytes) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="gzip-block")
        zdict = self._previous[-_WINDOW:]
        self._previous = block
        self._inflight.append((self._pool.submit(self._deflate, block, zdict), len(block)))

    def _collect(self, out: list[bytes], *, wait_for: int) -> None:
        """Append finished blocks in order; wait while more than ``wait_for`` are in flight."""
        while self._inflight and (len(self._inflight) > wait_for or self._inflight[0][0].done()):
            future, n = self._inflight.popleft()
            data, crc = future.result()
            self._crc = _crc32_combine(self._crc, crc, n)
            self._size += n
            out.append(data)

    # -- Compressor

    def compress(self, data: bytes) -> bytes:
        if self._done:
            raise ValueError("compress after flush")
        self._pending += data
        out: list[bytes] = []
        # Strictly more than one block: a stream of exactly one block stays a plain stream.
        while len(self._pending) > GZIP_BLOCK:
            if self._pool is None:
                out.append(self._HEADER)
            with memoryview(self._pending) as view:
                block = bytes(view[:GZIP_BLOCK])
            del self._pending[:GZIP_BLOCK]  # cheap: CPython drops a bytearray's head in place
            self._submit(block)
            self._collect(out, wait_for=2 * self._threads)
        self._collect(out, wait_for=2 * self._threads)
        return b"".join(out)

    def flush(self) -> bytes:
        if self._done:
            return b""
        self._done = True
        try:
            if self._pool is None:  # at most one block in all: one ISA-L stream
                from isal import isal_zlib

                one = isal_zlib.compressobj(self._level, isal_zlib.DEFLATED, 31)
                return one.compress(bytes(self._pending)) + one.flush()
            out: list[bytes] = []
            if self._pending:
                self._submit(bytes(self._pending))
                self._pending.clear()
            self._collect(out, wait_for=0)
            out.append(b"\x03\x00")  # an empty final fixed-Huffman block ends the deflate stream
            out.append(struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))
            return b"".join(out)
        finally:
            self.close()

    def close(self) -> None:
        """Stop the workers (after an error the stream is abandoned)."""
        self._done = True
        if self._pool is not None:
            for future, _ in self._inflight:
                future.cancel()
            self._inflight.clear()
            self._pool.shutdown(wait=True)


def _crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    from isal import isal_zlib

    return isal_zlib.crc32_combine(crc1, crc2, len2)


class _Zstd:
    def __init__(self, obj) -> None:
        self._obj = obj

    def compress(self, data: bytes) -> bytes:
        return self._obj.compress(data)

    def flush(self) -> bytes:
        return self._obj.flush()


# ------------------------------------------------------------------ media types

_OCI_LAYER = {GZIP: "application/vnd.oci.image.layer.v1.tar+gzip",
              ZSTD: "application/vnd.oci.image.layer.v1.tar+zstd",
              UNCOMPRESSED: "application/vnd.oci.image.layer.v1.tar"}
_DOCKER_LAYER = {GZIP: "application/vnd.docker.image.rootfs.diff.tar.gzip",
                 UNCOMPRESSED: "application/vnd.docker.image.rootfs.diff.tar",
                 # Docker has no zstd layer type; BuildKit writes the OCI one in docker manifests too.
                 ZSTD: "application/vnd.oci.image.layer.v1.tar+zstd"}


def kind_of(media_type: str) -> str:
    """The compression of a layer media type; InvalidArgument for anything but a layer."""
    try:
        found = mediatypes.layer_compression(media_type)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None
    return {mediatypes.GZIP: GZIP, mediatypes.ZSTD: ZSTD, mediatypes.UNCOMPRESSED: UNCOMPRESSED}[found]


def layer_media_type(kind: str, oci: bool) -> str:
    return (_OCI_LAYER if oci else _DOCKER_LAYER)[kind]


def convert_media_type(media_type: str, oci: bool) -> str:
    """A layer media type in the manifest flavour asked for (non-distributable types are kept)."""
    if "nondistributable" in media_type or "foreign" in media_type:
        return media_type
    return layer_media_type(kind_of(media_type), oci)
