"""The build context ``docker build`` uploads is unpacked inside its directory whatever the tar holds
(cases the fuzz suite found: a file written through a symlink an earlier member made, a hard link
to a member that is not there, owners and paths that cannot be created)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from buildkitpy.dockerapi.contexttar import ContextError, extract


def _tar(path: Path, *members: tuple[tarfile.TarInfo, bytes]) -> Path:
    with tarfile.open(path, "w") as tf:
        for info, data in members:
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, **attrs: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def test_a_file_replaces_a_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    outside, dest = tmp_path / "outside", tmp_path / "ctx"
    outside.mkdir()
    link = _member("link", tarfile.SYMTYPE, linkname=str(outside / "pwned"))
    archive = _tar(tmp_path / "c.tar", (link, b""),
                   (_member("link"), b"evil"))
    extract(archive, dest)
    assert list(outside.iterdir()) == []
    assert not (dest / "link").is_symlink() and (dest / "link").read_bytes() == b"evil"


def test_a_hard_link_below_a_symlink_is_refused(tmp_path: Path) -> None:
    outside, dest = tmp_path / "outside", tmp_path / "ctx"
    outside.mkdir()
    (outside / "secret").write_text("host file")
    archive = _tar(tmp_path / "c.tar", (_member("up", tarfile.SYMTYPE, linkname=str(outside)), b""),
                   (_member("h", tarfile.LNKTYPE, linkname="up/secret"), b""))
    with pytest.raises(ContextError, match="'up/secret' is below the symlink 'up'"):
        extract(archive, dest)
    assert os.stat(outside / "secret").st_nlink == 1


@pytest.mark.parametrize("members,message", [
    ([(_member("a", tarfile.LNKTYPE, linkname="a"), b"")],
     "tar member 'a' links to 'a', which the archive does not hold before it"),
    ([(_member("a", uid=2**40), b"x")], "cannot create tar member 'a': "),
    ([(_member("a"), b"x"), (_member("a/b"), b"y")], "cannot create tar member 'a/b': not a directory"),
])
def test_members_that_cannot_be_created_are_named(tmp_path: Path, members, message: str) -> None:
    with pytest.raises(ContextError) as err:
        extract(_tar(tmp_path / "c.tar", *members), tmp_path / "ctx")
    assert message in str(err.value)
    assert "Errno" not in str(err.value) and "KeyError" not in str(err.value)
