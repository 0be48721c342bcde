"""secure_join and layer helpers on real directories."""

import os

import pytest

from buildkitpy.snapshot.fs import PathEscapeError, mkdir_all_in_root, secure_join


def test_plain_and_missing_components(tmp_path):
    (tmp_path / "a").mkdir()
    assert secure_join(tmp_path, "/a/b/c") == tmp_path / "a/b/c"
    assert secure_join(tmp_path, "a/./b//c/") == tmp_path / "a/b/c"
    assert secure_join(tmp_path, "/") == tmp_path


def test_dotdot_is_clamped_at_root(tmp_path):
    assert secure_join(tmp_path, "../../etc/passwd") == tmp_path / "etc/passwd"
    assert secure_join(tmp_path, "/a/../../..") == tmp_path


def test_absolute_symlink_is_resolved_inside_root(tmp_path):
    (tmp_path / "etc").mkdir()
    os.symlink("/", tmp_path / "escape")
    os.symlink("/etc/passwd", tmp_path / "pw")
    assert secure_join(tmp_path, "escape/etc/shadow") == tmp_path / "etc/shadow"
    assert secure_join(tmp_path, "pw") == tmp_path / "etc/passwd"
    assert secure_join(tmp_path, "pw", follow_final=False) == tmp_path / "pw"


def test_relative_symlink_with_dotdot_cannot_climb_out(tmp_path):
    (tmp_path / "d").mkdir()
    os.symlink("../../../../tmp", tmp_path / "d" / "up")
    assert secure_join(tmp_path, "d/up/x") == tmp_path / "tmp/x"


def test_symlink_chain_inside_root(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink("real", tmp_path / "l1")
    os.symlink("/l1", tmp_path / "l2")
    assert secure_join(tmp_path, "/l2/file") == tmp_path / "real/file"


def test_symlink_loop_is_an_error(tmp_path):
    os.symlink("b", tmp_path / "a")
    os.symlink("a", tmp_path / "b")
    with pytest.raises(PathEscapeError, match="too many symlinks"):
        secure_join(tmp_path, "a/x")


def test_mkdir_all_follows_planted_symlink_inside_root_only(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(str(outside), root / "link")  # absolute host path: must mean root/<that path>
    created = mkdir_all_in_root(root, "/link/new")
    assert not (outside / "new").exists()
    assert (root / str(outside).lstrip("/") / "new").is_dir()
    assert created[-1] == root / str(outside).lstrip("/") / "new"
