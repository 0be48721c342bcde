"""The tar exporter's stream writer against real trees, read back by Python's tarfile and by GNU tar."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from buildkitpy.api import filesync_pb2
from buildkitpy.exporter import tar as tarexp

SECOND = 1_000_000_000


def stream(roots: list[tuple[str, Path]]) -> tuple[bytes, list[int]]:
    messages: list[bytes] = []
    total = tarexp.write_trees(roots, messages.append)
    chunks = [filesync_pb2.BytesMessage.FromString(m).data for m in messages]
    assert all(chunks)  # never an empty message
    data = b"".join(chunks)
    assert total == len(data)
    return data, [len(c) for c in chunks]


def rich_tree(root: Path) -> None:
    root.mkdir()
    (root / "empty").write_bytes(b"")
    (root / "small").write_bytes(b"hello\n")
    (root / "block").write_bytes(b"b" * 512)
    (root / "big").write_bytes(os.urandom(5 * (1 << 20) + 3))  # spans several chunks
    (root / "d" / "e").mkdir(parents=True)
    (root / "d" / "e" / "f").write_text("nested")
    os.symlink("../small", root / "d" / "link")
    os.link(root / "small", root / "d" / "hard")
    os.mkfifo(root / "fifo")
    (root / "suid").write_text("x")
    os.chmod(root / "suid", 0o4755)
    os.chmod(root / "d" / "e", 0o2750)
    long_dir = root / ("l" * 60) / ("m" * 60)  # 144 characters: ustar prefix + name
    long_dir.mkdir(parents=True)
    (long_dir / "file-under-a-long-path").write_text("ustar prefix")
    (root / ("n" * 120)).write_text("pax name")
    (root / "日本語").write_text("utf-8 name")
    (root / os.fsdecode(b"raw-\xff")).write_text("not utf-8")
    (root / "bigid").write_text("large owner")
    os.chown(root / "bigid", 3_000_000, 3_000_001)
    os.utime(root / "small", ns=(1_700_000_000 * SECOND + 600_000_000,) * 2)  # rounds up
    os.utime(root / "block", ns=(1_700_000_000 * SECOND + 400_000_000,) * 2)  # rounds down


def expected(root: Path, prefix: str = "") -> dict[str, tuple]:
    """What the stream must hold for ``root``, in tar order (sorted, depth first): per name, type,
    mode, owner, mtime (rounded to the second) and contents, first hardlink name or link target."""
    out: dict[str, tuple] = {}
    inodes: dict[tuple[int, int], str] = {}
    todo = [(root / c, c) for c in sorted(os.listdir(root), reverse=True)]
    while todo:
        path, rel_path = todo.pop()
        rel = (prefix + "/" if prefix else "") + os.fsdecode(rel_path)
        st = os.lstat(path)
        base = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, round(st.st_mtime_ns / SECOND))
        if stat.S_ISREG(st.st_mode):
            first = inodes.setdefault((st.st_dev, st.st_ino), rel) if st.st_nlink > 1 else rel
            out[rel] = ("file", *base, path.read_bytes()) if first == rel else ("hardlink", *base, first)
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", *base)
            todo += [(path / c, f"{rel_path}/{c}") for c in sorted(os.listdir(path), reverse=True)]
        elif stat.S_ISLNK(st.st_mode):
            out[rel] = ("symlink", *base, os.readlink(path))
        elif stat.S_ISFIFO(st.st_mode):
            out[rel] = ("fifo", *base)
    return out


def read_back(data: bytes) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:", encoding="utf-8",
                      errors="surrogateescape") as tar:
        for m in tar:
            base = (m.mode, m.uid, m.gid, m.mtime)
            if m.isreg():
                out[m.name] = ("file", *base, tar.extractfile(m).read())  # type: ignore[union-attr]
            elif m.islnk():
                out[m.name] = ("hardlink", *base, m.linkname)
            elif m.isdir():
                out[m.name] = ("dir", *base)
            elif m.issym():
                out[m.name] = ("symlink", *base, m.linkname)
            elif m.isfifo():
                out[m.name] = ("fifo", *base)
    return out


def test_stream_holds_exactly_the_tree(tmp_path):
    root = tmp_path / "root"
    rich_tree(root)
    data, sizes = stream([("", root)])
    got = read_back(data)
    assert got == expected(root)
    assert list(got) == list(expected(root))  # sorted, depth first
    assert got["small"][4] == 1_700_000_001 and got["block"][4] == 1_700_000_000
    assert len(data) % 512 == 0 and data.endswith(bytes(1024))
    assert max(sizes) <= 4 << 20 and len(sizes) > 1  # chunks stay under gRPC's default limit


def test_headers_are_plain_ustar_unless_a_field_does_not_fit(tmp_path):
    root = tmp_path / "root"
    rich_tree(root)
    data, _ = stream([("", root)])
    pax: list[str] = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:", encoding="utf-8", errors="surrogateescape") as tar:
        for m in tar:
            if m.pax_headers:
                pax.append(m.name)
            if m.isdir() and not m.pax_headers:  # Go's trailing slash on directory names
                assert data[m.offset:m.offset + 100].rstrip(b"\0").endswith(b"/"), m.name
    assert sorted(pax) == sorted(["n" * 120, "日本語", os.fsdecode(b"raw-\xff"), "bigid"])


def test_gnu_tar_extracts_the_same_tree(tmp_path):
    root = tmp_path / "root"
    rich_tree(root)
    data, _ = stream([("", root)])
    (tmp_path / "out.tar").write_bytes(data)
    dest = tmp_path / "dest"
    dest.mkdir()
    subprocess.run(["tar", "-xpf", str(tmp_path / "out.tar"), "-C", str(dest), "--numeric-owner"], check=True)
    want, have = expected(root), expected(dest)
    # tar sets directory mtimes as it finishes them, but regular entries must match exactly
    assert {k: v for k, v in have.items() if v[0] != "dir"} == \
        {k: v for k, v in want.items() if v[0] != "dir"}
    assert {k: v[:4] for k, v in have.items()} == {k: v[:4] for k, v in want.items()}


def test_prefixed_roots_and_deep_trees(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    (one / "a").write_text("A")
    deep = two
    two.mkdir()
    for _ in range(1200):  # deeper than Python's recursion limit
        deep = deep / "d"
        os.mkdir(deep)
    (deep / "leaf").write_text("L")
    try:
        data, _ = stream([("linux_amd64/", one), ("linux_arm64/", two)])
        want = expected(one, "linux_amd64") | expected(two, "linux_arm64")
    finally:  # pytest's recursive cleanup cannot remove a tree this deep
        (deep / "leaf").rename(two / "leaf")
        while deep != two:
            os.rmdir(deep)
            deep = deep.parent
    got = read_back(data)
    assert {k: v for k, v in got.items() if k not in ("linux_amd64", "linux_arm64")} == want
    assert got["linux_amd64"][0] == got["linux_arm64"][0] == "dir"
    assert "linux_arm64/" + "/".join(["d"] * 1200) + "/leaf" in got


def test_a_file_shrinking_under_the_writer_is_an_error(tmp_path, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    (root / "f").write_bytes(b"x" * 1000)
    real_lstat = os.lstat

    def lying_lstat(path, *a, **kw):  # noqa: ANN001, ANN202 - the file shrinks after its listing
        st = real_lstat(path, *a, **kw)
        if str(path).endswith("/f"):
            os.truncate(path, 10)
        return st

    monkeypatch.setattr(tarexp.os, "lstat", lying_lstat)
    with pytest.raises(tarexp.TarError, match="shrank"):
        stream([("", root)])


@pytest.mark.parametrize("name", ["f", "d/e/f", "x" * 100, "x" * 101, "é", "a b\tc"])
@pytest.mark.parametrize("kind", [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE])
def test_plain_headers_are_the_ustar_headers(name, kind):
    # the header of most entries is made at once; it must be byte for byte the general one
    for mode, uid, gid, size, mtime in [(0o644, 0, 0, 0, 0), (0o7777, 1000, 100, 12345, 1_700_000_001),
                                        (0o755, 0o7777777, 0o7777777, 0o77777777777, 0o77777777777),
                                        (0o644, 0o10000000, 0, 1, 1), (0o644, 0, 0, 0o100000000000, 1),
                                        (0o644, 0, 0, 1, -1)]:
        plain = tarexp._plain_header(name, mode, uid, gid, size, mtime, kind)
        general = tarexp._ustar_header(name, mode, uid, gid, size, mtime, kind)
        if plain is not None:
            assert len(name) <= 100 and name.isascii()
            assert plain == general and len(plain) == 512
        elif len(name) <= 100 and name.isascii() and uid < 0o10000000 and size < 0o100000000000 \
                and mtime >= 0:
            raise AssertionError(f"{name!r} {mode:o} {uid} {size} {mtime}: no plain header")
