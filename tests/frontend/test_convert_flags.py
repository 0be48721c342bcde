"""COPY/ADD/RUN flags outside the recorded corpus, checked against what BuildKit's dispatchCopy /
dispatchRun / dispatchSSH and client/llb emit for them (reasoned from the Go code, op by op)."""

from __future__ import annotations

import json

import pytest

from buildkitpy import llb
from buildkitpy.api import ops_pb2
from buildkitpy.caps import EXEC_LLB_CAPS, LLB_CAPS
from buildkitpy.frontend.dockerfile.convert import ConvertError, convert

pytestmark = pytest.mark.anyio
AMD64 = llb.Platform("linux", "amd64")
CAPS = frozenset(LLB_CAPS) | frozenset(EXEC_LLB_CAPS)


async def convert_df(df: str, caps: frozenset[str] | None = CAPS):  # noqa: ANN201
    return (await convert(df.encode(), opts={}, build_platform=AMD64, llb_caps=caps)).single


def ops(definition: ops_pb2.Definition) -> list[ops_pb2.Op]:
    return [ops_pb2.Op.FromString(b) for b in getattr(definition, "def")]


def digest(definition: ops_pb2.Definition, op: ops_pb2.Op) -> str:
    return llb.vertex.digest_of(next(b for b in getattr(definition, "def") if ops_pb2.Op.FromString(b) == op))


def meta(definition: ops_pb2.Definition, op: ops_pb2.Op) -> ops_pb2.OpMetadata:
    raw = next(b for b in getattr(definition, "def") if ops_pb2.Op.FromString(b) == op)
    return definition.metadata[llb.vertex.digest_of(raw)]


def copies(all_ops: list[ops_pb2.Op]) -> list[ops_pb2.FileActionCopy]:
    return [a.copy for op in all_ops if op.HasField("file") for a in op.file.actions if a.HasField("copy")]


def local_source(all_ops: list[ops_pb2.Op]) -> ops_pb2.SourceOp:
    return next(op.source for op in all_ops
                if op.HasField("source") and op.source.identifier.startswith("local"))


# ---- COPY --parents ---------------------------------------------------------------------------------------
async def test_copy_parents_pivot_patterns_and_required_paths() -> None:
    res = await convert_df("FROM scratch\nCOPY --parents a/./b/c.txt x/*.txt d/e /dst/\n")
    all_ops = ops(res.definition)
    a, x, d = copies(all_ops)
    # with a "/./" pivot the source is the part before it and the pattern the part after; the
    # required path is filepath.Join(parent, pattern)
    assert (a.src, list(a.include_patterns), list(a.required_paths)) == ("/a", ["b/c.txt"], ["/a/b/c.txt"])
    # without one the source is "/"; wildcards require nothing
    assert (x.src, list(x.include_patterns), list(x.required_paths)) == ("/", ["x/*.txt"], [])
    assert (d.src, list(d.include_patterns), list(d.required_paths)) == ("/", ["d/e"], ["/d/e"])
    for c in (a, x, d):
        assert (c.dest, c.followSymlink, c.dirCopyContents, c.allowWildcard, c.allowEmptyWildcard) == (
            "/dst/", True, True, True, True)
    [file_op] = [op for op in all_ops if op.HasField("file")]
    # client/llb's per-action cap loop runs over an empty list, so only file.base is recorded
    assert dict(meta(res.definition, file_op).caps) == {"file.base": True}
    assert json.loads(local_source(all_ops).attrs["local.followpaths"]) == ["a/b/c.txt", "d/e", "x/*.txt"]
    history = json.loads(res.image_config)["history"]
    assert history[-1]["created_by"] == "COPY --parents a/./b/c.txt x/*.txt d/e /dst/ # buildkit"


# ---- COPY --link / ADD --link -----------------------------------------------------------------------------
async def test_copy_link_is_a_merge_of_a_scratch_layer() -> None:
    res = await convert_df("FROM scratch\nWORKDIR /w\nCOPY --link a.txt ./\n")
    all_ops = ops(res.definition)
    [merge] = [op for op in all_ops if op.HasField("merge")]
    files = [op for op in all_ops if op.HasField("file")]
    mkdir, layer = files  # WORKDIR's mkdir, then the copy onto scratch
    [cp] = copies([layer])
    assert (cp.src, cp.dest) == ("/a.txt", "/w/")
    # the copy's own input is the context only: its destination is scratch
    assert [a.input for a in layer.file.actions] == [-1]
    assert [i.digest for i in merge.inputs] == [digest(res.definition, op) for op in (mkdir, layer)]
    layer_md, merge_md = meta(res.definition, layer), meta(res.definition, merge)
    assert layer_md.description["llb.customname"] == "[2/2] COPY --link a.txt ./"
    assert merge_md.description["llb.customname"] == "[2/2] LINK COPY --link a.txt ./"
    assert layer_md.progress_group.id == merge_md.progress_group.id != ""
    assert layer_md.progress_group.name == merge_md.progress_group.name == "[2/2] COPY --link a.txt ./"
    assert (layer_md.progress_group.weak, merge_md.progress_group.weak) == (True, False)
    assert merge_md.caps["mergeop"]
    assert res.definition.Source.locations[digest(res.definition, merge)].locations


@pytest.mark.parametrize("df,caps", [
    ("FROM scratch\nWORKDIR /w\nCOPY --link --chmod=600 a.txt /\n", CAPS),  # --chmod turns linking off
    ("FROM scratch\nWORKDIR /w\nADD --link a.txt /\n", CAPS - {"mergeop"}),  # so does no merge op cap
    ("FROM scratch\nWORKDIR /w\nCOPY --link=false a.txt /\n", CAPS),
])
async def test_link_falls_back_to_a_plain_copy(df: str, caps: frozenset[str]) -> None:
    res = await convert_df(df, caps)
    all_ops = ops(res.definition)
    assert not any(op.HasField("merge") for op in all_ops)
    files = [op for op in all_ops if op.HasField("file")]
    assert not any(meta(res.definition, op).HasField("progress_group") for op in files)


async def test_link_onto_scratch_is_the_layer_alone() -> None:
    """llb.Merge drops scratch inputs and returns a single remaining input as is."""
    res = await convert_df("FROM scratch\nCOPY --link a.txt /\n")
    all_ops = ops(res.definition)
    assert not any(op.HasField("merge") for op in all_ops)
    [file_op] = [op for op in all_ops if op.HasField("file")]
    md = meta(res.definition, file_op)
    assert md.progress_group.weak and md.description["llb.customname"] == "[1/1] COPY --link a.txt /"


async def test_add_link_merges_too() -> None:
    res = await convert_df("FROM scratch\nWORKDIR /w\nADD --link a.tar /x/\n")
    all_ops = ops(res.definition)
    assert any(op.HasField("merge") for op in all_ops)
    [cp] = copies(all_ops)
    assert cp.attemptUnpackDockerCompatibility


# ---- COPY --exclude ---------------------------------------------------------------------------------------
async def test_copy_and_add_exclude_patterns_on_every_copy() -> None:
    res = await convert_df("FROM scratch\nCOPY --exclude=*.tmp --exclude=x/** a b /d/\n"
                           "ADD --exclude=*.log https://example.com/f.tgz /e/\n")
    cps = copies(ops(res.definition))
    assert [list(c.exclude_patterns) for c in cps] == [["*.tmp", "x/**"], ["*.tmp", "x/**"], ["*.log"]]
    assert [list(c.include_patterns) for c in cps] == [[], [], []]
    history = [h["created_by"] for h in json.loads(res.image_config)["history"]]
    assert history == ["COPY a b /d/ # buildkit", "ADD https://example.com/f.tgz /e/ # buildkit"]


# ---- RUN --security / --network ---------------------------------------------------------------------------
async def run_op(df: str) -> tuple[ops_pb2.Op, ops_pb2.OpMetadata]:
    res = await convert_df(df)
    [op] = [op for op in ops(res.definition) if op.HasField("exec")]
    return op, meta(res.definition, op)


async def test_run_security_insecure_and_sandbox() -> None:
    op, md = await run_op("FROM scratch\nRUN --security=insecure true\n")
    assert op.exec.security == ops_pb2.INSECURE and md.caps["exec.meta.security"]
    op, md = await run_op("FROM scratch\nRUN --security=sandbox true\n")
    assert op.exec.security == ops_pb2.SANDBOX and "exec.meta.security" not in md.caps


@pytest.mark.parametrize("mode,expected", [("none", ops_pb2.NONE), ("host", ops_pb2.HOST),
                                           ("default", ops_pb2.UNSET)])
async def test_run_network_modes(mode: str, expected: int) -> None:
    op, md = await run_op(f"FROM scratch\nRUN --network={mode} true\n")
    assert op.exec.network == expected
    assert ("exec.meta.network" in md.caps) == (expected != ops_pb2.UNSET)


async def test_run_network_applies_to_its_command_only() -> None:
    res = await convert_df("FROM scratch\nRUN --network=none true\nRUN true\n")
    first, second = [op for op in ops(res.definition) if op.HasField("exec")]
    assert (first.exec.network, second.exec.network) == (ops_pb2.NONE, ops_pb2.UNSET)


@pytest.mark.parametrize("flag,message", [
    ("--network=bridge", "network"), ("--security=privileged", "security"),
])
async def test_run_bad_network_or_security_is_a_clear_error(flag: str, message: str) -> None:
    with pytest.raises(ConvertError) as err:
        await convert_df(f"FROM scratch\nRUN {flag} true\n")
    assert message in str(err.value) and flag.split("=")[1] in str(err.value)
    assert err.value.lines == (2, 2)


# ---- RUN --mount=type=ssh ---------------------------------------------------------------------------------
async def test_ssh_mount_default_id_is_left_empty() -> None:
    op, md = await run_op("FROM scratch\nRUN --mount=type=ssh true\n")
    [m] = [m for m in op.exec.mounts if m.mountType == ops_pb2.SSH]
    # llb.SSHID(m.CacheID) with CacheID "": the daemon reads "" as "default"
    got = (m.SSHOpt.ID, m.dest, m.SSHOpt.mode, m.SSHOpt.optional)
    assert got == ("", "/run/buildkit/ssh_agent.0", 0o600, True)
    assert "SSH_AUTH_SOCK=/run/buildkit/ssh_agent.0" in op.exec.meta.env
    assert md.caps["exec.mount.ssh"]


async def test_ssh_mount_with_id_target_and_owner() -> None:
    op, _ = await run_op("FROM scratch\nRUN --mount=type=ssh,id=gh,target=/s.sock,uid=5,required true\n")
    [m] = [m for m in op.exec.mounts if m.mountType == ops_pb2.SSH]
    got = (m.SSHOpt.ID, m.dest, m.SSHOpt.uid, m.SSHOpt.mode, m.SSHOpt.optional)
    assert got == ("gh", "/s.sock", 5, 0o600, False)
    assert "SSH_AUTH_SOCK=/s.sock" in op.exec.meta.env


async def test_ssh_mount_source_is_refused() -> None:
    with pytest.raises(ConvertError, match="ssh does not support source"):
        await convert_df("FROM scratch\nRUN --mount=type=ssh,source=/x true\n")
