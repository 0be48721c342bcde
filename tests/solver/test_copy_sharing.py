"""A copy that hard-links instead of copying bytes (``solver.ops.fscopy``'s module docstring) must
stay indistinguishable from a copy: nothing done later (a new transfer of the context, a FileOp or
a RUN on the result, a merge, an export) may change an earlier COPY result or show one inode at two
paths of one tree. Real solver, real overlay snapshots, real client sessions and real runc."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from buildkitpy.api import filesync_pb2, ops_pb2
from buildkitpy.exporter.imagebuild.layertar import write_layer_tar
from buildkitpy.exporter.tar import write_trees
from tests.solver.conftest import describe
from tests.solver.llbutil import LLB, chown_ids, copy, mkdir, mkfile
from tests.solver.test_exec import BUSYBOX, rootfs, run
from tests.solver.test_local_source import local, serving
from tests.tarfiles import member, write_tar

BIG = b"0123456789abcdef" * 4096


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def source_tree(b: LLB) -> str:
    """A committed tree made by a FileOp of its own (mkfile: that op copies nothing)."""
    return b.file([mkdir("/d", output=-1), mkfile("/d/big", BIG, 0o644, input=0, output=-1),
                   mkfile("/d/small", b"s", 0o600, input=1)])


def inode(env, defn, path: str) -> tuple[int, int, bytes]:  # noqa: ANN001
    """(inode, link count, contents) of ``path`` in the layer holding it."""
    res = env.solve(defn)
    try:
        with res.ref.mount() as root:
            for layer in reversed(res.ref.layers()):
                if os.path.lexists(layer / path):
                    st = os.lstat(layer / path)
                    return st.st_ino, st.st_nlink, (layer / path).read_bytes()
            st = os.lstat(root / path)
            return st.st_ino, st.st_nlink, (root / path).read_bytes()
    finally:
        res.ref.release()


def snapshot_tree(env, snapshot_id: str) -> dict:  # noqa: ANN001
    ref = env.snapshots.get(snapshot_id)
    try:
        with ref.mount() as root:
            return describe(root)
    finally:
        ref.release()


def test_copy_shares_the_inode_only_when_metadata_is_kept(env):
    b = LLB()
    src = source_tree(b)
    plain = b.file([copy("/d", "/out", createDestPath=True)], inputs=[src])
    chowned = b.file([copy("/d", "/out", createDestPath=True, owner=chown_ids(7, 8))], inputs=[src])
    chmodded = b.file([copy("/d/big", "/big", createDestPath=True, mode=0o600)], inputs=[src])
    same_mode = b.file([copy("/d/big", "/big", createDestPath=True, mode=0o644)], inputs=[src])
    src_ino = inode(env, b.definition(src), "d/big")[0]
    assert inode(env, b.definition(plain), "out/big")[0] == src_ino
    assert inode(env, b.definition(plain), "out/small")[2] == b"s"
    assert inode(env, b.definition(same_mode), "big")[0] == src_ino
    for defn, path in ((b.definition(chowned), "out/big"), (b.definition(chmodded), "big")):
        ino, nlink, data = inode(env, defn, path)
        assert ino != src_ino and data == BIG
    # the copies with other metadata did not change the source's
    res = env.solve(b.definition(src))
    try:
        with res.ref.mount() as root:
            st = os.lstat(root / "d/big")
            assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o644, 0, 0)
    finally:
        res.ref.release()


def test_one_source_file_copied_twice_into_one_layer_is_two_files(env):
    b = LLB()
    src = source_tree(b)
    twice = b.file([copy("/d/big", "/a", createDestPath=True, output=-1),
                    copy("/d/big", "/b", input=1, secondary=0)], inputs=[src])
    res = env.solve(b.definition(twice))
    try:
        layer = res.ref.layers()[-1]
        a, b_ = os.lstat(layer / "a"), os.lstat(layer / "b")
        assert a.st_ino != b_.st_ino
        assert (layer / "a").read_bytes() == (layer / "b").read_bytes() == BIG
        assert not _hardlinks(_layer_tar(layer))
    finally:
        res.ref.release()


def test_a_later_fileop_on_the_copy_changes_neither_the_copy_nor_its_source(env):
    b = LLB()
    src = source_tree(b)
    copied = b.file([copy("/d", "/out", createDestPath=True)], inputs=[src])
    # mkfile over the copied file, in an op on top of the copy and in the copying op itself
    over = b.file([mkfile("/out/big", b"overwritten", 0o644, input=0)], inputs=[copied])
    same_op = b.file([copy("/d", "/out", createDestPath=True, output=-1),
                      mkfile("/out/big", b"in the same op", 0o644, input=1)], inputs=[src])
    assert inode(env, b.definition(over), "out/big")[2] == b"overwritten"
    assert inode(env, b.definition(same_op), "out/big")[2] == b"in the same op"
    assert inode(env, b.definition(copied), "out/big")[2] == BIG
    assert inode(env, b.definition(src), "d/big")[2] == BIG


def _tar_stream(roots) -> bytes:  # noqa: ANN001
    """The tar exporter's stream (it writes BytesMessage encodings, ready for the session)."""
    messages: list[bytes] = []
    write_trees(roots, messages.append)
    return b"".join(filesync_pb2.BytesMessage.FromString(m).data for m in messages)


def test_merge_never_shows_one_inode_at_two_paths(env):
    b = LLB()
    src = source_tree(b)
    to_a = b.file([copy("/d/big", "/a", createDestPath=True)], inputs=[src])
    to_b = b.file([copy("/d/big", "/b", createDestPath=True)], inputs=[src])
    for parts in ([to_a, to_b], [src, to_a], [to_a, src]):
        merged = b.merge(parts)
        res = env.solve(b.definition(merged))
        try:
            with res.ref.mount() as root:
                files = [root / p for p in ("a", "b", "d/big") if os.path.lexists(root / p)]
                assert len(files) == 2 and all(f.read_bytes() == BIG for f in files)
                assert len({os.lstat(f).st_ino for f in files}) == 2, parts
                assert not _hardlinks(_tar_stream([("", root)]))
        finally:
            res.ref.release()
    # each branch's own layer still shares the source's inode; only the merges made private copies
    src_ino = inode(env, b.definition(src), "d/big")[0]
    assert inode(env, b.definition(to_a), "a")[0] == inode(env, b.definition(to_b), "b")[0] == src_ino


def test_tar_of_two_trees_sharing_inodes_has_no_cross_tree_hardlink(env):
    b = LLB()
    src = source_tree(b)
    copied = b.file([copy("/d", "/", dirCopyContents=True)], inputs=[src])
    res = env.solve(b.definition(copied))
    try:
        with res.ref.mount() as root:  # as a two-platform export of one snapshot would list it
            stream = _tar_stream([("linux_amd64/", root), ("linux_arm64/", root)])
        assert not _hardlinks(stream)
        # and the layer tar holds the bytes, no link to anything outside it
        members = _members(_layer_tar(res.ref.layers()[-1]))
        assert members["big"] == (tarfile.REGTYPE, BIG)
    finally:
        res.ref.release()


def test_source_hardlinks_stay_hardlinks_in_the_copy(env, tmp_path):
    archive = write_tar(tmp_path / "a.tar", (member("d/", tarfile.DIRTYPE, mode=0o755), b""),
                        (member("d/big", mode=0o644), BIG),
                        (member("d/big2", tarfile.LNKTYPE, linkname="d/big"), b""))
    b = LLB()
    tar = b.file([mkfile("/a.tar", archive.read_bytes(), 0o644)])
    src = b.file([copy("/a.tar", "/", attemptUnpackDockerCompatibility=True)], inputs=[tar])
    copied = b.file([copy("/d", "/out", createDestPath=True)], inputs=[src])
    res = env.solve(b.definition(copied))
    try:
        layer = res.ref.layers()[-1]
        assert os.lstat(layer / "out/big").st_ino == os.lstat(layer / "out/big2").st_ino
        members = _members(_layer_tar(layer))
        assert members["out/big"] == (tarfile.REGTYPE, BIG) and members["out/big2"][0] == tarfile.LNKTYPE
    finally:
        res.ref.release()


def test_shared_inodes_are_known_after_a_restart(env):
    b = LLB()
    src = source_tree(b)
    to_a = b.file([copy("/d/big", "/a", createDestPath=True)], inputs=[src])
    env.tree(b.definition(to_a))
    env.restart()  # the merge below reads what the copy recorded from disk
    merged = b.merge([src, to_a])
    res = env.solve(b.definition(merged))
    try:
        assert env.executed() == [merged]  # the copy and its source came from the cache
        with res.ref.mount() as root:
            assert os.lstat(root / "a").st_ino != os.lstat(root / "d/big").st_ino
            assert (root / "a").read_bytes() == BIG
    finally:
        res.ref.release()
    assert env.live_handles() == {} and env.mutables() == []


# -- the context: a later incremental transfer never changes an earlier COPY ---------------------


@pytest.mark.anyio
async def test_later_transfers_of_the_context_leave_earlier_copies_alone(env, short_dir, tmp_path):
    ctx = tmp_path / "ctx"
    (ctx / "sub").mkdir(parents=True)
    (ctx / "big").write_bytes(BIG)
    (ctx / "sub" / "keep").write_bytes(b"keep")
    results = []
    async with serving(env, short_dir, ctx) as client:
        for step in range(4):
            b = LLB()
            src = local(b, client.session_id)
            c = b.file([copy("/", "/", dirCopyContents=True)], inputs=[src])
            res = await env.solver.solve(b.definition(c), env.job(session_ids=[client.session_id]))
            try:
                with res.ref.mount() as root:
                    tree = describe(root)
                    assert tree == describe(ctx)
                    links = os.lstat(root / "big").st_nlink
                results.append((res.ref.id, tree))
            finally:
                res.ref.release()
            assert links == 2  # the COPY is a hard link into the context's layer
            # the client changes the context in place: same size, new bytes (then a deletion
            # and a file in a new directory): a receiver writing into the previous inode would
            # change the COPY above
            with open(ctx / "big", "r+b") as f:
                f.write(b"%04d" % step)
            if step == 1:
                (ctx / "sub" / "keep").unlink()
            if step == 2:
                (ctx / "new").mkdir()
                (ctx / "new" / "file").write_bytes(b"n")
    for sid, tree in results:
        assert snapshot_tree(env, sid) == tree
    assert [t["big"][:4] for _, t in results] == [BIG[:4], b"0000", b"0001", b"0002"]


# -- RUN: rootfs writes and rw bind mounts go to new overlay uppers --------------------------------


@pytest.mark.root
@pytest.mark.skipif(not BUSYBOX or not __import__("shutil").which("runc"), reason="needs runc and busybox")
def test_run_on_a_copy_changes_neither_the_copy_nor_its_source(env, tmp_path):
    from buildkitpy.executor.runc import RuncExecutor

    env.worker.executor = RuncExecutor(tmp_path / "exec")
    b = LLB()
    ts = 1_600_000_000 * 10**9
    src = b.file([mkdir("/d", output=-1), mkfile("/d/big", BIG, 0o644, input=0, output=-1, timestamp=ts),
                  mkfile("/d/small", b"s", 0o644, input=1, timestamp=ts)])
    copied = b.file([copy("/d", "/data", createDestPath=True)], inputs=[src])
    base = b.merge([rootfs(b), copied])
    # /data/big: new bytes at the same size and mtime; /data/small: appended
    script = ("printf XXXX | dd of=/data/big conv=notrunc; "
              "touch -d @1600000000 /data/big; echo x >> /data/small; echo via-mount >> /mnt/big")
    bind = ops_pb2.Mount(input=1, dest="/mnt", selector="/data", output=1)
    e = run(b, [base, copied], script, mounts=[bind])
    res = env.solve(b.definition(e))
    try:
        with res.ref.mount() as root:
            st = os.lstat(root / "data/big")
            assert (root / "data/big").read_bytes() == b"XXXX" + BIG[4:]
            assert (st.st_size, st.st_mtime_ns) == (len(BIG), ts)
    finally:
        res.ref.release()
    assert inode(env, b.definition(copied), "data/big")[2] == BIG
    assert inode(env, b.definition(copied), "data/small")[2] == b"s"
    assert inode(env, b.definition(src), "d/big")[2] == BIG
    # a copy from the RUN's result: overlayfs reports the copied-up /data/big under the inode
    # number of the file it was copied from (same size, mtime, owner, mode here), which must not be
    # taken for it
    out = b.file([copy("/data", "/", dirCopyContents=True)], inputs=[e])
    assert inode(env, b.definition(out), "big")[2] == b"XXXX" + BIG[4:]
    assert inode(env, b.definition(out), "small")[2] == b"s" + b"x\n"


def _layer_tar(layer: Path) -> bytes:
    out = io.BytesIO()
    write_layer_tar(layer, out)
    return out.getvalue()


def _members(data: bytes) -> dict[str, tuple[bytes, bytes | None]]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for m in tf.getmembers():
            f = tf.extractfile(m) if m.isreg() else None
            out[m.name.rstrip("/")] = (m.type, f.read() if f else None)
    return out


def _hardlinks(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return [m.name for m in tf.getmembers() if m.islnk()]
