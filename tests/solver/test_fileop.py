"""Every FileOp action and option, run through the real solver on real overlay snapshots."""

from __future__ import annotations

import io
import os
import stat
import tarfile

import pytest

from buildkitpy.errors import SolveError
from tests.solver.llbutil import (
    LLB,
    chown_ids,
    chown_names,
    copy,
    mkdir,
    mkfile,
    rm,
    symlink,
)

TS = 1_600_000_000 * 10**9


def context(b: LLB) -> str:
    """A source tree: files, a dir with nesting, a symlink, /etc/passwd and /etc/group."""
    acts = [
        mkdir("/etc", input=-1, output=-1),
        mkfile("/etc/passwd", b"root:x:0:0::/root:/bin/sh\nalice:x:1000:1001::/home/alice:/bin/sh\n",
               input=0, output=-1),
        mkfile("/etc/group", b"root:x:0:\nstaff:x:50:\n", input=1, output=-1),
        mkfile("/a.txt", b"A", input=2, output=-1),
        mkfile("/b.txt", b"B", input=3, output=-1),
        mkfile("/c.md", b"C", input=4, output=-1),
        mkdir("/src/sub", parents=True, input=5, output=-1),
        mkfile("/src/one", b"1", mode=0o600, input=6, output=-1),
        mkfile("/src/sub/two", b"2", input=7, output=-1),
        symlink("a.txt", "/link", input=8, output=0),
    ]
    return b.file(acts)


def test_mkdir_mkfile_options(env, stat_of):
    b = LLB()
    d = b.file([mkdir("/x/y/z", 0o711, parents=True, owner=chown_ids(5, 6), timestamp=TS, output=-1),
                mkfile("/x/y/z/f", b"data", 0o640, input=0, owner=chown_ids(7, 8), timestamp=TS)])
    defn = b.definition(d)
    st = stat_of(defn, "x/y")
    assert stat.S_IMODE(st.st_mode) == 0o711 and (st.st_uid, st.st_gid) == (5, 6)
    assert st.st_mtime_ns == TS
    st = stat_of(defn, "x/y/z/f")
    assert stat.S_IMODE(st.st_mode) == 0o640 and (st.st_uid, st.st_gid) == (7, 8) and st.st_size == 4
    assert st.st_mtime_ns == TS


def test_mkdir_without_parents_fails_clearly(env):
    b = LLB()
    d = b.file([mkdir("/no/such/dir")])
    with pytest.raises(SolveError, match="mkdir /no/such/dir") as ei:
        env.solve(b.definition(d))
    assert ei.value.vertex == d


def test_mkdir_existing_is_noop(env):
    b = LLB()
    d = b.file([mkdir("/d", output=-1), mkdir("/d", input=0)])
    assert env.tree(b.definition(d)) == {"d": "dir"}


def test_rm_variants(env):
    b = LLB()
    ctx = context(b)
    r = b.file([rm("/a.txt", output=-1), rm("/src", input=1, output=-1),
                rm("/nope", input=2, allow_not_found=True, output=-1), rm("/*.md", input=3, wildcard=True)],
               inputs=[ctx])
    tree = env.tree(b.definition(r))
    assert "a.txt" not in tree and "src" not in tree and "c.md" not in tree
    assert tree["b.txt"] == b"B" and tree["link"] == ("link", "a.txt")


def test_rm_missing_fails(env):
    b = LLB()
    ctx = context(b)
    r = b.file([rm("/nope")], inputs=[ctx])
    with pytest.raises(SolveError, match="rm /nope: no such file"):
        env.solve(b.definition(r))


def test_symlink_owner_and_time(env, stat_of):
    b = LLB()
    s = b.file([symlink("/target", "/l", owner=chown_ids(3, 4), timestamp=TS)])
    st = stat_of(b.definition(s), "l")
    assert stat.S_ISLNK(st.st_mode) and (st.st_uid, st.st_gid) == (3, 4) and st.st_mtime_ns == TS


def test_copy_file_and_rename(env):
    b = LLB()
    ctx = context(b)
    c = b.file([copy("/a.txt", "/renamed", output=-1), copy("/b.txt", "/dir/", input=1, secondary=0)],
               inputs=[ctx])
    tree = env.tree(b.definition(c))
    assert tree == {"renamed": b"A", "dir": "dir", "dir/b.txt": b"B"}


def test_copy_dir_with_and_without_contents(env):
    b = LLB()
    ctx = context(b)
    c1 = b.file([copy("/src", "/out", dirCopyContents=True, createDestPath=True)], inputs=[ctx])
    assert env.tree(b.definition(c1)) == {"out": "dir", "out/one": b"1", "out/sub": "dir",
                                          "out/sub/two": b"2"}
    b2 = LLB()
    ctx2 = context(b2)
    c2 = b2.file([mkdir("/out", output=-1), copy("/src", "/out", input=1, secondary=0)], inputs=[ctx2])
    assert set(env.tree(b2.definition(c2))) == {"out", "out/src", "out/src/one", "out/src/sub",
                                                "out/src/sub/two"}


def test_copy_without_create_dest_path_needs_parent(env):
    b = LLB()
    ctx = context(b)
    c = b.file([copy("/a.txt", "/missing/a.txt", createDestPath=False)], inputs=[ctx])
    with pytest.raises(SolveError, match="parent directory does not exist"):
        env.solve(b.definition(c))


def test_copy_wildcards(env):
    b = LLB()
    ctx = context(b)
    c = b.file([copy("/*.txt", "/stars/", allowWildcard=True, createDestPath=True)], inputs=[ctx])
    assert env.tree(b.definition(c)) == {"stars": "dir", "stars/a.txt": b"A", "stars/b.txt": b"B"}


def test_copy_empty_wildcard(env):
    b = LLB()
    ctx = context(b)
    ok = b.file([copy("/*.zip", "/z/", allowWildcard=True, allowEmptyWildcard=True, createDestPath=True)],
                inputs=[ctx])
    assert env.tree(b.definition(ok)) == {}
    b2 = LLB()
    ctx2 = context(b2)
    bad = b2.file([copy("/*.zip", "/z/", allowWildcard=True, createDestPath=True)], inputs=[ctx2])
    with pytest.raises(SolveError):
        env.solve(b2.definition(bad))


def test_copy_missing_source_is_cache_key_error(env):
    b = LLB()
    ctx = context(b)
    c = b.file([copy("/missing.txt", "/m", createDestPath=True)], inputs=[ctx])
    with pytest.raises(SolveError, match="failed to compute cache key.*missing.txt.*not found") as ei:
        env.solve(b.definition(c))
    assert ei.value.vertex == c


def test_copy_chown_by_id_and_name(env, stat_of):
    b = LLB()
    ctx = context(b)
    c = b.file([copy("/src", "/ids", dirCopyContents=True, createDestPath=True, owner=chown_ids(11, 12),
                     output=-1),
                copy("/a.txt", "/named", input=1, owner=chown_names("alice", "staff", 0))], inputs=[ctx])
    defn = b.definition(c)
    assert (stat_of(defn, "ids/sub/two").st_uid, stat_of(defn, "ids/sub/two").st_gid) == (11, 12)
    assert (stat_of(defn, "ids").st_uid, stat_of(defn, "ids").st_gid) == (11, 12)
    st = stat_of(defn, "named")
    assert (st.st_uid, st.st_gid) == (1000, 50)


def test_copy_chown_unknown_user_is_root(env, stat_of):
    # BuildKit's file op leaves a name missing from /etc/passwd (or /etc/group) at 0
    b = LLB()
    ctx = context(b)
    c = b.file([copy("/a.txt", "/x", owner=chown_names("bob", "nogroup-here", 0))], inputs=[ctx])
    st = stat_of(b.definition(c), "x")
    assert (st.st_uid, st.st_gid) == (0, 0)


def test_copy_mode_and_mode_string(env, stat_of):
    b = LLB()
    ctx = context(b)
    c = b.file([copy("/a.txt", "/octal", mode=0o750, output=-1),
                copy("/src/one", "/sym", input=1, modeStr="u+x,g+r,o=r", output=-1),
                copy("/a.txt", "/suid", input=2, mode=0o4755)], inputs=[ctx])
    defn = b.definition(c)
    assert stat.S_IMODE(stat_of(defn, "octal").st_mode) == 0o750
    assert stat.S_IMODE(stat_of(defn, "sym").st_mode) == 0o744
    assert stat.S_IMODE(stat_of(defn, "suid").st_mode) == 0o4755


def test_copy_follow_symlink(env):
    b = LLB()
    ctx = context(b)
    c = b.file([copy("/link", "/nofollow", output=-1), copy("/link", "/follow", input=1, followSymlink=True)],
               inputs=[ctx])
    tree = env.tree(b.definition(c))
    assert tree["nofollow"] == ("link", "a.txt") and tree["follow"] == b"A"


def test_copy_timestamp(env, stat_of):
    b = LLB()
    ctx = context(b)
    c = b.file([copy("/src", "/t", dirCopyContents=True, createDestPath=True, timestamp=TS)], inputs=[ctx])
    assert stat_of(b.definition(c), "t/sub/two").st_mtime_ns == TS


def test_copy_include_exclude(env):
    b = LLB()
    ctx = context(b)
    c = b.file([copy("/", "/f", dirCopyContents=True, createDestPath=True, include_patterns=["src", "*.txt"],
                     exclude_patterns=["src/sub", "b.txt"])], inputs=[ctx])
    assert env.tree(b.definition(c)) == {"f": "dir", "f/a.txt": b"A", "f/src": "dir", "f/src/one": b"1"}


def test_copy_required_paths(env):
    b = LLB()
    ctx = context(b)
    c = b.file([copy("/src", "/r", dirCopyContents=True, createDestPath=True, required_paths=["nope"])],
               inputs=[ctx])
    with pytest.raises(SolveError, match="required path"):
        env.solve(b.definition(c))


def test_copy_always_replace_existing(env):
    b = LLB()
    ctx = context(b)
    base = b.file([mkdir("/dst/src", parents=True, output=-1),
                   mkfile("/dst/src/one", b"x", input=0, output=-1),
                   symlink("/nowhere", "/dst/src/sub", input=1)])
    plain = b.file([copy("/src", "/dst", input=0, secondary=1)], inputs=[base, ctx])
    with pytest.raises(SolveError):
        env.solve(b.definition(plain))  # a directory cannot overwrite a symlink by default
    b2 = LLB()
    ctx2 = context(b2)
    base2 = b2.file([mkdir("/dst/src", parents=True, output=-1),
                     mkfile("/dst/src/one", b"x", input=0, output=-1),
                     symlink("/nowhere", "/dst/src/sub", input=1)])
    rep = b2.file([copy("/src", "/dst", input=0, secondary=1, alwaysReplaceExistingDestPaths=True)],
                  inputs=[base2, ctx2])
    tree = env.tree(b2.definition(rep))
    assert tree["dst/src/one"] == b"1" and tree["dst/src/sub"] == "dir" and tree["dst/src/sub/two"] == b"2"


def test_copy_unpacks_archives(env, stat_of):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in (("top.txt", b"T"), ("d/inner.txt", b"I")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600
            tf.addfile(info, io.BytesIO(data))
        evil = tarfile.TarInfo("../../escape.txt")
        evil.size = 1
        tf.addfile(evil, io.BytesIO(b"E"))
    b = LLB()
    src = b.file([mkfile("/bundle.tar.gz", buf.getvalue())])
    c = b.file([copy("/bundle.tar.gz", "/ex/", attemptUnpackDockerCompatibility=True, createDestPath=True,
                     output=-1),
                copy("/bundle.tar.gz", "/raw/", input=1, createDestPath=True)], inputs=[src])
    tree = env.tree(b.definition(c))
    assert tree["ex/top.txt"] == b"T" and tree["ex/d/inner.txt"] == b"I"
    assert tree["ex/escape.txt"] == b"E"  # confined to the destination
    assert tree["raw/bundle.tar.gz"] == buf.getvalue()
    assert stat.S_IMODE(stat_of(b.definition(c), "ex/top.txt").st_mode) == 0o600


def test_paths_stay_inside_root(env):
    b = LLB()
    d = b.file([mkdir("/tmp", output=-1), symlink("/../../../../tmp", "/evil", input=0, output=-1),
                mkfile("/evil/pwned", b"x", input=1)])
    tree = env.tree(b.definition(d))
    assert tree["evil"] == ("link", "/../../../../tmp") and tree["tmp/pwned"] == b"x"
    assert not os.path.exists("/tmp/pwned")


def test_multiple_outputs_and_secondary_from_action(env):
    b = LLB()
    f = b.file([mkfile("/one", b"1", output=1), mkdir("/d", output=-1),
                copy("/one", "/d/copied", input=1, secondary=0, output=0)])
    defn0 = b.definition(f, 0)
    defn1 = b.definition(f, 1)
    assert env.tree(defn0) == {"d": "dir", "d/copied": b"1"}
    assert env.tree(defn1) == {"one": b"1"}


def test_merge_and_diff(env):
    b = LLB()
    base = b.file([mkfile("/base", b"b")])
    top = b.file([mkfile("/top", b"t", input=0)], inputs=[base])
    other = b.file([mkfile("/other", b"o")])
    d = b.diff(base, top)
    m = b.merge([other, d])
    assert env.tree(b.definition(d)) == {"top": b"t"}
    assert env.tree(b.definition(m)) == {"other": b"o", "top": b"t"}


def test_copy_wildcard_class_bang_is_literal_like_go(env):
    """Go's filepath.Match negates a class only with "^": "[!ab]" matches "!", "a" or "b"."""
    b = LLB()
    ctx = b.file([mkfile("/filea.txt", b"a", output=-1), mkfile("/fileb.txt", b"b", input=0, output=-1),
                  mkfile("/filec.txt", b"c", input=1)])
    c = b.file([copy("/file[!ab].txt", "/neg/", allowWildcard=True, createDestPath=True)], inputs=[ctx])
    tree = env.tree(b.definition(c))
    assert sorted(k for k in tree if k.startswith("neg/")) == ["neg/filea.txt", "neg/fileb.txt"]
