"""The build context ``docker build`` uploads is unpacked inside its directory whatever the tar holds
(cases the fuzz suite found: a file written through a symlink an earlier member made, a hard link
to a member that is not there, owners and paths that cannot be created)."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from buildkitpy.dockerapi.contexttar import ContextError, extract
from tests.tarfiles import member, write_tar


def test_a_file_replaces_a_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    outside, dest = tmp_path / "outside", tmp_path / "ctx"
    outside.mkdir()
    link = member("link", tarfile.SYMTYPE, linkname=str(outside / "pwned"))
    archive = write_tar(tmp_path / "c.tar", (link, b""), (member("link"), b"evil"))
    extract(archive, dest)
    assert list(outside.iterdir()) == []
    assert not (dest / "link").is_symlink() and (dest / "link").read_bytes() == b"evil"


def test_a_hard_link_below_a_symlink_is_refused(tmp_path: Path) -> None:
    outside, dest = tmp_path / "outside", tmp_path / "ctx"
    outside.mkdir()
    (outside / "secret").write_text("host file")
    archive = write_tar(tmp_path / "c.tar", (member("up", tarfile.SYMTYPE, linkname=str(outside)), b""),
                        (member("h", tarfile.LNKTYPE, linkname="up/secret"), b""))
    with pytest.raises(ContextError, match="'up/secret' is below the symlink 'up'"):
        extract(archive, dest)
    assert os.stat(outside / "secret").st_nlink == 1


@pytest.mark.parametrize("members,message", [
    ([(member("a", tarfile.LNKTYPE, linkname="a"), b"")],
     "tar member 'a' links to 'a', which the archive does not hold before it"),
    ([(member("a", uid=2**40), b"x")], "cannot create tar member 'a': "),
    ([(member("a"), b"x"), (member("a/b"), b"y")], "cannot create tar member 'a/b': not a directory"),
])
def test_members_that_cannot_be_created_are_named(tmp_path: Path, members, message: str) -> None:
    with pytest.raises(ContextError) as err:
        extract(write_tar(tmp_path / "c.tar", *members), tmp_path / "ctx")
    assert message in str(err.value)
    assert "Errno" not in str(err.value) and "KeyError" not in str(err.value)
