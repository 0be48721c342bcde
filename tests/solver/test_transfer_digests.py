"""The file digests a local source transfer computes as the files arrive (BuildKit fills its
contenthash records from the transfer too) must be exactly the ones ``contenthash`` computes from
the written tree, and a tree's checksum must come out the same with them as without."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from buildkitpy.api import fsutil_stat_pb2
from buildkitpy.fsutil import packets
from buildkitpy.fsutil.apply import DiskWriter
from buildkitpy.fsutil.receiver import Receiver
from buildkitpy.fsutil.sender import Sender
from buildkitpy.fsutil.walk import walk
from buildkitpy.solver import contenthash
from buildkitpy.solver.cachekey import Selector
from buildkitpy.solver.contenthash import EMPTY_DIGEST, FileRecord, file_meta, tree_digest
from buildkitpy.solver.ops import source as source_ops
from tests.fsutil.fsutil_helpers import build_rich_tree, pump


def transfer(src: Path, dest: Path, previous: dict[str, FileRecord] | None = None) -> source_ops._FileRecords:
    records = source_ops._FileRecords(previous)
    writer = DiskWriter(dest, mode="sync" if previous is not None else "fresh", differ="metadata",
                        on_entry=records, content_hasher=source_ops._content_hasher,
                        previous_digests=records.previous)
    pump(Sender(walk(src)), Receiver(writer))
    return records


def regular_files(root: Path) -> dict[str, os.stat_result]:
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for n in filenames:
            full = os.path.join(dirpath, n)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                out[os.path.relpath(full, root)] = st
    return out


def test_transfer_digests_are_the_checksums_of_the_written_files(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    build_rich_tree(src, files=300, big=300_000)
    records = transfer(src, dest)
    on_disk = regular_files(dest)
    # every regular file but the one with an xattr and the hardlinks after the first has a record
    assert set(records.files) == set(on_disk) - {"empty", "hl-b", "many/hl-c"}
    for path, record in records.files.items():
        assert record.meta == file_meta(on_disk[path]), path
        assert record.digest == tree_digest(str(dest / path)), path
    assert tree_digest(str(dest), EMPTY_DIGEST, records.files) == tree_digest(str(dest), EMPTY_DIGEST)


def test_records_are_used_only_while_the_file_matches_them(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("contents")
    truth = tree_digest(str(tmp_path))
    meta = file_meta(os.lstat(tmp_path / "d" / "f"))
    bogus = "sha256:" + "0" * 64
    assert tree_digest(str(tmp_path), known={"d/f": FileRecord(bogus, meta)}) != truth  # used
    stale = (meta[0], meta[1], meta[2], meta[3], meta[4] + 1)
    assert tree_digest(str(tmp_path), known={"d/f": FileRecord(bogus, stale)}) == truth  # ignored
    # through a selector too: records are keyed by the path under the snapshot's root
    assert contenthash.checksum(tmp_path, Selector("/d/f"), known={"d/f": FileRecord(bogus, meta)}) == bogus
    assert contenthash.checksum(tmp_path, Selector("/d"), known={"d/f": FileRecord(bogus, meta)}) != \
        contenthash.checksum(tmp_path, Selector("/d"))


def test_a_sync_keeps_the_digests_of_unchanged_files_and_hashes_the_changed(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    build_rich_tree(src, files=300, big=300_000)
    first = transfer(src, dest)
    changed = src / "many" / "d001" / "f00105.txt"
    changed.write_text("changed contents")
    os.utime(changed, ns=(1_800_000_000_123_456_789,) * 2)
    (src / "big.bin").unlink()
    second = transfer(src, dest, first.files)
    assert "big.bin" not in second.files
    assert second.files["many/d001/f00105.txt"] != first.files["many/d001/f00105.txt"]
    on_disk = regular_files(dest)
    assert set(second.files) == set(on_disk) - {"empty", "hl-b", "many/hl-c"}
    for path, record in second.files.items():
        assert record.digest == tree_digest(str(dest / path)), path
    assert tree_digest(str(dest), EMPTY_DIGEST, second.files) == tree_digest(str(dest), EMPTY_DIGEST)


def test_a_file_shorter_than_announced_gets_no_digest(tmp_path):
    records = source_ops._FileRecords(None)
    receiver = Receiver(DiskWriter(tmp_path / "dest", on_entry=records,
                                   content_hasher=source_ops._content_hasher))
    receiver.receive(packets.stat_packet(fsutil_stat_pb2.Stat(path="f", mode=0o644, size=10, modTime=5)))
    receiver.receive(packets.end_of_listing())
    receiver.receive(packets.data_packet(0, b"12345"))
    receiver.receive(packets.data_packet(0, b""))
    assert (tmp_path / "dest" / "f").read_bytes() == b"12345"
    assert records.files == {}
