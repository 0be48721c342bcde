"""Merge, diff and file-op chains through the daemon, on top of exec results."""

from __future__ import annotations

import os

import pytest

from buildkitpy import llb
from tests.acceptance.helpers import base, sh

pytestmark = pytest.mark.root


def test_merge_and_diff_of_exec_results(bb, tmp_path):
    root = base()
    added = sh(root, "mkdir -p /app && echo one > /app/one && rm /bin/vi").root()
    diff = llb.diff(root, added)  # only what the RUN changed: /app/* and the deletion of /bin/vi
    other = llb.scratch().file(llb.mkfile("/two", 0o600, b"two\n"))
    merged = llb.merge([llb.scratch().file(llb.mkdir("/bin", 0o755)
                                             .mkfile("/bin/vi", 0o755, b"stale")), diff, other])
    out = tmp_path / "merged"
    bb.build(merged, out)
    assert (out / "app" / "one").read_text() == "one\n"
    assert (out / "two").read_text() == "two\n"
    assert oct(os.stat(out / "two").st_mode & 0o777) == "0o600"
    assert not (out / "bin" / "vi").exists()  # the diff's deletion applies over the lower layer
    assert not (out / "bin" / "sh").exists()  # nothing of the base beyond the diff

    out_diff = tmp_path / "diff"
    bb.build(diff, out_diff)
    # /bin holds the deletion, /etc only the executor's removed resolv.conf/hosts stubs (BuildKit
    # restores the parent's times after the run too, so the directory itself still shows as changed)
    assert set(os.listdir(out_diff)) <= {"app", "bin", "etc"} and "app" in os.listdir(out_diff)
    assert os.listdir(out_diff / "app") == ["one"]
    for d in ("bin", "etc"):
        assert not (out_diff / d).exists() or os.listdir(out_diff / d) == []
    # and the merge runs as a rootfs: the diff applied on the base again behaves like the RUN's result
    rebased = sh(llb.merge([root, diff]),
                 "cat /app/one > /seen; [ -e /bin/vi ] && echo vi || echo novi >> /seen")
    bb.build(rebased.root(), tmp_path / "rebased")
    assert (tmp_path / "rebased" / "seen").read_text() == "one\nnovi\n"


def test_file_op_chain_between_execs(bb, tmp_path):
    ctx = tmp_path / "ctx"
    (ctx / "src" / "deep").mkdir(parents=True)
    (ctx / "src" / "a.py").write_text("print('a')\n")
    (ctx / "src" / "b.txt").write_text("b\n")
    (ctx / "src" / "deep" / "c.py").write_text("c\n")
    local = llb.local("ctx")
    st = (sh(base(), "mkdir -p /work && echo built > /work/artifact").root()
          .file(llb.copy(local, "/src", "/work/src", copy_dir_contents=True, include_patterns=["**/*.py"],
                         create_dest_path=True, chown="1000:1000", mode=0o640)
                .mkdir("/work/empty/nested", 0o700, make_parents=True)
                .mkfile("/work/conf", 0o644, b"k=v\n", chown=(1000, 1000))
                .symlink("/work/conf", "/work/conf.link")
                .rm("/work/artifact"))
          .file(llb.copy(local, "/src/*.txt", "/work/txt/", allow_wildcard=True, create_dest_path=True)))
    checked = sh(st, "cd /work && find . | sort > /tree; stat -c '%n %a %u:%g' src/a.py conf > /meta;"
                     "cat conf.link > /via-link")
    out = tmp_path / "out"
    bb.build(checked.root(), out, locals={"ctx": ctx})
    tree = (out / "tree").read_text().split()
    assert tree == [".", "./conf", "./conf.link", "./empty", "./empty/nested", "./src", "./src/a.py",
                    "./src/deep", "./src/deep/c.py", "./txt", "./txt/b.txt"]
    assert (out / "meta").read_text() == "src/a.py 640 1000:1000\nconf 644 1000:1000\n"
    assert (out / "via-link").read_text() == "k=v\n"


def test_failing_file_op_names_the_cause(bb, tmp_path):
    st = sh(base(), "true").root().file(llb.rm("/definitely/missing"))
    r = bb.build(st, None, check=False)
    assert not r.ok
    assert "/definitely/missing" in r.stderr
    assert bb.daemon.alive()
