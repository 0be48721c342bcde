"""Filesync over gRPC: the DiffCopy drivers for both ends of a session.

Daemon side (the gRPC *client* of the build client's attachables):
- ``receive_dir``: pull a local source (``FileSync.DiffCopy``; we are the receiver).
- ``send_dir``: local exporter (``FileSend.DiffCopy`` carrying fsutil Packets; we are the sender).
- ``send_bytes``: tar/oci exporters (``FileSend.DiffCopy`` carrying raw ``BytesMessage`` chunks).

Client side (attachables served over the session):
- ``FileSyncAttachable``: serves named directories as the sender.
- ``FileSendAttachable``: receives exports into a ``LocalDirTarget`` or a writer target.

``FileSend.DiffCopy`` is declared with ``BytesMessage``, but the local exporter puts the encoding of
a ``Packet`` in each message (Go's codec marshals whatever message it is handed). So that method is
served and called with raw bytes, and each side decides how to parse them.

The protocol logic lives in ``buildkitpy.fsutil``; this module only moves packets.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import quote_plus, unquote_plus

import anyio
import grpc

from buildkitpy import errors
from buildkitpy.api import filesync_pb2, fsutil_stat_pb2, fsutil_wire_pb2
from buildkitpy.fsutil import packets
from buildkitpy.fsutil.apply import ApplyMode, ContentHasher, Differ, DiskWriter, EntryCallback
from buildkitpy.fsutil.errors import ApplyError, DiffCopyError, RemoteError
from buildkitpy.fsutil.patterns import PatternError
from buildkitpy.fsutil.receiver import Receiver
from buildkitpy.fsutil.sender import Finish, Sender, SendFile
from buildkitpy.fsutil.threaded import ThreadedSink
from buildkitpy.fsutil.walk import WalkEntry, WalkError, walk
from buildkitpy.session.bridge import bytes_message_prefix, encode_bytes_message

__all__ = [
    "FILESYNC_DIFFCOPY", "FILESEND_DIFFCOPY", "TransferStats", "FileSyncError",
    "receive_dir", "send_dir", "send_bytes", "send_messages", "frame_bytes_message",
    "FileSyncAttachable", "FileSendAttachable", "LocalDirTarget", "DirTarget", "FileTarget",
    "WriterTarget",
]

FILESYNC_SERVICE = "moby.filesync.v1.FileSync"
FILESEND_SERVICE = "moby.filesync.v1.FileSend"
FILESYNC_DIFFCOPY = f"/{FILESYNC_SERVICE}/DiffCopy"
FILESEND_DIFFCOPY = f"/{FILESEND_SERVICE}/DiffCopy"

KEY_DIR_NAME = "dir-name"
KEY_INCLUDE_PATTERNS = "include-patterns"
KEY_EXCLUDE_PATTERNS = "exclude-patterns"
KEY_FOLLOW_PATHS = "followpaths"
KEY_EXPORTER_ID = "buildkit-attachable-exporter-id"
KEY_EXPORTER_META_PREFIX = "exporter-md-"
KEY_EXPORTER_MULTI_PLATFORM = "buildkit-exporter-multi-platform"

# BuildKit splits raw exporter output so messages stay well below gRPC's 4 MiB default limit.
MAX_BYTES_CHUNK = 3 * 1024 * 1024
# Room before a payload for a BytesMessage's tag and length (a varint of up to 4 bytes: < 256 MiB).
MESSAGE_HEADROOM = 5
_PROGRESS_INTERVAL = 0.1  # seconds between progress callbacks
# A sender writes packets in batches of about this many bytes (a file's 1 MiB chunk is one alone).
_SEND_BATCH = 256 << 10


class FileSyncError(errors.BuildkitpyError):
    """A filesync call failed on the other side or in transport; keeps the gRPC status code."""

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.UNKNOWN) -> None:
        super().__init__(message)
        self.grpc_code = code


@dataclass
class TransferStats:
    entries: int = 0
    files: int = 0
    bytes: int = 0  # file content bytes
    seconds: float = 0.0
    kept: int = 0  # entries already in dest with the same metadata (differ="metadata")
    deleted: int = 0  # entries in dest the client no longer has (mode="sync")
    modified: bool = True  # False when dest was left exactly as it was (an unchanged sync)
    # receive_dir(collect_files=True): DiskWriter.files_as_stated
    files_as_stated: dict[str, tuple[int, int, int, int, int]] | None = None


# -- transport adapters ----------------------------------------------------------------------------


class _PacketStream(Protocol):
    async def read(self) -> fsutil_wire_pb2.Packet | None: ...  # None at end of stream

    async def write(self, packet: fsutil_wire_pb2.Packet) -> None: ...

    async def write_encoded(self, messages: list[bytes]) -> None: ...  # packets' encodings, in order

    async def done_writing(self) -> None: ...


class _ClientCallStream:
    """A grpc.aio stream-stream call whose messages are Packet encodings."""

    def __init__(self, call: Any) -> None:
        self.call = call

    async def read(self) -> fsutil_wire_pb2.Packet | None:
        msg = await self.call.read()
        if msg is grpc.aio.EOF:
            return None
        return packets.decode_packet(msg)

    async def write(self, packet: fsutil_wire_pb2.Packet) -> None:
        await self.call.write(packet.SerializeToString())

    async def write_encoded(self, messages: list[bytes]) -> None:
        write_many = getattr(self.call, "write_many", None)  # a PipeCall's (session calls)
        if write_many is not None:
            await write_many(messages)
            return
        for message in messages:
            await self.call.write(message)

    async def done_writing(self) -> None:
        await self.call.done_writing()


class _ConsumedCallStream(_ClientCallStream):
    """A call of a :class:`~buildkitpy.session.pipechannel.PipeChannel`: the packets go to a
    handler as they are received (``PipeCall.consume``), not to a task reading them one by one."""

    async def consume(self, handle: Callable[[fsutil_wire_pb2.Packet, int], None]) -> None:
        """``handle(packet, encoded_size)`` for every packet until the call ends with OK."""
        decode = packets.decode_packet

        def on_message(message: bytes) -> None:
            handle(decode(message), len(message))

        self.call.consume(on_message)
        await self.call.consumed_all()


class _ServerContextStream:
    """The server side of a stream-stream call (``context.read``/``write``) carrying Packets."""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self.context = context

    async def read(self) -> fsutil_wire_pb2.Packet | None:
        msg = await self.context.read()
        if msg is grpc.aio.EOF:
            return None
        return packets.decode_packet(msg)

    async def write(self, packet: fsutil_wire_pb2.Packet) -> None:
        await self.context.write(packet.SerializeToString())

    async def write_encoded(self, messages: list[bytes]) -> None:
        for message in messages:
            await self.context.write(message)

    async def done_writing(self) -> None:
        pass  # the server half-closes by returning


def _channel_of(channel_or_session: Any) -> grpc.aio.Channel:
    return getattr(channel_or_session, "channel", channel_or_session)


def _raw_stream_stream(channel: grpc.aio.Channel, method: str):
    return channel.stream_stream(method, request_serializer=None, response_deserializer=None)


async def _rpc_error(what: str, err: grpc.aio.AioRpcError | asyncio.InvalidStateError,
                     call: Any) -> FileSyncError:
    """The call's own final status when it has one: a write into a call the server already ended
    fails with a generic INTERNAL error, while the server's real answer is in the call status."""
    if isinstance(err, grpc.aio.AioRpcError):
        code, details = err.code(), err.details()
    else:  # writing into a call that already finished
        code, details = grpc.StatusCode.UNKNOWN, str(err)
    with anyio.move_on_after(1):
        try:
            final = await call.code()
            if final != grpc.StatusCode.OK:
                code, details = final, await call.details()
        except Exception:  # noqa: BLE001 - keep the original error
            pass
    return FileSyncError(f"{what}: {code.name}: {details}", code)


# -- protocol pumps (shared by both ends) ----------------------------------------------------------


async def _run_receiver(stream: _PacketStream, receiver: Receiver,
                        progress: Callable[[int], None] | None, *, drain: bool) -> None:
    """Feed ``receiver`` from ``stream``; its replies go out through a single writer task.

    After the sender's FIN, ``drain`` reads on until the stream ends (a gRPC client waits for the
    server's status); a server returns at once, which ends the call.
    """
    send, pending = anyio.create_memory_object_stream[fsutil_wire_pb2.Packet](math.inf)

    async def writer() -> None:
        async with pending:
            async for packet in pending:
                await stream.write(packet)
        await stream.done_writing()

    last_report = 0.0

    def handle(packet: fsutil_wire_pb2.Packet, size: int | None = None) -> None:
        nonlocal last_report
        for reply in receiver.receive(packet, size):
            send.send_nowait(reply)
        if receiver.fin_sent:
            send.close()  # FIN is the last thing a receiver sends
        if progress is not None:
            now = time.monotonic()
            if now - last_report >= _PROGRESS_INTERVAL:
                last_report = now
                progress(receiver.bytes_received)

    try:
        async with _single_error(), anyio.create_task_group() as tg:
            tg.start_soon(writer)
            with send:
                if drain and isinstance(stream, _ConsumedCallStream):
                    await stream.consume(handle)
                    receiver.end_of_stream()
                else:
                    while True:
                        packet = await stream.read()
                        if packet is None:
                            receiver.end_of_stream()
                            break
                        handle(packet)
                        if receiver.done and not drain:
                            break
    except (DiffCopyError, ApplyError) as exc:
        await _send_err(stream, exc)
        raise
    if progress is not None:
        progress(receiver.bytes_received)


async def _run_sender(stream: _PacketStream, sender: Sender) -> None:
    """Announce the listing and serve REQs until the receiver's FIN, from one writer task.

    Packets go out in batches of up to ``_SEND_BATCH`` bytes (``write_encoded``): a write per
    packet was ~300 writes for a busybox export (STATs of ~100 bytes), each its own HTTP/2 frame,
    flush and wake-up on the event loop every build's traffic shares."""
    requests, incoming = anyio.create_memory_object_stream[SendFile | Finish](math.inf)
    batch: list[bytes] = []
    batched = 0

    async def flush() -> None:
        nonlocal batch, batched
        if batch:
            out, batch, batched = batch, [], 0
            await stream.write_encoded(out)

    async def add(packet: fsutil_wire_pb2.Packet | bytes) -> None:
        nonlocal batched
        encoded = packet if isinstance(packet, bytes) else packet.SerializeToString()
        batch.append(encoded)
        batched += len(encoded) + 16
        if batched >= _SEND_BATCH:
            await flush()

    async def serve(item: SendFile | Finish) -> bool:
        if isinstance(item, Finish):
            await add(item.reply)
            await flush()
            await stream.done_writing()
            return True
        for encoded in sender.encoded_data_packets(item):
            await add(encoded)
        return False

    async def serve_queued() -> bool:
        """Serve the requests already here (without waiting for more); True after FIN."""
        while True:
            try:
                item = incoming.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream):
                return False
            if await serve(item):
                return True

    async def writer() -> None:
        async with incoming:
            for packet in sender.listing():
                await add(packet)
                if not batch and await serve_queued():  # a batch went out: interleave requested files
                    return
            await flush()
            while True:
                if await serve_queued():
                    return
                await flush()  # everything asked for so far is out: wait for more requests
                try:
                    item = await incoming.receive()
                except anyio.EndOfStream:
                    break
                if await serve(item):
                    return
        raise DiffCopyError("receiver closed the stream without FIN")

    try:
        async with _single_error(), anyio.create_task_group() as tg:
            tg.start_soon(writer)
            with requests:
                while True:
                    packet = await stream.read()
                    if packet is None:
                        break
                    action = sender.receive(packet)
                    requests.send_nowait(action)
                    if isinstance(action, Finish):
                        break  # like fsutil: the sender is done once it answered FIN
    except (DiffCopyError, ApplyError) as exc:
        await _send_err(stream, exc)
        raise


class _single_error:
    """Re-raise a task group's failure as the plain exception (the first that is not a cancellation)."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if isinstance(exc, BaseExceptionGroup):
            raise _first_leaf(exc) from None
        return False


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    cancelled = anyio.get_cancelled_exc_class()
    leaves: list[BaseException] = []

    def collect(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for sub in e.exceptions:
                collect(sub)
        else:
            leaves.append(e)

    collect(group)
    for leaf in leaves:
        if not isinstance(leaf, cancelled):
            return leaf
    return leaves[0] if leaves else group


async def _send_err(stream: _PacketStream, exc: BaseException) -> None:
    with anyio.move_on_after(1), _suppress_all():
        await stream.write(packets.err_packet(str(exc)))


class _suppress_all:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> bool:
        return exc_info[0] is not None and issubclass(exc_info[0], Exception)  # type: ignore[arg-type]


# -- metadata --------------------------------------------------------------------------------------


def encode_metadata(opts: Mapping[str, Sequence[str]]) -> list[tuple[str, str]]:
    """Multi-valued gRPC metadata like BuildKit's ``encodeOpts``: non-ASCII → url-quoted + ``-encoded``."""
    md: list[tuple[str, str]] = []
    for key, values in opts.items():
        values = [v for v in values]
        if not values:
            continue
        if any(not v.isascii() for v in values):
            md.extend((key, quote_plus(v, safe="")) for v in values)
            md.append((key + "-encoded", "1"))
        else:
            md.extend((key, v) for v in values)
    return md


def decode_metadata(md: Iterable[tuple[str, str | bytes]] | None) -> dict[str, list[str]]:
    """Inverse of ``encode_metadata`` (keys lower-case, values in order)."""
    raw: dict[str, list[str]] = {}
    for key, value in md or ():
        if isinstance(value, bytes):
            continue
        raw.setdefault(key.lower(), []).append(value)
    out: dict[str, list[str]] = {}
    for key, values in raw.items():
        flag = raw.get(key + "-encoded")
        if flag and flag[0].strip().lower() in ("1", "t", "true"):
            out[key] = [unquote_plus(v) for v in values]
        else:
            out[key] = values
    return out


# -- daemon side -----------------------------------------------------------------------------------


async def receive_dir(channel: Any, dest: Path, *, dir_name: str, include_patterns: Sequence[str] = (),
                      exclude_patterns: Sequence[str] = (), follow_paths: Sequence[str] = (),
                      progress: Callable[[int], None] | None = None, mode: ApplyMode = "fresh",
                      differ: Differ = "none", on_entry: EntryCallback | None = None,
                      disk_thread: bool = False, fine_mtimes_only: bool = False,
                      content_hasher: ContentHasher | None = None,
                      previous_digests: Mapping[str, str] | None = None,
                      previous_files: Mapping[str, tuple[int, int, int, int, int]] | None = None,
                      collect_files: bool = False,
                      make_writable: Callable[[], Path] | None = None) -> TransferStats:
    """Pull the client's directory ``dir_name`` into ``dest`` (FileSync.DiffCopy, we receive).

    ``dest`` must be empty in the default ``fresh`` mode. ``mode="sync"`` turns a previous copy in
    ``dest`` into the client's current tree (entries it no longer has are deleted); with
    ``differ="metadata"`` only entries whose metadata changed are requested and rewritten, like
    BuildKit's incremental context transfer; ``fine_mtimes_only`` keeps only files whose mtime has
    sub-second digits (for a previous copy that may come from another directory).
    ``progress(bytes_so_far)`` is called as the transfer goes (for "transferring <name>:"
    statuses); ``on_entry(stat, sha256_hex | None)`` for every applied entry (``content_hasher``,
    ``previous_digests``, ``previous_files``, ``collect_files`` and ``make_writable``: see
    ``DiskWriter``). ``disk_thread`` moves
    file creation off the event loop (``ThreadedSink``); it is off by default because on 2 busy
    cores the GIL hand-offs cost more than they overlap.
    Raises ``DiffCopyError`` if the client breaks the protocol, ``RemoteError`` if it aborts,
    ``FileSyncError`` for call failures (e.g. NOT_FOUND for an unshared dir name).
    """
    started = time.monotonic()
    md = [(KEY_DIR_NAME, dir_name)] + encode_metadata({
        KEY_INCLUDE_PATTERNS: include_patterns,
        KEY_EXCLUDE_PATTERNS: exclude_patterns,
        KEY_FOLLOW_PATHS: follow_paths,
    })
    if not dir_name.isascii():
        md = [(KEY_DIR_NAME, quote_plus(dir_name, safe="")), (KEY_DIR_NAME + "-encoded", "1")] + md[1:]
    if disk_thread and differ != "none" and mode != "fresh":
        raise ValueError("disk_thread cannot be combined with a differ: it requests every file up front")
    disk = DiskWriter(dest, mode=mode, on_entry=on_entry, differ=differ, fine_mtimes_only=fine_mtimes_only,
                      content_hasher=content_hasher, previous_digests=previous_digests,
                      previous_files=previous_files, collect_files=collect_files,
                      make_writable=make_writable)
    writer: DiskWriter | ThreadedSink = ThreadedSink(disk) if disk_thread else disk
    receiver = Receiver(writer)
    call = _raw_stream_stream(_channel_of(channel), FILESYNC_DIFFCOPY)(metadata=md)
    stream = _ConsumedCallStream(call) if hasattr(call, "consume") else _ClientCallStream(call)
    try:
        await _run_receiver(stream, receiver, progress, drain=True)
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
        raise await _rpc_error(f"receiving {dir_name!r} from the client", exc, call) from None
    finally:
        call.cancel()
        writer.close()
    return TransferStats(receiver.entry_count, writer.files_written, writer.bytes_written,
                         time.monotonic() - started, disk.entries_kept, disk.entries_deleted, disk.modified,
                         disk.files_as_stated)


async def send_dir(channel: Any, src: Path, *, exporter_id: str = "0",
                   follow_top_level_symlinks: bool = False,
                   metadata: Mapping[str, str] | None = None,
                   extra_files: Sequence[tuple[str, Path]] = (),
                   walked: list[WalkEntry] | None = None) -> TransferStats:
    """Local exporter: send ``src`` to the client's FileSend target ``exporter_id`` (we send).

    ``metadata`` adds request metadata (e.g. ``buildkit-exporter-multi-platform: 1``);
    ``extra_files`` are (path in the output, local file) sent as well (mode 0600, owned by root),
    e.g. the provenance statement; an output file of the same path is replaced. ``walked``: the
    walk of ``src`` when the caller has it (``fsutil.walk.WalkMemo``).
    """
    started = time.monotonic()
    entries: list[WalkEntry] = walked if walked is not None else await anyio.to_thread.run_sync(
        lambda: walk(src, follow_top_level_symlinks=follow_top_level_symlinks))
    for rel, path in extra_files:
        entries = _with_file(entries, rel, path)
    sender = Sender(entries)
    md = [(k, v) for k, v in (metadata or {}).items()] + [(KEY_EXPORTER_ID, str(exporter_id))]
    call = _raw_stream_stream(_channel_of(channel), FILESEND_DIFFCOPY)(metadata=md)
    try:
        await _run_sender(_ClientCallStream(call), sender)
        await _expect_ok(call)
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
        raise await _rpc_error(f"sending {str(src)!r} to the client (exporter {exporter_id})", exc,
                              call) from None
    finally:
        call.cancel()
    return TransferStats(len(entries), sender.files_sent, sender.bytes_sent, time.monotonic() - started)


def _with_file(entries: list[WalkEntry], rel: str, path: Path) -> list[WalkEntry]:
    """``entries`` with a regular file at ``rel`` in walk order (parents must be in ``entries``)."""
    info = os.stat(path)
    entry = WalkEntry(fsutil_stat_pb2.Stat(path=rel, mode=0o600, size=info.st_size,
                                           modTime=info.st_mtime_ns), str(path))
    key = rel.split("/")
    out = [e for e in entries if e.stat.path != rel]
    at = next((i for i, e in enumerate(out) if e.stat.path.split("/") > key), len(out))
    return out[:at] + [entry] + out[at:]


def frame_bytes_message(buf: memoryview, size: int) -> bytes:
    """The ``BytesMessage`` encoding of the ``size`` payload bytes at ``buf[MESSAGE_HEADROOM:]``,
    made with one copy: its tag and length are written into the headroom just before them."""
    if not 0 < size <= MAX_BYTES_CHUNK:
        raise ValueError(f"a framed payload must have 1 to {MAX_BYTES_CHUNK} bytes, not {size}")
    prefix = bytes_message_prefix(size)
    start = MESSAGE_HEADROOM - len(prefix)
    buf[start:MESSAGE_HEADROOM] = prefix
    return bytes(buf[start:MESSAGE_HEADROOM + size])


async def send_bytes(channel: Any, chunks: AsyncIterable[bytes], *, exporter_id: str = "0",
                     metadata: Mapping[str, str] | None = None) -> int:
    """tar/oci exporters: stream raw bytes to the client's FileSend target ``exporter_id``.

    ``metadata`` becomes ``exporter-md-<key>`` request metadata. Returns the bytes sent.
    """
    async def messages() -> AsyncIterator[bytes]:
        async for chunk in chunks:
            view = memoryview(chunk)
            for i in range(0, len(view), MAX_BYTES_CHUNK):
                part = chunk if len(chunk) <= MAX_BYTES_CHUNK else bytes(view[i:i + MAX_BYTES_CHUNK])
                if part:
                    yield encode_bytes_message(part)

    return await send_messages(channel, messages(), exporter_id=exporter_id, metadata=metadata)


async def send_messages(channel: Any, messages: AsyncIterable[bytes], *, exporter_id: str = "0",
                        metadata: Mapping[str, str] | None = None) -> int:
    """``send_bytes`` for output already encoded as ``BytesMessage``s of at most
    ``MAX_BYTES_CHUNK`` payload bytes each (``frame_bytes_message``). Returns the payload bytes sent.
    """
    md = [(KEY_EXPORTER_META_PREFIX + k.lower(), v) for k, v in (metadata or {}).items()]
    md.append((KEY_EXPORTER_ID, str(exporter_id)))
    call = _raw_stream_stream(_channel_of(channel), FILESEND_DIFFCOPY)(metadata=md)
    total = 0
    try:
        async for message in messages:
            if call.done():
                break  # the client already answered (e.g. ALREADY_EXISTS); _expect_ok reports it
            await call.write(message)
            total += _payload_size(message)
        if not call.done():
            await call.done_writing()
        await _expect_ok(call)
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
        raise await _rpc_error(f"sending exporter output to the client (exporter {exporter_id})", exc,
                              call) from None
    finally:
        call.cancel()
    return total


def _payload_size(message: bytes) -> int:
    """The payload size of an encoded ``BytesMessage`` (its length varint; 0 for an empty one)."""
    size = shift = 0
    for i in range(1, min(len(message), 6)):
        size |= (message[i] & 0x7F) << shift
        if message[i] < 0x80:
            break
        shift += 7
    return size


async def _expect_ok(call: Any) -> None:
    while await call.read() is not grpc.aio.EOF:
        pass
    code = await call.code()
    if code != grpc.StatusCode.OK:
        raise FileSyncError(f"client failed: {code.name}: {await call.details()}", code)


# -- client side -----------------------------------------------------------------------------------


def _stream_handler(fn) -> grpc.RpcMethodHandler:
    return grpc.stream_stream_rpc_method_handler(fn, request_deserializer=None, response_serializer=None)


class FileSyncAttachable:
    """Client side: serve named directories to the daemon (FileSync.DiffCopy, we send).

    The daemon picks a directory with ``dir-name`` and narrows it with ``include-patterns``,
    ``exclude-patterns`` and ``followpaths``. ``reset_uid_gid`` sends every owner as 0:0, as
    buildctl and buildx do.
    """

    def __init__(self, dirs: Mapping[str, Path | str], *, reset_uid_gid: bool = True) -> None:
        self.dirs = {name: Path(path) for name, path in dirs.items()}
        self.reset_uid_gid = reset_uid_gid

    def add_to_server(self, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            FILESYNC_SERVICE, {"DiffCopy": _stream_handler(self.diff_copy)}),))

    def method_names(self) -> list[str]:
        return [FILESYNC_DIFFCOPY]

    async def diff_copy(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        opts = decode_metadata(context.invocation_metadata())
        name = (opts.get(KEY_DIR_NAME) or [""])[0]
        root = self.dirs.get(name)
        if root is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"no access allowed to dir {name!r}: the client shares "
                                f"{sorted(self.dirs) or 'no directories'}")
            return  # abort raises; grpc has no type stubs to say so
        stream = _ServerContextStream(context)
        try:
            entries = await anyio.to_thread.run_sync(lambda: walk(
                root, include_patterns=opts.get(KEY_INCLUDE_PATTERNS, ()),
                exclude_patterns=opts.get(KEY_EXCLUDE_PATTERNS, ()),
                follow_paths=opts.get(KEY_FOLLOW_PATHS, ()), reset_uid_gid=self.reset_uid_gid))
        except PatternError as exc:
            await _send_err(stream, exc)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"dir {name!r}: {exc}")
        except WalkError as exc:
            await _send_err(stream, exc)
            await context.abort(grpc.StatusCode.UNKNOWN, f"dir {name!r}: {exc}")
        try:
            await _run_sender(stream, Sender(entries))
        except (DiffCopyError, RemoteError) as exc:
            await context.abort(exc.grpc_code, f"sending dir {name!r}: {exc}")


class LocalDirTarget:
    """Export destination directory: existing files are kept, received ones are owned by us."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)


DirTarget = LocalDirTarget


class WriterTarget:
    """Export destination for raw bytes (tar/oci/docker): a binary writer, or a factory
    ``f(exporter_metadata) -> writer | None`` (None answers ALREADY_EXISTS, like BuildKit).

    A writer given directly is flushed but not closed; one from a factory is closed at the end.
    """

    def __init__(self, writer: BinaryIO | Callable[[dict[str, str]], BinaryIO | None]) -> None:
        self.writer = writer

    def open(self, metadata: dict[str, str]) -> tuple[BinaryIO | None, bool]:
        """The writer and whether we must close it."""
        if callable(self.writer) and not hasattr(self.writer, "write"):
            return self.writer(metadata), True
        return self.writer, False  # type: ignore[return-value]


class FileTarget(WriterTarget):
    """Export destination file for raw bytes (created or truncated when the export starts)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        super().__init__(lambda _md: open(self.path, "wb"))


Target = LocalDirTarget | WriterTarget


class FileSendAttachable:
    """Client side: receive exporter output (FileSend.DiffCopy), routed by
    ``buildkit-attachable-exporter-id`` to one of ``targets`` (keyed by exporter index)."""

    def __init__(self, targets: Mapping[str | int, Target]) -> None:
        self.targets = {str(k): v for k, v in targets.items()}

    def add_to_server(self, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            FILESEND_SERVICE, {"DiffCopy": _stream_handler(self.diff_copy)}),))

    def method_names(self) -> list[str]:
        return [FILESEND_DIFFCOPY]

    async def diff_copy(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        md = context.invocation_metadata() or ()
        opts = decode_metadata(md)
        exporter_id = (opts.get(KEY_EXPORTER_ID) or ["0"])[0].strip() or "0"
        target = self.targets.get(exporter_id)
        if target is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"exporter {exporter_id} not found")
            return  # abort raises; grpc has no type stubs to say so
        if isinstance(target, LocalDirTarget):
            await self._receive_dir(target, context)
        else:
            exporter_md = {k[len(KEY_EXPORTER_META_PREFIX):]: ",".join(v) for k, v in opts.items()
                           if k.startswith(KEY_EXPORTER_META_PREFIX)}
            await self._receive_bytes(target, exporter_md, context)

    async def _receive_dir(self, target: LocalDirTarget, context: grpc.aio.ServicerContext) -> None:
        try:
            target.path.mkdir(mode=0o755, parents=True, exist_ok=True)  # buildctl's MkdirAll(dir, 0755)
            writer = DiskWriter(target.path, mode="merge", owner=(os.getuid(), os.getgid()))
        except (OSError, ApplyError) as exc:
            await context.abort(grpc.StatusCode.INTERNAL, f"cannot write to {str(target.path)!r}: {exc}")
        try:
            await _run_receiver(_ServerContextStream(context), Receiver(writer), None, drain=False)
        except (DiffCopyError, RemoteError, ApplyError) as exc:
            await context.abort(exc.grpc_code, f"receiving into {str(target.path)!r}: {exc}")
        finally:
            writer.close()

    async def _receive_bytes(self, target: WriterTarget, exporter_md: dict[str, str],
                             context: grpc.aio.ServicerContext) -> None:
        try:
            out, owned = target.open(exporter_md)
        except OSError as exc:
            await context.abort(grpc.StatusCode.INTERNAL, f"cannot open export target: {exc}")
            return  # abort raises; grpc has no type stubs to say so
        if out is None:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, "target already exists")
            return  # abort raises; grpc has no type stubs to say so
        try:
            while True:
                msg = await context.read()
                if msg is grpc.aio.EOF:
                    break
                data = filesync_pb2.BytesMessage.FromString(msg).data
                if data:
                    out.write(data)
            out.flush()
        except OSError as exc:
            await context.abort(grpc.StatusCode.INTERNAL, f"cannot write export output: {exc}")
        finally:
            if owned:
                out.close()
