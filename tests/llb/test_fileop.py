"""File ops: every action, action chaining indexes, path resolution, chown and copy options."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from llb_helpers import decode

from buildkitpy import llb
from buildkitpy.api import ops_pb2


def actions(st: llb.State) -> tuple[ops_pb2.Op, list[ops_pb2.FileAction]]:
    _, op = decode(st).head
    assert op.WhichOneof("op") == "file" and not op.HasField("platform")
    return op, list(op.file.actions)


def test_mkdir_mkfile_rm_symlink_fields() -> None:
    when = datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    st = llb.image("busybox").dir("/app").file(
        llb.mkdir("data", 0o40755, make_parents=True, chown="1:2", created=when)
        .mkfile("data/f", 0o100644, "hi", chown="app:staff")
        .symlink("f", "/app/data/link", created=5)
        .rm("old/*", allow_not_found=True, allow_wildcard=True))
    op, (mkdir, mkfile, symlink, rm) = actions(st)
    assert mkdir.mkdir == ops_pb2.FileActionMkDir(
        path="/app/data", mode=0o755, makeParents=True, timestamp=1704164645000006000,
        owner=ops_pb2.ChownOpt(user=ops_pb2.UserOpt(byID=1), group=ops_pb2.UserOpt(byID=2)))
    assert mkfile.mkfile == ops_pb2.FileActionMkFile(
        path="/app/data/f", mode=0o644, data=b"hi", timestamp=-1, owner=ops_pb2.ChownOpt(
            user=ops_pb2.UserOpt(byName=ops_pb2.NamedUserOpt(name="app", input=0)),
            group=ops_pb2.UserOpt(byName=ops_pb2.NamedUserOpt(name="staff", input=0))))
    assert symlink.symlink == ops_pb2.FileActionSymlink(oldpath="f", newpath="/app/data/link", timestamp=5)
    assert rm.rm == ops_pb2.FileActionRm(path="/app/old/*", allowNotFound=True, allowWildcard=True)


def test_chained_actions_reference_the_previous_action() -> None:
    # on an image: one op input, so the n-th action's result is input len(inputs) + n
    op, acts = actions(llb.image("busybox").file(llb.mkdir("/a", 0o755).mkfile("/a/b", 0o644, b"")
                                                  .rm("/a/c")))
    assert len(op.inputs) == 1
    assert [(a.input, a.secondaryInput, a.output) for a in acts] == [(0, -1, -1), (1, -1, -1), (2, -1, 0)]
    # on scratch: no inputs at all
    op, acts = actions(llb.scratch().file(llb.mkdir("/a", 0o755).mkfile("/a/b", 0o644, b"")))
    assert len(op.inputs) == 0
    assert [(a.input, a.secondaryInput, a.output) for a in acts] == [(-1, -1, -1), (0, -1, 0)]


def test_copy_sources_become_secondary_inputs() -> None:
    ctx = llb.local("ctx", session_id="s")
    other = llb.image("alpine")
    st = llb.image("busybox").file(
        llb.copy(ctx, "a", "/dst/").copy(other, "/etc/os-release", "/x").copy(ctx, "b", "/y"))
    op, acts = actions(st)
    assert [i.digest for i in op.inputs] == [decode(s).head[0] for s in (llb.image("busybox"), ctx, other)]
    assert [(a.input, a.secondaryInput) for a in acts] == [(0, 1), (3, 2), (4, 1)]


def test_copy_from_an_action_chain_applied_to_another_state() -> None:
    prepared = llb.mkdir("/gen", 0o755).mkfile("/gen/f", 0o644, b"x").with_state(llb.scratch())
    op, acts = actions(llb.image("busybox").file(llb.copy(prepared, "/gen", "/out")))
    assert len(op.inputs) == 1
    # the chain's two actions come first; the copy reads the second one's result (1 input + index 1)
    assert [(a.WhichOneof("action"), a.input, a.secondaryInput, a.output) for a in acts] == [
        ("mkdir", -1, -1, -1), ("mkfile", 1, -1, -1), ("copy", 0, 2, 0)]


def test_copy_options_map_to_every_field() -> None:
    src = llb.image("alpine").dir("/usr")
    op, (act,) = actions(llb.image("busybox").dir("/work").file(llb.copy(
        src, "lib/../share", "out/.", mode=0o2755, chown=(0, 0), follow_symlinks=True, copy_dir_contents=True,
        include_patterns=["*.txt"], exclude_patterns=["tmp/"], required_paths=["a"], attempt_unpack=True,
        create_dest_path=True, allow_wildcard=True, allow_empty_wildcard=True,
        always_replace_existing_dest_paths=True, created=7)))
    assert act.copy == ops_pb2.FileActionCopy(
        src="/usr/share", dest="/work/out/.", mode=0o2755,
        owner=ops_pb2.ChownOpt(user=ops_pb2.UserOpt(byID=0), group=ops_pb2.UserOpt(byID=0)),
        followSymlink=True, dirCopyContents=True, include_patterns=["*.txt"], exclude_patterns=["tmp/"],
        required_paths=["a"], attemptUnpackDockerCompatibility=True, createDestPath=True, allowWildcard=True,
        allowEmptyWildcard=True, alwaysReplaceExistingDestPaths=True, timestamp=7)
    # uid 0 is still written (oneof presence), like Go
    assert act.copy.owner.user.WhichOneof("user") == "byID"
    op, (act,) = actions(llb.image("busybox").file(llb.copy(src, "a", "/b", mode="u+x")))
    assert (act.copy.mode, act.copy.modeStr) == (0, "u+x")


@pytest.mark.parametrize("dest,expected", [
    ("/abs", "/abs"), ("rel", "/w/rel"), ("rel/", "/w/rel/"), ("/", "/"), ("/.", "/."), ("d/.", "/w/d/."),
    ("../up", "/up"), ("//x", "/x"),
])
def test_copy_destination_keeps_trailing_slash_and_dot(dest: str, expected: str) -> None:
    _, (act,) = actions(llb.scratch().dir("/w").file(llb.copy(llb.image("busybox"), "/a", dest)))
    assert act.copy.dest == expected


def test_root_and_chown_parsing() -> None:
    assert llb.Chown.parse("root:root") == llb.Chown(0, 0)
    assert llb.Chown.parse("1000") == llb.Chown(1000, None)
    assert llb.Chown.parse("app:10") == llb.Chown("app", 10)
    assert llb.Chown.parse("99999999999") == llb.Chown("99999999999", None)  # out of int32: a name


def test_file_caps_are_exactly_what_client_llb_writes() -> None:
    # client/llb's per-action caps never make it into the metadata (its loop runs over an empty
    # list), so only file.base is emitted even for a mode string or include patterns.
    st = llb.image("busybox").file(llb.copy(llb.image("alpine"), "/a", "/b", mode="u+x",
                                            include_patterns=["x"]).symlink("a", "/c"))
    d = decode(st)
    assert d.caps(d.head[0]) == {"file.base"}


def test_bad_file_input() -> None:
    with pytest.raises(llb.LLBError, match="invalid input type str for copy"):
        llb.copy("busybox", "/a", "/b")  # type: ignore[arg-type]
    with pytest.raises(llb.LLBError, match="expected a FileAction"):
        llb.scratch().file("mkdir /a")  # type: ignore[arg-type]
