"""The Stat stream a sender announces: order, metadata, FilterFS and FollowPaths semantics."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fsutil_helpers import paths

from buildkitpy.fsutil import modes
from buildkitpy.fsutil.patterns import PatternError
from buildkitpy.fsutil.walk import WalkError, walk


def touch(root: Path, *rels: str) -> None:
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(rel)


def test_order_is_depth_first_bytewise_with_dirs_before_children(tmp_path):
    touch(tmp_path, "a/b", "a.txt", "B", "a/a", "é", "z/y/x", "a-b")
    assert paths(walk(tmp_path)) == ["B", "a", "a/a", "a/b", "a-b", "a.txt", "z", "z/y", "z/y/x", "é"]


def test_stat_fields(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"12345")
    os.chmod(tmp_path / "d" / "f", 0o4751)
    os.utime(tmp_path / "d" / "f", ns=(1, 1_234_567_890_123_456_789))
    os.symlink("../nowhere", tmp_path / "d" / "l")
    os.mkfifo(tmp_path / "p")
    entries = {e.stat.path: e.stat for e in walk(tmp_path)}
    d, f, link, fifo = entries["d"], entries["d/f"], entries["d/l"], entries["p"]
    assert d.mode & modes.MODE_DIR and d.size == 0
    assert f.mode == modes.MODE_SETUID | 0o751 and f.size == 5
    assert f.modTime == 1_234_567_890_123_456_789
    assert f.uid == os.getuid() and f.gid == os.getgid()
    assert link.mode & modes.MODE_SYMLINK and link.linkname == "../nowhere" and link.size == len("../nowhere")
    assert fifo.mode & modes.MODE_NAMED_PIPE
    reset = {e.stat.path: e.stat for e in walk(tmp_path, reset_uid_gid=True)}
    assert reset["d/f"].uid == 0 and reset["d/f"].gid == 0


def test_hardlinks_point_at_the_first_path_and_survive_filtering(tmp_path):
    touch(tmp_path, "a")
    os.link(tmp_path / "a", tmp_path / "b")
    os.link(tmp_path / "a", tmp_path / "c")
    stats = {e.stat.path: e.stat for e in walk(tmp_path)}
    assert stats["a"].linkname == "" and stats["a"].size == 1
    assert stats["b"].linkname == "a" and stats["b"].size == 0
    assert stats["c"].linkname == "a"
    # When the first path is filtered out, the next one carries the data.
    stats = {e.stat.path: e.stat for e in walk(tmp_path, exclude_patterns=["a"])}
    assert stats["b"].linkname == "" and stats["b"].size == 1
    assert stats["c"].linkname == "b"


def test_xattrs_are_sent(tmp_path):
    touch(tmp_path, "f")
    os.setxattr(tmp_path / "f", "user.k", b"v")
    assert dict(walk(tmp_path)[0].stat.xattrs) == {"user.k": b"v"}


def test_exclude_directory_is_not_descended(tmp_path):
    touch(tmp_path, "node_modules/x/y", "src/a", "src/node_modules/z")
    assert paths(walk(tmp_path, exclude_patterns=["node_modules"])) == [
        "src", "src/a", "src/node_modules", "src/node_modules/z"]
    assert paths(walk(tmp_path, exclude_patterns=["**/node_modules"])) == ["src", "src/a"]


def test_exception_reincludes_inside_excluded_dir(tmp_path):
    touch(tmp_path, "dir/keep", "dir/drop", "other")
    assert paths(walk(tmp_path, exclude_patterns=["dir", "!dir/keep"])) == ["dir", "dir/keep", "other"]
    assert paths(walk(tmp_path, exclude_patterns=["*", "!dir"])) == ["dir", "dir/drop", "dir/keep"]
    # wildcard exceptions force a full walk but give the same answer
    assert paths(walk(tmp_path, exclude_patterns=["dir", "!dir/k*"])) == ["dir", "dir/keep", "other"]


def test_include_patterns_send_parents_of_matches_only(tmp_path):
    touch(tmp_path, "a/b/c.txt", "a/b/d.txt", "a/e.txt", "x.txt", "sub/y.txt")
    assert paths(walk(tmp_path, include_patterns=["a/b/c.txt"])) == ["a", "a/b", "a/b/c.txt"]
    assert paths(walk(tmp_path, include_patterns=["*.txt"])) == ["x.txt"]
    assert paths(walk(tmp_path, include_patterns=["**/*.txt"], exclude_patterns=["a/b"])) == [
        "a", "a/e.txt", "sub", "sub/y.txt", "x.txt"]


def test_follow_paths_resolve_symlinks_into_includes(tmp_path):
    touch(tmp_path, "sub/real.Dockerfile", "unrelated", "Dockerfile.dockerignore")
    os.symlink("sub/real.Dockerfile", tmp_path / "Dockerfile")
    got = paths(walk(tmp_path, follow_paths=["Dockerfile", "Dockerfile.dockerignore", "dockerfile"]))
    assert got == ["Dockerfile", "Dockerfile.dockerignore", "sub", "sub/real.Dockerfile"]
    # absolute and escaping targets are taken relative to the root
    os.symlink("/sub/../../../sub/real.Dockerfile", tmp_path / "abs")
    assert paths(walk(tmp_path, follow_paths=["abs"])) == ["abs", "sub", "sub/real.Dockerfile"]
    assert paths(walk(tmp_path, follow_paths=["."])) == paths(walk(tmp_path))


def test_follow_paths_through_symlinked_dir_and_loops(tmp_path):
    touch(tmp_path, "real/dir/file", "real/other")
    os.symlink("real", tmp_path / "alias")
    os.symlink("loop2", tmp_path / "loop1")
    os.symlink("loop1", tmp_path / "loop2")
    assert paths(walk(tmp_path, follow_paths=["alias/dir/file", "loop1/x"])) == [
        "alias", "loop1", "loop2", "real", "real/dir", "real/dir/file"]


def test_symlinks_below_root_are_not_followed(tmp_path):
    outside = tmp_path / "outside"
    touch(outside, "secret")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "escape")
    assert paths(walk(root)) == ["escape"]


def test_root_may_be_a_symlink(tmp_path):
    touch(tmp_path / "real", "f")
    os.symlink(tmp_path / "real", tmp_path / "ln")
    assert paths(walk(tmp_path / "ln")) == ["f"]


def test_errors_are_clear(tmp_path):
    with pytest.raises(WalkError, match="no such directory"):
        walk(tmp_path / "missing")
    touch(tmp_path, "file")
    with pytest.raises(WalkError, match="not a directory"):
        walk(tmp_path / "file")
    with pytest.raises(PatternError, match="invalid pattern"):
        walk(tmp_path, exclude_patterns=["[oops"])
