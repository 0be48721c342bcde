"""Sync mode with the metadata differ: a previous copy becomes the sender's current tree while only
changed files are requested; deleted entries go; a hostile sender still cannot leave the destination."""

from __future__ import annotations

import os
import shutil
import stat as statmod
from pathlib import Path

import pytest
from fsutil_helpers import build_rich_tree, manifest, pump

from buildkitpy.api import fsutil_stat_pb2
from buildkitpy.fsutil import modes, packets
from buildkitpy.fsutil.apply import DiskWriter
from buildkitpy.fsutil.errors import DiffCopyError
from buildkitpy.fsutil.receiver import Receiver
from buildkitpy.fsutil.sender import Sender
from buildkitpy.fsutil.walk import walk
from buildkitpy.snapshot.mount import OverlayStack, mount_overlay

DIR = modes.MODE_DIR | 0o755
FILE = 0o644
LINK = modes.MODE_SYMLINK | 0o777


def transfer(src, dest, *, differ: str = "metadata", fine_mtimes_only: bool = False,
             records: dict | None = None,
             make_writable=None) -> tuple[Receiver, DiskWriter, dict[str, str | None]]:  # noqa: ANN001
    """One sync of ``src`` into ``dest`` (a view of it with ``make_writable``: the tree is then in
    the writer's ``dest``). ``records``: kept across transfers like the local source's metadata of
    the files (``files_as_stated``), given to the next sync as ``previous_files``; each time checked
    against an lstat of every file."""
    digests: dict[str, str | None] = {}
    extra = {} if records is None else {"previous_files": dict(records), "collect_files": True}
    writer = DiskWriter(dest, mode="sync", differ=differ, fine_mtimes_only=fine_mtimes_only,
                        on_entry=lambda s, d: digests.__setitem__(s.path, d), make_writable=make_writable,
                        **extra)
    receiver = Receiver(writer)
    entries = walk(src)
    pump(Sender(entries), receiver)
    assert receiver.done
    if records is not None:  # every regular file on disk as it is, but the hardlinks sent as such
        hardlinks = {e.stat.path for e in entries if e.stat.linkname and modes.is_regular(e.stat.mode)}
        assert writer.files_as_stated == {p: m for p, m in on_disk_files(writer.dest).items()
                                          if p not in hardlinks}
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


# -- a sync onto a view of the previous copy ---------------------------------------------------


class OverlayOnView:
    """``make_writable`` for a sync onto ``view``: a writable overlay on it, as the local source
    layers a new snapshot on its previous copy, mounted at the first call."""

    def __init__(self, base: Path, view: Path) -> None:
        self.base = base
        self.view = view
        self.merged = base / "merged"
        self.calls = 0
        self.stack: OverlayStack | None = None

    def __call__(self) -> Path:
        self.calls += 1
        for name in ("merged", "upper", "work"):
            (self.base / name).mkdir()
        self.stack = mount_overlay(self.merged, [self.view], upper=self.base / "upper",
                                   work=self.base / "work", base=self.base)
        return self.merged


@pytest.fixture
def overlay_on(tmp_path):
    made: list[OverlayOnView] = []

    def make(view: Path) -> OverlayOnView:
        assert os.geteuid() == 0, "an overlay mount needs root (.ci/run runs the tests as root)"
        made.append(OverlayOnView(tmp_path / f"overlay{len(made)}", view))
        made[-1].base.mkdir()
        return made[-1]

    yield make
    for overlay in made:
        if overlay.stack is not None:
            overlay.stack.unmount()


def test_an_unchanged_sync_onto_a_view_needs_no_writable_copy(tmp_path, records, overlay_on):
    src, view = tmp_path / "src", tmp_path / "view"
    build_rich_tree(src, files=200, big=100_000)
    transfer(src, view, records=records)
    before, before_inodes = manifest(view), inodes(view)
    overlay = overlay_on(view)
    receiver, writer, _ = transfer(src, view, records=records, make_writable=overlay)
    assert overlay.calls == 0 and not writer.modified and writer.dest == view
    assert receiver.files_received == 0
    assert manifest(view) == before == manifest(src) and inodes(view) == before_inodes


@pytest.mark.parametrize("change", ["add", "delete", "delete-dir", "new-dir", "chmod-dir", "mtime-dir",
                                    "chown-dir", "xattr-dir", "file", "chmod-file", "chown-file",
                                    "mtime-file", "symlink", "hardlink", "file-to-dir", "dir-to-file"])
def test_the_first_change_moves_a_sync_from_its_view_to_a_writable_copy(tmp_path, change, records,
                                                                           overlay_on):
    """Whatever the change, the view is never written: the writer moves to the writable copy
    first, once, and the copy ends up as the sender's tree."""
    src, view = tmp_path / "src", tmp_path / "view"
    (src / "d" / "e").mkdir(parents=True)
    (src / "d" / "f").write_text("f")
    (src / "d" / "e" / "g").write_text("g")
    (src / "top").write_text("top")
    transfer(src, view, records=records)
    before, before_inodes = manifest(view), inodes(view)
    if change == "add":
        (src / "d" / "e" / "new").write_text("new")
    elif change == "delete":
        (src / "d" / "e" / "g").unlink()
    elif change == "delete-dir":
        shutil.rmtree(src / "d" / "e")
    elif change == "new-dir":
        (src / "d" / "n" / "m").mkdir(parents=True)
    elif change == "chmod-dir":
        os.chmod(src / "d" / "e", 0o700)
    elif change == "mtime-dir":
        os.utime(src / "d", ns=(10**18, 10**18))
    elif change == "chown-dir":
        os.chown(src / "d" / "e", 1234, 5678)
    elif change == "xattr-dir":
        os.setxattr(src / "d", "user.buildkitpy", b"on a directory")
    elif change == "file":
        (src / "d" / "f").write_text("longer")
    elif change == "chmod-file":
        os.chmod(src / "top", 0o600)
    elif change == "chown-file":
        os.chown(src / "top", 1234, 5678)
    elif change == "mtime-file":
        os.utime(src / "d" / "e" / "g", ns=(10**18 + 1, 10**18 + 1))
    elif change == "symlink":
        (src / "top").unlink()
        os.symlink("d/f", src / "top")
    elif change == "hardlink":
        os.link(src / "d" / "f", src / "d" / "e" / "f-again")
    elif change == "file-to-dir":
        (src / "top").unlink()
        (src / "top" / "inside").mkdir(parents=True)
    else:
        shutil.rmtree(src / "d" / "e")
        (src / "d" / "e").write_text("a file now")
    overlay = overlay_on(view)
    _, writer, _ = transfer(src, view, records=records, make_writable=overlay)
    assert writer.modified and overlay.calls == 1 and writer.dest == overlay.merged
    assert manifest(overlay.merged) == manifest(src)
    assert manifest(view) == before and inodes(view) == before_inodes


def test_many_changes_onto_a_view(tmp_path, records, overlay_on):
    src, view = tmp_path / "src", tmp_path / "view"
    build_rich_tree(src, files=200, big=100_000)
    transfer(src, view, records=records)
    before, before_inodes = manifest(view), inodes(view)
    (src / "big.bin").write_bytes(b"new contents")
    (src / "many" / "d001" / "f00100.txt").unlink()
    shutil.rmtree(src / "日本語")
    shutil.rmtree(src / "private")
    os.symlink("big.bin", src / "private")
    os.unlink(src / "hl-b")
    (src / "hl-b").write_text("no longer linked\n")
    overlay = overlay_on(view)
    receiver, writer, _ = transfer(src, view, records=records, make_writable=overlay)
    assert overlay.calls == 1 and receiver.files_received == 2 and writer.entries_deleted == 2
    assert manifest(overlay.merged) == manifest(src)
    assert manifest(view) == before and inodes(view) == before_inodes


def test_a_view_needs_sync_mode(tmp_path):
    with pytest.raises(ValueError, match="sync mode"):
        DiskWriter(tmp_path, mode="fresh", make_writable=lambda: tmp_path)


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
