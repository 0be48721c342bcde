"""Sync mode with the metadata differ: a previous copy becomes the sender's current tree while only
changed files are requested; deleted entries go; a hostile sender still cannot leave the destination."""

from __future__ import annotations

import os
import shutil
import stat as statmod

import pytest
from fsutil_helpers import build_rich_tree, manifest, pump

from buildkitpy.api import fsutil_stat_pb2
from buildkitpy.fsutil import modes, packets
from buildkitpy.fsutil.apply import DiskWriter
from buildkitpy.fsutil.errors import DiffCopyError
from buildkitpy.fsutil.receiver import Receiver
from buildkitpy.fsutil.sender import Sender
from buildkitpy.fsutil.walk import walk

DIR = modes.MODE_DIR | 0o755
FILE = 0o644
LINK = modes.MODE_SYMLINK | 0o777


def transfer(src, dest, *, differ: str = "metadata", fine_mtimes_only: bool = False,
             records: dict | None = None) -> tuple[Receiver, DiskWriter, dict[str, str | None]]:
    """One sync of ``src`` into ``dest``. ``records``: kept across transfers like the local
    source's metadata of the files (``files_as_stated``), given to the next sync as
    ``previous_files``; each time checked against an lstat of every file."""
    digests: dict[str, str | None] = {}
    extra = {} if records is None else {"previous_files": dict(records), "collect_files": True}
    writer = DiskWriter(dest, mode="sync", differ=differ, fine_mtimes_only=fine_mtimes_only,
                        on_entry=lambda s, d: digests.__setitem__(s.path, d), **extra)
    receiver = Receiver(writer)
    entries = walk(src)
    pump(Sender(entries), receiver)
    assert receiver.done
    if records is not None:  # every regular file on disk as it is, but the hardlinks sent as such
        hardlinks = {e.stat.path for e in entries if e.stat.linkname and modes.is_regular(e.stat.mode)}
        assert writer.files_as_stated == {p: m for p, m in on_disk_files(dest).items() if p not in hardlinks}
        records.clear()
        records.update(writer.files_as_stated)
    return receiver, writer, digests


def on_disk_files(root) -> dict[str, tuple[int, int, int, int, int]]:
    out = {}
    for d, _dirs, files in os.walk(root):
        for n in files:
            st = os.lstat(os.path.join(d, n))
            if statmod.S_ISREG(st.st_mode):
                out[os.path.relpath(os.path.join(d, n), root)] = (st.st_mode, st.st_uid, st.st_gid,
                                                                 st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(params=["lstat", "records"])
def records(request) -> dict | None:
    """Each differ test runs comparing with an lstat of the previous copy and with its records."""
    return {} if request.param == "records" else None


def inodes(root) -> dict[str, int]:
    return {os.path.relpath(os.path.join(d, n), root): os.lstat(os.path.join(d, n)).st_ino
            for d, dirs, files in os.walk(root) for n in dirs + files}


def test_unchanged_second_transfer_requests_nothing_and_touches_nothing(tmp_path, records):
    src, dest = tmp_path / "src", tmp_path / "dest"
    build_rich_tree(src, files=300, big=200_000)
    first, _, _ = transfer(src, dest, records=records)
    assert first.files_received > 300
    before_inodes, before = inodes(dest), manifest(dest)
    kept_records = dict(records or {})
    again, writer, digests = transfer(src, dest, records=records)
    assert again.files_received == 0 and not writer.modified
    assert writer.entries_deleted == 0 and writer.entries_kept == again.entry_count - len(writer._dirs)
    assert manifest(dest) == before == manifest(src)
    assert inodes(dest) == before_inodes  # nothing was re-created
    assert digests["big.bin"] is None  # kept, not received
    if records is not None:
        assert records == kept_records and len(records) > 300


def test_changes_are_applied_and_only_changed_files_requested(tmp_path, records):
    src, dest = tmp_path / "src", tmp_path / "dest"
    build_rich_tree(src, files=200, big=100_000)
    transfer(src, dest, records=records)
    mtime = os.lstat(src / "big.bin").st_mtime_ns
    (src / "big.bin").write_bytes(b"new contents")  # content + size + mtime change
    (src / "many" / "d000" / "f00001.txt").write_bytes(b"same size")  # content change
    os.utime(src / "many" / "d000" / "f00001.txt", ns=(mtime, mtime))
    os.chmod(src / "mode0777", 0o640)  # metadata only: rewritten as a whole, like fsutil
    (src / "many" / "d001" / "f00100.txt").unlink()
    shutil.rmtree(src / "日本語")
    shutil.rmtree(src / "private")
    os.symlink("big.bin", src / "private")  # directory replaced by a symlink
    os.unlink(src / "link-rel")
    os.symlink("empty", src / "link-rel")  # new target
    (src / "empty").unlink()
    (src / "empty").mkdir()  # file replaced by a directory
    (src / "empty" / "new").write_text("new file")
    os.unlink(src / "hl-b")
    (src / "hl-b").write_text("no longer linked\n")
    receiver, writer, digests = transfer(src, dest, records=records)
    assert manifest(dest) == manifest(src)
    assert sorted(p for p, d in digests.items() if d) == sorted(
        ["big.bin", "many/d000/f00001.txt", "mode0777", "empty/new", "hl-b"])
    assert receiver.files_received == 5
    # f00100.txt, 日本語 (with its child counted once as a tree), private (dir replaced in place)
    assert writer.entries_deleted == 2
    assert not (dest / "many" / "d001" / "f00100.txt").exists()


def test_same_size_and_mtime_with_new_content_is_kept_like_fsutil(tmp_path):
    """The metadata differ trusts size+mtime, as BuildKit's does; differ='none' rewrites everything."""
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    (src / "f").write_bytes(b"aaaa")
    os.utime(src / "f", ns=(10**18, 10**18))
    transfer(src, dest)
    (src / "f").write_bytes(b"bbbb")
    os.utime(src / "f", ns=(10**18, 10**18))
    transfer(src, dest)
    assert (dest / "f").read_bytes() == b"aaaa"
    receiver, _, _ = transfer(src, dest, differ="none")
    assert receiver.files_received == 1 and (dest / "f").read_bytes() == b"bbbb"


def test_fine_mtimes_only_refetches_files_with_whole_second_mtimes(tmp_path, records):
    """For a previous copy of unknown origin: same size and a whole-second mtime prove nothing."""
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    for name, data, mtime in (("coarse", b"aaaa", 10**18), ("fine", b"aaaa", 10**18 + 1)):
        (src / name).write_bytes(data)
        os.utime(src / name, ns=(mtime, mtime))
    transfer(src, dest, records=records)
    (src / "coarse").write_bytes(b"bbbb")
    os.utime(src / "coarse", ns=(10**18, 10**18))
    receiver, writer, digests = transfer(src, dest, fine_mtimes_only=True, records=records)
    assert (dest / "coarse").read_bytes() == b"bbbb" and writer.modified
    assert receiver.files_received == 1 and digests["fine"] is None  # kept


@pytest.mark.parametrize("change", ["add", "delete", "chmod-dir", "mtime-dir", "file", "chmod-file",
                                    "mtime-file", "symlink"])
def test_any_change_marks_the_destination_modified(tmp_path, change, records):
    src, dest = tmp_path / "src", tmp_path / "dest"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_text("f")
    transfer(src, dest, records=records)
    _, writer, _ = transfer(src, dest, records=records)
    assert not writer.modified
    if change == "add":
        (src / "d" / "g").write_text("g")
    elif change == "delete":
        (src / "d" / "f").unlink()
    elif change == "chmod-dir":
        os.chmod(src / "d", 0o700)
    elif change == "mtime-dir":
        os.utime(src / "d", ns=(10**18, 10**18))
    elif change == "chmod-file":
        os.chmod(src / "d" / "f", 0o600)
    elif change == "mtime-file":
        os.utime(src / "d" / "f", ns=(10**18 + 1, 10**18 + 1))
    elif change == "symlink":
        (src / "d" / "f").unlink()
        os.symlink("elsewhere", src / "d" / "f")
    else:
        (src / "d" / "f").write_text("longer")
    receiver, writer, _ = transfer(src, dest, records=records)
    assert writer.modified and manifest(dest) == manifest(src)
    if change in ("file", "chmod-file", "mtime-file"):
        assert receiver.files_received == 1


def test_sync_without_differ_still_deletes(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    (src / "d").mkdir(parents=True)
    (src / "d" / "keep").write_text("k")
    (dest / "d" / "stale-dir" / "deep").mkdir(parents=True)
    (dest / "stale").write_text("s")
    receiver, writer, _ = transfer(src, dest, differ="none")
    assert sorted(os.listdir(dest)) == ["d"] and os.listdir(dest / "d") == ["keep"]
    assert writer.entries_deleted == 2 and receiver.files_received == 1


# -- a hostile sender against a previous copy --------------------------------------------------


def stat(path: str, mode: int, *, size: int = 0, linkname: str = "", mtime: int = 1) -> fsutil_stat_pb2.Stat:
    return fsutil_stat_pb2.Stat(path=path, mode=mode, size=size, linkname=linkname, modTime=mtime,
                                uid=os.getuid(), gid=os.getgid())


@pytest.fixture
def previous(tmp_path):
    """A previous copy holding a directory and a symlink to an 'outside' directory that must not change."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("untouched")
    dest = tmp_path / "dest"
    (dest / "sub").mkdir(parents=True)
    (dest / "sub" / "file").write_text("old")
    os.symlink(outside, dest / "escape")
    yield dest, outside
    assert sorted(os.listdir(outside)) == ["precious"]
    assert (outside / "precious").read_text() == "untouched"


def test_directory_replaced_by_a_symlink_cannot_be_written_through(previous):
    dest, outside = previous
    r = Receiver(DiskWriter(dest, mode="sync", differ="metadata"))
    with pytest.raises(DiffCopyError, match=r"'sub/file'.*parent 'sub' is a symlink"):
        for s in (stat("escape", DIR), stat("sub", LINK, linkname=str(outside)),
                  stat("sub/file", FILE, size=3)):
            r.receive(packets.stat_packet(s))
    r.sink.close()
    assert os.readlink(dest / "sub") == str(outside)


def test_a_previous_symlink_is_replaced_not_followed(previous):
    dest, outside = previous
    r = Receiver(DiskWriter(dest, mode="sync", differ="metadata"))
    out = []
    for s in (stat("escape", DIR), stat("escape/precious", FILE, size=3)):
        out += r.receive(packets.stat_packet(s))
    assert [p.type for p in out] == [packets.REQ]
    r.receive(packets.data_packet(1, b"bad"))
    r.receive(packets.data_packet(1))
    r.receive(packets.end_of_listing())
    assert r.fin_sent
    assert (dest / "escape").is_dir() and not (dest / "escape").is_symlink()
    assert sorted(os.listdir(dest)) == ["escape"]  # sub was deleted, outside untouched


def test_deleting_leftovers_never_follows_symlinks(previous):
    dest, outside = previous
    os.symlink(outside, dest / "sub" / "inner-link")
    r = Receiver(DiskWriter(dest, mode="sync", differ="metadata"))
    r.receive(packets.end_of_listing())  # the client now has an empty directory
    assert r.fin_sent and os.listdir(dest) == []
