"""Receiver + DiskWriter without sockets: exact round trips, merge mode, and hostile senders."""

from __future__ import annotations

import hashlib
import os

import pytest
from fsutil_helpers import build_rich_tree, manifest, pump

from buildkitpy.api import fsutil_stat_pb2
from buildkitpy.fsutil import modes, packets, validate
from buildkitpy.fsutil.apply import DiskWriter
from buildkitpy.fsutil.errors import ApplyError, DiffCopyError, RemoteError
from buildkitpy.fsutil.receiver import Receiver
from buildkitpy.fsutil.sender import Sender
from buildkitpy.fsutil.walk import walk

DIR = modes.MODE_DIR | 0o755
FILE = 0o644
LINK = modes.MODE_SYMLINK | 0o777


def test_round_trip_is_exact(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    build_rich_tree(src, files=300, big=300_000)
    digests: dict[str, str | None] = {}
    receiver = Receiver(DiskWriter(dest, on_entry=lambda s, d: digests.__setitem__(s.path, d)))
    pump(Sender(walk(src)), receiver)
    assert receiver.done
    assert manifest(dest) == manifest(src)
    assert digests["big.bin"] == hashlib.sha256((src / "big.bin").read_bytes()).hexdigest()
    assert digests["many"] is None and digests["link-abs"] is None


def test_fresh_mode_refuses_a_non_empty_destination(tmp_path):
    (tmp_path / "junk").write_text("x")
    with pytest.raises(ApplyError, match="not empty"):
        DiskWriter(tmp_path)


def test_merge_mode_keeps_existing_and_replaces_streamed(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    (src / "dir").mkdir(parents=True)
    (src / "dir" / "new").write_text("new")
    (src / "file-over-dir").write_text("was a dir")
    (src / "same").write_text("updated")
    (dest / "dir").mkdir(parents=True)
    (dest / "dir" / "kept").write_text("kept")
    (dest / "file-over-dir" / "sub").mkdir(parents=True)
    (dest / "same").write_text("old contents that are longer")
    pump(Sender(walk(src)), Receiver(DiskWriter(dest, mode="merge", owner=(os.getuid(), os.getgid()))))
    assert (dest / "dir" / "kept").read_text() == "kept"
    assert (dest / "dir" / "new").read_text() == "new"
    assert (dest / "file-over-dir").read_text() == "was a dir"
    assert (dest / "same").read_text() == "updated"


def test_merge_mode_replaces_a_planted_symlink_instead_of_following_it(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(outside, dest / "sub")
    r = Receiver(DiskWriter(dest, mode="merge"))
    feed(r, stat("sub", DIR), stat("sub/pwned", FILE, size=3))
    r.receive(packets.data_packet(1, b"bad"))
    r.receive(packets.data_packet(1))
    r.receive(packets.end_of_listing())
    assert os.listdir(outside) == []
    assert (dest / "sub").is_dir() and not (dest / "sub").is_symlink()
    assert (dest / "sub" / "pwned").read_bytes() == b"bad"


# -- hostile senders ---------------------------------------------------------------------------


def stat(path: str, mode: int, *, size: int = 0, linkname: str = "") -> fsutil_stat_pb2.Stat:
    return fsutil_stat_pb2.Stat(path=path, mode=mode, size=size, linkname=linkname, modTime=1)


def feed(receiver: Receiver, *stats: fsutil_stat_pb2.Stat) -> list:
    out = []
    for s in stats:
        out.extend(receiver.receive(packets.stat_packet(s)))
    return out


@pytest.fixture
def sandbox(tmp_path):
    """A destination next to an 'outside' directory whose contents must never change."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("untouched")
    dest = tmp_path / "dest"
    receiver = Receiver(DiskWriter(dest))
    yield receiver, dest, outside
    receiver.sink.close()
    assert sorted(os.listdir(outside)) == ["precious"]
    assert (outside / "precious").read_text() == "untouched"
    assert sorted(os.listdir(tmp_path)) == ["dest", "outside"]


def expect_error(receiver: Receiver, *stats, match: str) -> None:
    with pytest.raises(DiffCopyError, match=match):
        feed(receiver, *stats)


def test_absolute_path(sandbox):
    r, dest, outside = sandbox
    expect_error(r, stat(str(outside / "evil"), FILE), match=r"'/.*/outside/evil'.*absolute path")
    assert os.listdir(dest) == []


@pytest.mark.parametrize("path", ["..", "../outside/evil", "a/../../outside/evil", "a/.."])
def test_dotdot(sandbox, path):
    r, dest, _ = sandbox
    with pytest.raises(DiffCopyError, match=r"escapes the destination|not clean"):
        feed(r, stat("a", DIR), stat(path, FILE))
    assert os.listdir(dest) == ["a"]


@pytest.mark.parametrize("path", ["a//b", "a/./b", "a/", "./a", "."])
def test_unclean_paths(sandbox, path):
    r, _, _ = sandbox
    with pytest.raises(DiffCopyError, match=r"not clean|root itself|out of order"):
        feed(r, stat("a", DIR), stat(path, FILE))


def test_symlink_escape_via_symlinked_dir(sandbox):
    r, dest, outside = sandbox
    expect_error(r, stat("link", LINK, linkname=str(outside)), stat("link/pwned", FILE, size=1),
                 match=r"'link/pwned'.*parent 'link' is a symlink, not a directory")
    assert os.readlink(dest / "link") == str(outside)


def test_disk_writer_never_writes_through_a_symlink_even_without_the_validator(sandbox):
    r, dest, outside = sandbox
    writer: DiskWriter = r.sink
    writer.entry(0, stat("link", LINK, linkname=str(outside)))
    with pytest.raises(ApplyError, match=r"refusing to write through 'link'"):
        writer.entry(1, stat("link/pwned", FILE, size=1))
    writer.entry(2, stat("hl-src", LINK, linkname="/etc/passwd"))
    with pytest.raises(ApplyError, match="cannot create"):
        writer.entry(3, stat("x/pwned", FILE))


def test_child_of_a_file(sandbox):
    r, _, _ = sandbox
    expect_error(r, stat("f", FILE), stat("f/x", FILE), match=r"'f/x'.*parent 'f' is a regular file")


def test_out_of_order(sandbox):
    r, _, _ = sandbox
    expect_error(r, stat("b", FILE), stat("a", FILE), match=r"'a'.*out of order \(sent after 'b'\)")


def test_child_far_from_its_parent(sandbox):
    r, _, _ = sandbox
    expect_error(r, stat("a", DIR), stat("b", FILE), stat("a/x", FILE),
                 match=r"'a/x'.*out of order.*parent directory 'a'")


def test_missing_parent(sandbox):
    r, _, _ = sandbox
    expect_error(r, stat("a/b/c", FILE), match=r"'a/b/c'.*parent directory 'a/b'")


def test_duplicate(sandbox):
    r, _, _ = sandbox
    expect_error(r, stat("a", FILE), stat("a", FILE), match=r"'a'.*duplicate entry")
    r2 = Receiver(DiskWriter(sandbox[1].parent / "dest2"))
    try:
        expect_error(r2, stat("d", DIR), stat("d/x", FILE), stat("d", DIR), match="duplicate")
    finally:
        r2.sink.close()
        os.system(f"rm -rf {sandbox[1].parent / 'dest2'}")


def test_oversize_paths(sandbox):
    r, _, _ = sandbox
    expect_error(r, stat("x" * 300, FILE), match="longer than 255 bytes")
    deep = "/".join(["d" * 200] * 25)
    expect_error(r, stat(deep, FILE), match="longer than 4096")


def test_path_checks_accept_exactly_the_clean_bounded_relative_paths():
    def valid(path: str) -> bool:
        names = path.split("/")
        return ("\x00" not in path and all(n not in ("", ".", "..") for n in names)
                and len(path.encode("utf-8", "surrogatepass")) <= 4096
                and all(len(n.encode("utf-8", "surrogatepass")) <= 255 for n in names))

    paths = [""]
    for _ in range(6):  # every path of up to 6 of these characters
        paths += [p + c for p in paths if len(p) == _ for c in ("a", ".", "/", "\x00", "\u00e9")]
    paths += ["x" * 255, "x" * 256, "\u00e9" * 127, "\u00e9" * 128, "a/" + "x" * 255, "a/" + "x" * 256,
              "/".join(["d" * 200] * 20), "/".join(["d" * 200] * 21), "a\udcff"]
    for path in paths:
        try:
            validate.check_path(path)
        except DiffCopyError:
            assert not valid(path), path
        else:
            assert valid(path), path


def test_hardlink_to_unknown_or_later_path(sandbox):
    r, _, _ = sandbox
    expect_error(r, stat("a", FILE, linkname="/etc/shadow"), match=r"'a'.*hardlink to '/etc/shadow'")


def test_more_data_than_announced(sandbox):
    r, dest, _ = sandbox
    reqs = feed(r, stat("f", FILE, size=3))
    assert [(p.type, p.ID) for p in reqs] == [(packets.REQ, 0)]
    r.receive(packets.data_packet(0, b"abc"))
    with pytest.raises(DiffCopyError, match=r"more data than announced for 'f' \(size 3"):
        r.receive(packets.data_packet(0, b"d"))


def test_data_for_unrequested_ids(sandbox):
    r, _, _ = sandbox
    feed(r, stat("d", DIR), stat("d/a", LINK, linkname="x"), stat("d/f", FILE, size=1))
    with pytest.raises(DiffCopyError, match=r"'d'.*not requested: it is a directory"):
        r.receive(packets.data_packet(0, b"x"))
    with pytest.raises(DiffCopyError, match=r"'d/a'.*not requested: it is a symlink"):
        r.receive(packets.data_packet(1, b"x"))
    with pytest.raises(DiffCopyError, match=r"unknown entry #99"):
        r.receive(packets.data_packet(99, b"x"))
    r.receive(packets.data_packet(2))
    with pytest.raises(DiffCopyError, match=r"'d/f'.*already complete"):
        r.receive(packets.data_packet(2, b"x"))


def test_truncated_streams(sandbox):
    r, _, _ = sandbox
    feed(r, stat("f", FILE, size=5))
    with pytest.raises(DiffCopyError, match=r"before the end of the listing \(1 entries"):
        r.end_of_stream()
    r.receive(packets.end_of_listing())
    r.receive(packets.data_packet(0, b"ab"))
    with pytest.raises(DiffCopyError, match=r"1 requested files incomplete \(e.g. 'f'\)"):
        r.end_of_stream()


def test_protocol_misuse(sandbox):
    r, _, _ = sandbox
    with pytest.raises(DiffCopyError, match="FIN before the receiver finished"):
        r.receive(packets.fin_packet())
    with pytest.raises(DiffCopyError, match="unexpected REQ"):
        r.receive(packets.req_packet(0))
    with pytest.raises(RemoteError, match="error from sender: boom"):
        r.receive(packets.err_packet("boom"))
    r.receive(packets.end_of_listing())
    with pytest.raises(DiffCopyError, match="after the end of the listing"):
        feed(r, stat("late", FILE))


def test_unsupported_types_and_bad_fields(sandbox):
    r, _, _ = sandbox
    expect_error(r, stat("s", modes.MODE_SOCKET | 0o755), match="unsupported file type")
    expect_error(r, stat("l", LINK), match="symlink without a target")
    expect_error(r, stat("n", FILE, size=-1), match="negative size")


def test_fin_is_sent_once_everything_arrived(tmp_path):
    r = Receiver(DiskWriter(tmp_path / "d"))
    feed(r, stat("a", FILE, size=1), stat("b", FILE))
    assert r.receive(packets.end_of_listing()) == ()
    r.receive(packets.data_packet(0, b"x"))
    assert r.receive(packets.data_packet(0)) == ()
    out = r.receive(packets.data_packet(1))
    assert [p.type for p in out] == [packets.FIN]
    r.receive(packets.fin_packet())
    assert r.done
    r.end_of_stream()
    assert (tmp_path / "d" / "a").read_bytes() == b"x"


def test_sender_rejects_bad_requests(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("x")
    s = Sender(walk(tmp_path))
    with pytest.raises(DiffCopyError, match=r"entry #0 'd' is a directory"):
        s.receive(packets.req_packet(0))
    with pytest.raises(DiffCopyError, match="no entry #7"):
        s.receive(packets.req_packet(7))
    s.receive(packets.req_packet(1))
    with pytest.raises(DiffCopyError, match="already requested"):
        s.receive(packets.req_packet(1))
    with pytest.raises(RemoteError, match="error from receiver: nope"):
        s.receive(packets.err_packet("nope"))


def test_sender_streams_large_files_in_chunks_and_caps_at_announced_size(tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 5)
    (tmp_path / "big").write_bytes(data)
    s = Sender(walk(tmp_path), chunk_size=1 << 20)
    action = s.receive(packets.req_packet(0))
    with open(tmp_path / "big", "ab") as f:
        f.write(b"grown after the listing")
    chunks = [p.data for p in s.data_packets(action)]
    assert [len(c) for c in chunks] == [1 << 20] * 3 + [5, 0]
    assert b"".join(chunks) == data


def test_device_and_owner_need_root(tmp_path):
    if os.geteuid() == 0:
        r = Receiver(DiskWriter(tmp_path / "d"))
        feed(r, stat("null", modes.MODE_DEVICE | modes.MODE_CHAR_DEVICE | 0o666))
        assert os.major(os.lstat(tmp_path / "d" / "null").st_rdev) == 0
        return
    r = Receiver(DiskWriter(tmp_path / "d"))
    with pytest.raises(ApplyError, match="needs root"):
        feed(r, stat("null", modes.MODE_DEVICE | modes.MODE_CHAR_DEVICE | 0o666))


def test_threaded_sink_round_trip_and_late_errors(tmp_path):
    from buildkitpy.fsutil.threaded import ThreadedSink

    src = tmp_path / "src"
    build_rich_tree(src, files=50, big=100_000)
    sink = ThreadedSink(DiskWriter(tmp_path / "dest"))
    pump(Sender(walk(src)), Receiver(sink))
    assert manifest(tmp_path / "dest") == manifest(src)

    # A disk failure in the thread surfaces on a later call, naming the entry.
    sink = ThreadedSink(DiskWriter(tmp_path / "dest2"))
    (tmp_path / "dest2" / "f").write_text("planted after the emptiness check")
    feed(Receiver(sink), stat("f", FILE, size=1))
    with pytest.raises(ApplyError, match=r"cannot create regular file 'f': File exists"):
        sink.finish()
    sink.close()


@pytest.mark.parametrize("data", [b"\x00", b"\x12\x05\n\x02\xff\xfe", b"\x1a\x03ab"])
def test_bytes_that_are_no_packet_are_a_diffcopy_error(data: bytes) -> None:
    # found by the fuzz suite: protobuf's DecodeError escaped the transfer as an internal error
    with pytest.raises(DiffCopyError, match=r"malformed filesync packet \(\d+ bytes\)"):
        packets.decode_packet(data)
