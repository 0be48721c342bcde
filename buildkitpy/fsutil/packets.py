"""Constructors for fsutil wire packets (``fsutil.types.Packet``)."""

from __future__ import annotations

from google.protobuf.message import DecodeError

from buildkitpy.api import fsutil_stat_pb2, fsutil_wire_pb2
from buildkitpy.fsutil.errors import DiffCopyError

Packet = fsutil_wire_pb2.Packet

STAT = Packet.PACKET_STAT
REQ = Packet.PACKET_REQ
DATA = Packet.PACKET_DATA
FIN = Packet.PACKET_FIN
ERR = Packet.PACKET_ERR

# Go's sender uses 32 KiB buffers; larger chunks cost fewer messages. gRPC's default receive limit
# is 4 MiB, so stay well below it.
DEFAULT_CHUNK_SIZE = 1 << 20

TYPE_NAMES = {STAT: "STAT", REQ: "REQ", DATA: "DATA", FIN: "FIN", ERR: "ERR"}


def stat_packet(stat: fsutil_stat_pb2.Stat) -> fsutil_wire_pb2.Packet:
    return Packet(type=STAT, stat=stat)


def end_of_listing() -> fsutil_wire_pb2.Packet:
    """The STAT packet without a stat that ends the listing (encodes to zero bytes)."""
    return Packet(type=STAT)


def req_packet(entry_id: int) -> fsutil_wire_pb2.Packet:
    return Packet(type=REQ, ID=entry_id)


def data_packet(entry_id: int, data: bytes = b"") -> fsutil_wire_pb2.Packet:
    return Packet(type=DATA, ID=entry_id, data=data)


_DATA_TYPE = bytes((1 << 3, DATA))  # field 1 (type), varint


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_data_packet(entry_id: int, data: bytes = b"") -> bytes:
    """``data_packet(entry_id, data).SerializeToString()``, built directly: the Packet's
    constructor and serializer each copy a (1 MiB) chunk, this joins it once."""
    parts = [_DATA_TYPE]
    if entry_id:
        parts += (b"\x18", _varint(entry_id))  # field 3 (ID), varint
    if data:
        parts += (b"\x22", _varint(len(data)), data)  # field 4 (data), length-delimited
    return b"".join(parts)


def fin_packet() -> fsutil_wire_pb2.Packet:
    return Packet(type=FIN)


def err_packet(message: str) -> fsutil_wire_pb2.Packet:
    return Packet(type=ERR, data=message.encode("utf-8", "replace"))


def decode_packet(data: bytes) -> fsutil_wire_pb2.Packet:
    """A packet from its wire bytes; ``DiffCopyError`` when the peer sent something else (a
    truncated or corrupt message, a path that is not UTF-8)."""
    try:
        return Packet.FromString(data)
    except DecodeError as exc:
        raise DiffCopyError(f"malformed filesync packet ({len(data)} bytes): {exc}") from None
