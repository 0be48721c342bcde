"""Layer application on plain directories: whiteouts, and archives that try to escape the root."""

from __future__ import annotations

import gzip
import os
import tarfile
from pathlib import Path

import pytest

from buildkitpy.image.unpack import LayerError, apply_layer_blob

from .registryfixture import TarBuilder, sha256


def apply(tmp_path: Path, tar: bytes, root: Path, compression: str = "", expected: str | None = None) -> str:
    blob = tmp_path / "blob"
    blob.write_bytes(gzip.compress(tar) if compression == "gzip" else tar)
    return apply_layer_blob(blob, compression, root, expected)


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    r.mkdir()
    (tmp_path / "outside").mkdir()
    return r


def test_dotdot_paths_are_clamped_to_the_root(tmp_path, root):
    tar = TarBuilder().add("../../outside/evil", data=b"x").add("/abs", data=b"y").bytes()
    apply(tmp_path, tar, root)
    assert (root / "outside/evil").read_bytes() == b"x"
    assert (root / "abs").read_bytes() == b"y"
    assert os.listdir(tmp_path / "outside") == []


def test_symlinked_parent_is_resolved_inside_the_root(tmp_path, root):
    outside = tmp_path / "outside"
    tar = (TarBuilder().add("escape", tarfile.SYMTYPE, link=str(outside))
           .add("up", tarfile.SYMTYPE, link="../../..")
           .add("escape/file", data=b"x").add("up/file2", data=b"y").bytes())
    apply(tmp_path, tar, root)
    assert os.listdir(outside) == []
    assert (root / str(outside).lstrip("/") / "file").read_bytes() == b"x"
    assert (root / "file2").read_bytes() == b"y"
    assert os.readlink(root / "escape") == str(outside)  # the link itself is kept as written


def test_hardlink_outside_the_root_is_refused(tmp_path, root):
    secret = tmp_path / "outside/secret"
    secret.write_text("secret")
    tar = TarBuilder().add("link", tarfile.LNKTYPE, link="../outside/secret").bytes()
    with pytest.raises(LayerError, match="not a file in the layer's tree"):
        apply(tmp_path, tar, root)
    assert os.stat(secret).st_nlink == 1


def test_whiteout_cannot_delete_outside_the_root(tmp_path, root):
    victim = tmp_path / "outside/victim"
    victim.write_text("v")
    tar = (TarBuilder().add("link", tarfile.SYMTYPE, link=str(tmp_path / "outside"))
           .add("link/.wh.victim").bytes())
    apply(tmp_path, tar, root)
    assert victim.exists()


def test_overlay_xattrs_from_the_archive_are_dropped(tmp_path, root):
    tar = TarBuilder().dir("d", xattrs={"trusted.overlay.opaque": "y", "user.ok": "1"}).bytes()
    apply(tmp_path, tar, root)
    assert os.getxattr(root / "d", "user.ok") == b"1"
    with pytest.raises(OSError):
        os.getxattr(root / "d", "trusted.overlay.opaque")


def test_whiteouts_and_opaque_on_a_plain_tree(tmp_path, root):
    apply(tmp_path, TarBuilder().dir("a").add("a/x", data=b"1").add("a/y", data=b"2").dir("b")
          .add("b/z", data=b"3").bytes(), root)
    layer = TarBuilder().add("b/new", data=b"n").add("b/.wh..wh..opq").add("a/.wh.x").bytes()
    apply(tmp_path, layer, root)
    assert sorted(os.listdir(root / "a")) == ["y"]
    assert sorted(os.listdir(root / "b")) == ["new"]  # added by the same layer: kept


def test_diff_id_is_checked_and_corrupt_data_is_an_error(tmp_path, root):
    tar = TarBuilder().add("f", data=b"x").bytes()
    assert apply(tmp_path, tar, root, "gzip", sha256(tar)) == sha256(tar)
    with pytest.raises(LayerError, match="image config says"):
        apply(tmp_path, tar, root, "gzip", sha256(b"other"))
    blob = tmp_path / "bad"
    blob.write_bytes(gzip.compress(tar)[:-20])
    with pytest.raises(LayerError):
        apply_layer_blob(blob, "gzip", root, None)
    blob.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(LayerError):
        apply_layer_blob(blob, "", root, None)


# found by the fuzz suite: a directory a later entry removed, and what the tree refuses
def test_a_directory_removed_later_in_the_same_layer_applies(tmp_path, root):
    tar = TarBuilder().dir("a").add(".wh.a").dir("b").add("b", data=b"file now").bytes()
    apply(tmp_path, tar, root)
    assert not (root / "a").exists() and (root / "b").read_bytes() == b"file now"


@pytest.mark.parametrize("tar,message", [
    (lambda: TarBuilder().add("a", kind=tarfile.FIFOTYPE, xattrs={"user.a": "v"}).bytes(),
     "cannot set xattr user.a on 'a': operation not permitted"),
    (lambda: TarBuilder().add("n" * 300, data=b"x").bytes(),
     f"layer entry '{'n' * 300}': file name too long"),
    (lambda: TarBuilder().add("a", uid=2**40).bytes(), "layer entry 'a': "),
])
def test_entries_the_tree_refuses_are_layer_errors_in_words(tmp_path, root, tar, message):
    with pytest.raises(LayerError) as err:
        apply(tmp_path, tar(), root)
    assert message in str(err.value)
    assert "Errno" not in str(err.value)


def test_a_directory_time_is_never_set_through_a_symlink_a_later_entry_made(tmp_path, root):
    # found by the fuzz suite (ELOOP): a directory's deferred time followed a symlink put in its path
    outside = tmp_path / "outside"
    (outside / "b").mkdir()
    os.utime(outside / "b", (5, 5))
    tar = TarBuilder().dir("a").dir("a/b", mtime=1234).add("a", kind=tarfile.SYMTYPE,
                                                              link=str(outside)).bytes()
    apply(tmp_path, tar, root)
    assert os.stat(outside / "b").st_mtime == 5
    assert (root / "a").is_symlink()
