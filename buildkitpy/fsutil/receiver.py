"""The receiving side of DiffCopy as a state machine.

Feed it every packet from the sender (``receive``) and send what it returns; call
``end_of_stream`` when the stream ends. Entries are validated (``validate.StreamValidator``) and
handed to a sink — normally ``apply.DiskWriter`` — which creates them and says which contents it
needs; those are REQ'd at once, while the listing is still arriving. FIN is sent when the listing
ended and every requested file is complete.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from buildkitpy.api import fsutil_stat_pb2, fsutil_wire_pb2
from buildkitpy.fsutil import modes, packets
from buildkitpy.fsutil.apply import ApplyMode, DiskWriter, EntryCallback
from buildkitpy.fsutil.errors import DiffCopyError, RemoteError
from buildkitpy.fsutil.validate import StreamValidator

__all__ = ["EntrySink", "Receiver", "DiskWriter", "ApplyMode", "EntryCallback"]

_NOTHING: Sequence[fsutil_wire_pb2.Packet] = ()


class EntrySink(Protocol):
    def entry(self, entry_id: int, stat: fsutil_stat_pb2.Stat) -> bool:
        """Apply a validated entry; True to request its contents (regular files only)."""

    def data(self, entry_id: int, chunk: bytes) -> None: ...

    def file_done(self, entry_id: int) -> None: ...

    def finish(self) -> None:
        """Listing and contents are complete (called once, before FIN is sent)."""


class _Requested:
    __slots__ = ("stat", "received")

    def __init__(self, stat: fsutil_stat_pb2.Stat) -> None:
        self.stat = stat
        self.received = 0


class Receiver:
    def __init__(self, sink: EntrySink) -> None:
        self.sink = sink
        self._validator = StreamValidator()
        self._entries: list[fsutil_stat_pb2.Stat] = []
        self._requested: dict[int, _Requested] = {}
        self.listing_done = False
        self.fin_sent = False
        self.done = False
        # Encoded size of the packets received, for "transferring context" progress (as fsutil).
        self.bytes_received = 0
        self.files_received = 0

    @property
    def entry_count(self) -> int:
        return len(self._entries)

    def receive(self, packet: fsutil_wire_pb2.Packet, size: int | None = None
                ) -> Sequence[fsutil_wire_pb2.Packet]:
        """Handle one packet from the sender (``size``: its encoded size, if known); returns the
        packets to send back (REQ, FIN)."""
        self.bytes_received += packet.ByteSize() if size is None else size
        t = packet.type
        if t == packets.DATA:
            return self._data(packet.ID, packet.data)
        if self.done:
            return _NOTHING  # like fsutil: anything after the sender's FIN is drained
        if t == packets.STAT:
            if not packet.HasField("stat"):
                return self._end_of_listing()
            return self._stat(packet.stat)
        if t == packets.FIN:
            if not self.fin_sent:
                raise DiffCopyError("sender sent FIN before the receiver finished")
            self.done = True
            return _NOTHING
        if t == packets.ERR:
            raise RemoteError(f"error from sender: {packet.data.decode('utf-8', 'replace')}")
        raise DiffCopyError(f"sender sent an unexpected {packets.TYPE_NAMES.get(t, t)} packet")

    def end_of_stream(self) -> None:
        """The sender closed the stream; raise if the transfer is incomplete."""
        if self.done:
            return
        if not self.listing_done:
            raise DiffCopyError(f"stream ended before the end of the listing ({len(self._entries)} entries "
                                "received): truncated transfer")
        if self._requested:
            some = next(iter(self._requested.values())).stat.path
            raise DiffCopyError(f"stream ended with {len(self._requested)} requested files incomplete "
                                f"(e.g. {some!r}): truncated transfer")
        raise DiffCopyError("stream ended before the sender acknowledged FIN")

    # -- packets ---------------------------------------------------------------------------------

    def _stat(self, stat: fsutil_stat_pb2.Stat) -> Sequence[fsutil_wire_pb2.Packet]:
        if self.listing_done:
            raise DiffCopyError(f"invalid entry {stat.path!r}: sent after the end of the listing")
        self._validator.check(stat)
        entry_id = len(self._entries)
        self._entries.append(stat)
        if self.sink.entry(entry_id, stat):
            if not modes.is_regular(stat.mode) or stat.linkname:
                raise DiffCopyError(f"internal: sink asked for contents of non-file {stat.path!r}")
            self._requested[entry_id] = _Requested(stat)
            return (packets.req_packet(entry_id),)
        return _NOTHING

    def _end_of_listing(self) -> Sequence[fsutil_wire_pb2.Packet]:
        if self.listing_done:
            raise DiffCopyError("sender ended the listing twice")
        self.listing_done = True
        return self._maybe_finish()

    def _data(self, entry_id: int, data: bytes) -> Sequence[fsutil_wire_pb2.Packet]:
        req = self._requested.get(entry_id)
        if req is None:
            raise DiffCopyError(self._why_unexpected_data(entry_id))
        if data:
            req.received += len(data)
            if req.received > req.stat.size:
                raise DiffCopyError(f"sender sent more data than announced for {req.stat.path!r} "
                                    f"(size {req.stat.size}, got at least {req.received} bytes)")
            self.sink.data(entry_id, data)
            return _NOTHING
        del self._requested[entry_id]
        self.sink.file_done(entry_id)
        self.files_received += 1
        if self.listing_done:
            return self._maybe_finish()
        return _NOTHING

    def _maybe_finish(self) -> Sequence[fsutil_wire_pb2.Packet]:
        if self._requested or self.fin_sent:
            return _NOTHING
        self.sink.finish()
        self.fin_sent = True
        return (packets.fin_packet(),)

    def _why_unexpected_data(self, entry_id: int) -> str:
        if self.fin_sent:
            return f"sender sent data for entry #{entry_id} after the transfer finished"
        if not 0 <= entry_id < len(self._entries):
            return f"sender sent data for unknown entry #{entry_id} ({len(self._entries)} entries so far)"
        stat = self._entries[entry_id]
        if modes.is_regular(stat.mode) and not stat.linkname:
            return f"sender sent data for {stat.path!r} (entry #{entry_id}), which is already complete"
        kind = "hardlink" if modes.is_regular(stat.mode) else modes.describe(stat.mode)
        return (f"sender sent data for {stat.path!r} (entry #{entry_id}), which was not requested: "
                f"it is a {kind}")


def disk_receiver(dest, *, mode: ApplyMode = "fresh", owner: tuple[int, int] | None = None,
                  on_entry: EntryCallback | None = None) -> Receiver:
    """A ``Receiver`` that applies into ``dest`` with a ``DiskWriter`` (close ``receiver.sink``)."""
    return Receiver(DiskWriter(dest, mode=mode, owner=owner, on_entry=on_entry))
