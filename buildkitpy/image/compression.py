"""Layer compression for exports: gzip, zstd or none, as the exporters' ``compression`` options ask.

Choice of libraries (measured on the build hosts, see ``hack/bench/bench_export.py``): ISA-L's
deflate (``isal``) compresses about 10x faster than zlib at a comparable ratio and releases the GIL,
so one layer compresses in its own thread while the tar is produced and hashed in another, and
several layers run side by side. Its stream is a single deterministic gzip member (mtime 0), so an
identical layer always gives an identical blob. zstd uses ``zstandard`` with worker threads; its
multi-threaded output does not depend on the number of workers, so it is deterministic too.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping
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


def new_compressor(config: CompressionConfig) -> Compressor:
    """A streaming compressor for one blob (not thread-safe; one per blob)."""
    if config.kind == UNCOMPRESSED:
        return _Identity()
    if config.kind == GZIP:
        if config.level == 0:  # stored blocks: only zlib does exactly that
            return zlib.compressobj(0, zlib.DEFLATED, 31)
        from isal import isal_zlib

        level = _ISAL_DEFAULT_LEVEL if config.level is None else _isal_level(config.level)
        return isal_zlib.compressobj(level, isal_zlib.DEFLATED, 31)
    import zstandard

    level = DEFAULT_ZSTD_LEVEL if config.level is None else config.level
    threads = min(os.cpu_count() or 1, 8)
    return _Zstd(zstandard.ZstdCompressor(level=level, threads=threads).compressobj())


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
