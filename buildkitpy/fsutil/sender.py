"""The sending side of DiffCopy as a state machine: announce entries, answer REQ with DATA, FIN.

Feed it the packets the receiver sends (``receive``); it tells the driver what to do. File contents
are read by ``data_packets`` in chunks, so no file is ever held in memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from buildkitpy.api import fsutil_wire_pb2
from buildkitpy.fsutil import modes, packets
from buildkitpy.fsutil.errors import DiffCopyError, RemoteError
from buildkitpy.fsutil.walk import WalkEntry


@dataclass(frozen=True, slots=True)
class SendFile:
    """Stream the contents of entry ``entry_id`` (``Sender.data_packets``)."""

    entry_id: int
    source: str
    size: int


@dataclass(frozen=True, slots=True)
class Finish:
    """The receiver is done: send ``reply`` (FIN) and end the stream."""

    reply: fsutil_wire_pb2.Packet


class Sender:
    def __init__(self, entries: Sequence[WalkEntry], *, chunk_size: int = packets.DEFAULT_CHUNK_SIZE) -> None:
        self.entries = entries
        self.chunk_size = chunk_size
        self._requestable = {i: e for i, e in enumerate(entries)
                             if modes.is_regular(e.stat.mode)}
        self.finished = False
        self.files_sent = 0
        self.bytes_sent = 0

    def listing(self) -> Iterator[fsutil_wire_pb2.Packet]:
        """Every STAT packet, then the empty STAT that ends the listing."""
        for e in self.entries:
            yield packets.stat_packet(e.stat)
        yield packets.end_of_listing()

    def receive(self, packet: fsutil_wire_pb2.Packet) -> SendFile | Finish:
        """Handle one packet from the receiver."""
        if self.finished:
            raise DiffCopyError(f"receiver sent {packets.TYPE_NAMES.get(packet.type, packet.type)} after FIN")
        t = packet.type
        if t == packets.REQ:
            entry = self._requestable.pop(packet.ID, None)
            if entry is None:
                raise DiffCopyError(self._why_not_requestable(packet.ID))
            return SendFile(packet.ID, entry.source, entry.stat.size)
        if t == packets.FIN:
            self.finished = True
            return Finish(packets.fin_packet())
        if t == packets.ERR:
            raise RemoteError(f"error from receiver: {packet.data.decode('utf-8', 'replace')}")
        raise DiffCopyError(f"receiver sent an unexpected {packets.TYPE_NAMES.get(t, t)} packet")

    def _why_not_requestable(self, entry_id: int) -> str:
        if not 0 <= entry_id < len(self.entries):
            return f"invalid file request: no entry #{entry_id} (sent {len(self.entries)} entries)"
        stat = self.entries[entry_id].stat
        if modes.is_regular(stat.mode):
            return f"invalid file request: entry #{entry_id} {stat.path!r} was already requested"
        return f"invalid file request: entry #{entry_id} {stat.path!r} is a {modes.describe(stat.mode)}"

    def data_packets(self, request: SendFile) -> Iterator[fsutil_wire_pb2.Packet]:
        """DATA chunks of one file, then the empty DATA that ends it.

        At most the announced size is sent (the listing is the snapshot). A file that cannot be
        opened any more is sent as empty, like fsutil does.
        """
        for chunk in self.data_chunks(request):
            yield packets.data_packet(request.entry_id, chunk)

    def encoded_data_packets(self, request: SendFile) -> Iterator[bytes]:
        """``data_packets`` already encoded (``packets.encode_data_packet``: one copy of a chunk
        where building and serializing a Packet made two)."""
        for chunk in self.data_chunks(request):
            yield packets.encode_data_packet(request.entry_id, chunk)

    def data_chunks(self, request: SendFile) -> Iterator[bytes]:
        """The payloads of ``data_packets``: the file's chunks, then ``b""``."""
        try:
            fd = os.open(request.source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            yield b""
            return
        try:
            remaining = request.size
            chunk = self.chunk_size
            while remaining > 0:
                try:
                    data = os.read(fd, min(chunk, remaining))
                except OSError:
                    break
                if not data:
                    break
                remaining -= len(data)
                self.bytes_sent += len(data)
                yield data
        finally:
            os.close(fd)
        self.files_sent += 1
        yield b""
