"""ADD's archive extraction reports a member it cannot create by its name, kind and reason."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from buildkitpy.errors import SolveError
from buildkitpy.solver.ops.tarunpack import unpack
from tests.tarfiles import member, write_tar


def test_hard_link_to_a_missing_member_names_it(tmp_path: Path) -> None:
    tar = write_tar(tmp_path / "a.tar", (member("ok.txt"), b"x"),
                    (member("link", tarfile.LNKTYPE, linkname="missing"), b""))
    with pytest.raises(SolveError) as err:
        unpack(tar, tmp_path / "dest", None)
    assert str(err.value) == "failed to extract a.tar: link 'link': no such file or directory"


def test_device_node_without_cap_mknod_says_so(tmp_path: Path) -> None:
    tar = write_tar(tmp_path / "d.tar", (member("null", tarfile.CHRTYPE, devmajor=1, devminor=3), b""))
    (tmp_path / "dest").mkdir()
    # in a new user namespace root has no CAP_MKNOD over the host's devices: mknod is EPERM there
    script = ("import sys; from pathlib import Path; from buildkitpy.solver.ops.tarunpack import unpack\n"
              "try: unpack(Path(sys.argv[1]), Path(sys.argv[2]), None)\n"
              "except Exception as e: print(type(e).__name__, e)\n")
    res = subprocess.run(["unshare", "--user", "--map-root-user", sys.executable, "-c", script,
                          str(tar), str(tmp_path / "dest")], capture_output=True, text=True, timeout=60)
    expected = ("SolveError failed to extract d.tar: device node 'null': operation not permitted "
                "(creating device nodes needs CAP_MKNOD outside a user namespace)")
    assert res.stdout.strip() == expected, res.stdout + res.stderr


def test_a_directory_over_a_symlink_replaces_it_instead_of_chmodding_its_target(tmp_path: Path) -> None:
    # found by the fuzz suite: the directory's metadata went through the symlink, outside the tree
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o755)
    os.chmod(outside, 0o755)
    tar = write_tar(tmp_path / "a.tar", (member("etc", tarfile.SYMTYPE, linkname=str(outside)), b""),
                    (member("etc", tarfile.DIRTYPE, mode=0o777), b""))
    unpack(tar, tmp_path / "dest", None)
    assert stat.S_IMODE(os.stat(outside).st_mode) == 0o755
    assert (tmp_path / "dest" / "etc").is_dir() and not (tmp_path / "dest" / "etc").is_symlink()
    assert stat.S_IMODE(os.stat(tmp_path / "dest" / "etc").st_mode) == 0o777
