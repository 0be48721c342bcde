"""``ADD <git ref>``: the LLB the converter emits, as BuildKit's dispatchCopy builds it with llb.Git."""

from __future__ import annotations

import pytest

from buildkitpy import llb
from buildkitpy.api import ops_pb2
from buildkitpy.frontend.dockerfile.convert import ConvertError, convert
from buildkitpy.frontend.dockerfile.convert_git import GitRefError, parse_git_ref

pytestmark = pytest.mark.anyio
AMD64 = llb.Platform("linux", "amd64")
AUTH = {"git.authtokensecret": "GIT_AUTH_TOKEN", "git.authheadersecret": "GIT_AUTH_HEADER"}


def ops(definition: ops_pb2.Definition) -> list[ops_pb2.Op]:
    return [ops_pb2.Op.FromString(b) for b in getattr(definition, "def")]


async def convert_ops(df: str) -> tuple[list[ops_pb2.Op], ops_pb2.Definition]:
    result = await convert(df.encode(), opts={}, build_platform=AMD64)
    return ops(result.single.definition), result.single.definition


def sources(all_ops: list[ops_pb2.Op]) -> list[ops_pb2.SourceOp]:
    return [op.source for op in all_ops if op.HasField("source")]


def copies(all_ops: list[ops_pb2.Op]) -> list[ops_pb2.FileActionCopy]:
    return [a.copy for op in all_ops if op.HasField("file") for a in op.file.actions if a.HasField("copy")]


@pytest.mark.parametrize(
    "src,expected",
    [
        ("foo.txt", None),
        ("./x.git", None),
        ("http://h/file.tar", None),
        ("ftp://h/r.git", None),
        ("http://h/r.git", ("http://h/r.git", "", "")),
        ("https://h/r.git#main:sub/../d", ("https://h/r.git", "main", "d")),
        ("git://127.0.0.1:9/r#v1:/a/", ("git://127.0.0.1:9/r", "v1", "a")),
        ("git@example.com:o/r.git?branch=dev", ("git@example.com:o/r.git", "refs/heads/dev", "")),
        ("ssh://git@h/r?tag=v2&subdir=x", ("ssh://git@h/r", "refs/tags/v2", "x")),
    ],
)
def test_parse_git_ref(src: str, expected: tuple[str, str, str] | None) -> None:
    ref = parse_git_ref(src)
    assert (None if ref is None else (ref.remote, ref.ref, ref.subdir)) == expected


@pytest.mark.parametrize(
    "src,message",
    [
        ("https://h/r.git?x=1", "unexpected query 'x'"),
        ("https://h/r.git?tag=a&branch=b", "branch conflicts with tag"),
        ("https://h/r.git#main?ref=dev", None),  # the query is part of the fragment here: no error
        ("https://h/r.git?ref=a#b", "ref conflicts"),
        ("https://h/r.git?keep-git-dir=maybe", "invalid keep-git-dir value"),
    ],
)
def test_parse_git_ref_errors(src: str, message: str | None) -> None:
    if message is None:
        assert parse_git_ref(src) is not None
        return
    with pytest.raises(GitRefError, match=message):
        parse_git_ref(src)


async def test_add_git_emits_git_source_and_root_copy() -> None:
    all_ops, definition = await convert_ops("FROM scratch\nADD git://127.0.0.1:9418/repo.git#v1:sub /src\n")
    [src] = sources(all_ops)  # the build context is not read, so it is not in the definition
    assert src.identifier == "git://127.0.0.1:9418/repo.git#v1:sub"
    assert dict(src.attrs) == {"git.fullurl": "git://127.0.0.1:9418/repo.git", **AUTH}
    [cp] = copies(all_ops)
    # llb.Copy(st, "/", dest, &CopyInfo{CreateDestPath: true}): none of the local-source copy flags
    assert (cp.src, cp.dest, cp.createDestPath, cp.followSymlink, cp.allowWildcard, cp.mode) == (
        "/", "/src", True, False, False, -1)
    meta = {k: v for k, v in definition.metadata.items()}
    src_digest = next(d for d, m in meta.items() if "source.git" in m.caps)
    assert meta[src_digest].description["llb.customname"] == (
        "[1/1] ADD git://127.0.0.1:9418/repo.git#v1:sub /src")
    assert "com.docker.dockerfile.v1.command" not in meta[src_digest].description  # unlike ADD <url>


async def test_add_git_flags_and_query_options() -> None:
    df = ("FROM scratch\n"
          "ADD --keep-git-dir --checksum=0123abc --chmod=640 --chown=7:8 "
          "https://example.com/o/r.git?submodules=false&branch=rel /x/\n")
    all_ops, _ = await convert_ops(df)
    [src] = sources(all_ops)
    assert src.identifier == "git://example.com/o/r.git#refs/heads/rel"
    assert dict(src.attrs) == {
        "git.fullurl": "https://example.com/o/r.git", **AUTH, "git.keepgitdir": "true",
        "git.checksum": "0123abc", "git.skipsubmodules": "true"}
    [cp] = copies(all_ops)
    assert (cp.src, cp.dest, cp.mode, cp.owner.user.byID, cp.owner.group.byID) == ("/", "/x/", 0o640, 7, 8)


async def test_add_git_keep_git_dir_from_query_and_scp_form() -> None:
    all_ops, _ = await convert_ops("FROM scratch\nADD git@example.com:o/r.git?keep-git-dir=true /r\n")
    [src] = sources(all_ops)
    assert src.identifier == "git://example.com/o/r.git"
    assert src.attrs["git.keepgitdir"] == "true"
    assert src.attrs["git.mountsshsock"] == "default"


async def test_add_indistinguishable_github_ref_is_a_local_path() -> None:
    all_ops, _ = await convert_ops("FROM scratch\nADD github.com/o/r /r\n")
    [src] = sources(all_ops)
    assert src.identifier == "local://context"
    assert src.attrs["local.followpaths"] == '["github.com/o/r"]'


@pytest.mark.parametrize(
    "line,message",
    [
        ("COPY git://h/r.git /x", "source can't be a git ref for COPY"),
        ("ADD --keep-git-dir=false git://h/r.git?keep-git-dir=1 /x", "inconsistent keep-git-dir"),
        ("ADD --checksum=aa git://h/r.git?checksum=bb /x", 'checksum mismatch "aa" != "bb"'),
        ("ADD --checksum=aa git://h/r.git ctx.txt /x/", "checksum can't be specified for multiple sources"),
        ("ADD --checksum=aa ctx.txt /x", "checksum requires HTTP(S) or Git sources"),
        ("ADD git://h/r.git?nope=1 /x", "unexpected query 'nope'"),
        ("ADD git://h/r.git?fetch-by-commit /x", "fetch-by-commit git references are not supported yet"),
    ],
)
async def test_git_source_errors_name_the_line(line: str, message: str) -> None:
    with pytest.raises(ConvertError) as err:
        await convert(f"FROM scratch\n{line}\n".encode(), opts={}, build_platform=AMD64)
    assert message in str(err.value)
    assert err.value.lines == (2, 2)
