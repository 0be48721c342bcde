"""DiffCopy over real gRPC on a real unix socket: attachables served by a grpc.aio server, the
daemon-side functions calling them through a channel."""

from __future__ import annotations

import asyncio
import io
import os
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import grpc
import pytest
from fsutil_helpers import build_rich_tree, manifest

from buildkitpy.api import fsutil_wire_pb2
from buildkitpy.fsutil import modes, packets
from buildkitpy.fsutil.errors import DiffCopyError
from buildkitpy.session import filesync
from buildkitpy.session.bridge import bytes_message_data
from buildkitpy.session.pipechannel import channel_over_pipe

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def serving(tmp_path: Path, *attachables, handlers=()):
    """A grpc.aio server with ``attachables`` on a unix socket, and a channel to it."""
    server = grpc.aio.server()
    for a in attachables:
        a.add_to_server(server)
    if handlers:
        server.add_generic_rpc_handlers(handlers)
    address = f"unix:{tmp_path}/attachables.sock"
    server.add_insecure_port(address)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            yield channel
    finally:
        await server.stop(None)


async def test_context_round_trip_is_exact(tmp_path):
    src = tmp_path / "ctx"
    build_rich_tree(src)
    progress: list[int] = []
    async with serving(tmp_path, filesync.FileSyncAttachable({"context": src}, reset_uid_gid=False)) as ch:
        stats = await filesync.receive_dir(ch, tmp_path / "dest", dir_name="context",
                                           progress=progress.append)
    assert manifest(tmp_path / "dest") == manifest(src)
    assert stats.entries == len(manifest(src))
    assert stats.bytes >= 5 * 1024 * 1024
    assert progress and progress[-1] >= stats.bytes and progress == sorted(progress)


async def test_client_resets_owners_by_default(tmp_path):
    src = tmp_path / "ctx"
    src.mkdir()
    (src / "f").write_text("x")
    if os.geteuid() == 0:
        os.chown(src / "f", 1234, 5678)
    async with serving(tmp_path, filesync.FileSyncAttachable({"context": src})) as ch:
        await filesync.receive_dir(ch, tmp_path / "dest", dir_name="context")
    ls = os.lstat(tmp_path / "dest" / "f")
    assert (ls.st_uid, ls.st_gid) == (0, 0) if os.geteuid() == 0 else True


async def test_include_exclude_followpaths_over_metadata(tmp_path):
    src = tmp_path / "ctx"
    for rel in ("Dockerfile.real", "src/main.go", "src/main_test.go", "node_modules/x/y.js", "docs/a.md",
                "docs/keep.md", "ünïcode/ß.txt", "with space/f"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(rel)
    os.symlink("Dockerfile.real", src / "Dockerfile")
    attachable = filesync.FileSyncAttachable({"context": src, "dockerfile": src})

    async def names(dest: Path, **kw) -> list[str]:
        await filesync.receive_dir(ch, dest, **kw)
        return sorted(str(p.relative_to(dest)) for p in dest.rglob("*"))

    async with serving(tmp_path, attachable) as ch:
        got = await names(tmp_path / "d1", dir_name="dockerfile",
                          follow_paths=["Dockerfile", "Dockerfile.dockerignore", "dockerfile"])
        assert got == ["Dockerfile", "Dockerfile.real"]
        got = await names(tmp_path / "d2", dir_name="context",
                          exclude_patterns=["node_modules", "**/*_test.go", "docs", "!docs/keep.md"])
        assert got == ["Dockerfile", "Dockerfile.real", "docs", "docs/keep.md", "src", "src/main.go",
                       "with space", "with space/f", "ünïcode", "ünïcode/ß.txt"]
        got = await names(tmp_path / "d3", dir_name="context", include_patterns=["ünïcode/*", "with space"])
        assert got == ["with space", "with space/f", "ünïcode", "ünïcode/ß.txt"]
        got = await names(tmp_path / "d4", dir_name="context", exclude_patterns=["*", "!ünïcode"])
        assert got == ["ünïcode", "ünïcode/ß.txt"]


async def test_unknown_dir_name_and_bad_pattern_are_clear_errors(tmp_path):
    (tmp_path / "ctx").mkdir()
    async with serving(tmp_path, filesync.FileSyncAttachable({"context": tmp_path / "ctx"})) as ch:
        with pytest.raises(filesync.FileSyncError, match=r"NOT_FOUND.*no access allowed to dir 'nope'") as e:
            await filesync.receive_dir(ch, tmp_path / "d1", dir_name="nope")
        assert e.value.grpc_code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(Exception, match=r"invalid pattern '\[bad'"):
            await filesync.receive_dir(ch, tmp_path / "d2", dir_name="context", exclude_patterns=["[bad"])


async def test_metadata_encoding_matches_buildkit():
    md = filesync.encode_metadata({"include-patterns": ["a b", "ß/*"], "followpaths": ["x"], "empty": []})
    assert md == [("include-patterns", "a+b"), ("include-patterns", "%C3%9F%2F%2A"),
                  ("include-patterns-encoded", "1"), ("followpaths", "x")]
    assert filesync.decode_metadata(md) == {"include-patterns": ["a b", "ß/*"],
                                            "include-patterns-encoded": ["1"], "followpaths": ["x"]}


async def test_hostile_client_cannot_escape_the_destination(tmp_path):
    """A FileSync server that announces a symlink to outside and then a file below it."""
    outside = tmp_path / "outside"
    outside.mkdir()

    async def evil(request_iterator, context):
        for s in (dict(path="link", mode=modes.MODE_SYMLINK | 0o777, linkname=str(outside)),
                  dict(path="link/pwned", mode=0o644, size=4)):
            await context.write(fsutil_wire_pb2.Packet(type=packets.STAT, stat=s).SerializeToString())
        await context.write(packets.end_of_listing().SerializeToString())
        while (msg := await context.read()) is not grpc.aio.EOF:
            p = fsutil_wire_pb2.Packet.FromString(msg)
            if p.type == packets.REQ:
                await context.write(packets.data_packet(p.ID, b"evil").SerializeToString())

    handler = grpc.method_handlers_generic_handler(filesync.FILESYNC_SERVICE, {
        "DiffCopy": grpc.stream_stream_rpc_method_handler(evil)})
    async with serving(tmp_path, handlers=(handler,)) as ch:
        with pytest.raises(DiffCopyError, match=r"'link/pwned'.*parent 'link' is a symlink"):
            await filesync.receive_dir(ch, tmp_path / "dest", dir_name="context")
    assert os.listdir(outside) == []
    assert os.listdir(tmp_path / "dest") == ["link"]


@asynccontextmanager
async def serving_over_pipe(tmp_path: Path, *attachables):
    """``serving``, but the daemon's side is a session's channel: the HTTP/2 connection run by
    ``channel_over_pipe`` on the socket's bytes (its calls have ``write_many``)."""
    server = grpc.aio.server()
    for a in attachables:
        a.add_to_server(server)
    path = f"{tmp_path}/attachables.sock"
    server.add_insecure_port(f"unix:{path}")
    await server.start()
    reader, writer = await asyncio.open_unix_connection(path)

    async def incoming():
        while data := await reader.read(64 << 10):
            yield data

    async def write_out(receive) -> None:
        async with receive:
            async for chunk in receive:
                writer.write(chunk)
                await writer.drain()

    send, receive = anyio.create_memory_object_stream[bytes](16)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(write_out, receive)
            async with channel_over_pipe(incoming(), send) as (channel, _pipe):
                yield channel
            tg.cancel_scope.cancel()
    finally:
        writer.close()
        await server.stop(None)


@pytest.mark.parametrize("over", [serving, serving_over_pipe], ids=["grpc", "session-pipe"])
async def test_local_export_round_trip_merges_into_existing_dir(tmp_path, over):
    src = tmp_path / "result"
    build_rich_tree(src, files=200, big=1_000_000)
    out = tmp_path / "out"
    (out / "many").mkdir(parents=True)
    (out / "many" / "already-there").write_text("kept")
    target = filesync.FileSendAttachable({"0": filesync.LocalDirTarget(out)})
    async with over(tmp_path, target) as ch:
        stats = await filesync.send_dir(ch, src, exporter_id="0")
    expected = manifest(src)
    got = manifest(out)
    assert got.pop("many/already-there")[4] is not None
    # the client writes everything as its own user; ignore dir mtimes changed by the kept file
    me = (os.getuid(), os.getgid())
    expected = {k: v[:2] + (me,) + v[3:] for k, v in expected.items()}
    got["many"] = got["many"][:8] + (expected["many"][8],)
    assert got == expected
    assert stats.files == sum(1 for k, v in expected.items() if v[4] is not None and v[6] in (None, k))


async def test_raw_bytes_export_and_exporter_routing(tmp_path):
    seen_md: list[dict] = []
    closed: list[bytes] = []

    class Capture(io.BytesIO):
        def close(self):
            closed.append(self.getvalue())
            super().close()

    def factory(md):
        seen_md.append(md)
        return Capture()

    targets = {"0": filesync.LocalDirTarget(tmp_path / "unused"),
               "1": filesync.FileTarget(tmp_path / "out.tar"),
               "2": filesync.WriterTarget(factory),
               "3": filesync.WriterTarget(lambda md: None)}
    payload = os.urandom(7 * 1024 * 1024 + 3)

    async def chunks():
        yield payload[:100]
        yield payload[100:]

    async def one_chunk():
        yield b"tar bytes"

    async with serving(tmp_path, filesync.FileSendAttachable(targets)) as ch:
        assert await filesync.send_bytes(ch, chunks(), exporter_id="1") == len(payload)
        assert (tmp_path / "out.tar").read_bytes() == payload
        await filesync.send_bytes(ch, chunks(), exporter_id="2", metadata={"image.name": "x,y"})
        assert closed == [payload] and seen_md == [{"image.name": "x,y"}]
        # Refusals are checked with one small message: when the client ends the call while more
        # messages are in flight, grpc-python may replace its status with a local INTERNAL error.
        with pytest.raises(filesync.FileSyncError, match="ALREADY_EXISTS"):
            await filesync.send_bytes(ch, one_chunk(), exporter_id="3")
        with pytest.raises(filesync.FileSyncError, match="NOT_FOUND.*exporter 9 not found"):
            await filesync.send_bytes(ch, one_chunk(), exporter_id="9")


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16383, 16384, 2_097_151, 2_097_152, 3 * 1024 * 1024])
def test_bytes_messages_are_encoded_as_protobuf_does(size):
    from buildkitpy.api import filesync_pb2
    from buildkitpy.session.bridge import encode_bytes_message

    data = os.urandom(size)
    encoded = encode_bytes_message(data)
    assert encoded == filesync_pb2.BytesMessage(data=data).SerializeToString()
    assert filesync_pb2.BytesMessage.FromString(encoded).data == data
    assert bytes_message_data(encoded) == data


@pytest.mark.parametrize("encoded", [
    b"\n\x03abc\n\x02xy",  # field 1 twice: the last wins
    b"\n\x03abc\x10\x01",  # an unknown field after it
    b"\x10\x01\n\x03abc",  # and before it
    b"\n\x80\x01" + b"a" * 128,  # a length of two varint bytes
    b"\n\x83\x00abc",  # a length in a longer varint than needed
    b"",
])
def test_bytes_message_data_reads_what_protobuf_reads(encoded):
    from buildkitpy.api import filesync_pb2

    assert bytes_message_data(encoded) == filesync_pb2.BytesMessage.FromString(encoded).data


@pytest.mark.parametrize("garbage", [b"\n\x05ab", b"\n", b"\n\xff\xff\xff\xff\xff\xff", b"\x0f"])
def test_bytes_message_data_refuses_what_is_no_bytes_message(garbage):
    from google.protobuf.message import DecodeError

    with pytest.raises(DecodeError):
        bytes_message_data(garbage)


@pytest.mark.parametrize("size", [1, 127, 128, 16383, 16384, 2_097_151, 2_097_152, 3 * 1024 * 1024])
def test_framed_bytes_messages_are_encoded_as_protobuf_does(size):
    from buildkitpy.api import filesync_pb2

    data = os.urandom(size)
    buf = bytearray(b"\xee" * filesync.MESSAGE_HEADROOM) + data + b"trailing bytes not in the message"
    encoded = filesync.frame_bytes_message(memoryview(buf), size)
    assert encoded == filesync_pb2.BytesMessage(data=data).SerializeToString()
    assert filesync._payload_size(encoded) == size
    with pytest.raises(ValueError):
        filesync.frame_bytes_message(memoryview(bytearray(10)), 0)


@pytest.mark.parametrize("entry_id, data", [(0, b""), (1, b""), (127, b"x"), (128, b"y" * 200),
                                            (2**32 - 1, os.urandom(70_000))])
def test_data_packets_are_encoded_as_protobuf_does(entry_id, data):
    expected = packets.data_packet(entry_id, data).SerializeToString()
    assert packets.encode_data_packet(entry_id, data) == expected
