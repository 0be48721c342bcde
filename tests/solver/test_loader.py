"""Loading definitions: digests, names, source locations, and a clear error for each bad shape."""

from __future__ import annotations

import glob
import hashlib
import json
from pathlib import Path

import pytest
from google.protobuf import json_format

from buildkitpy.api import ops_pb2
from buildkitpy.errors import InvalidArgument
from buildkitpy.solver import load_definition
from tests.solver.llbutil import LLB, copy, mkfile

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
CONFORMANCE = sorted(glob.glob(str(SHARED / "conformance/llb/*.json")))


@pytest.mark.parametrize("path", CONFORMANCE, ids=lambda p: p.rsplit("/", 1)[-1])
def test_conformance_definitions_load(path):
    with open(path) as f:
        defn = json_format.ParseDict(json.load(f)["definition"], ops_pb2.Definition())
    graph = load_definition(defn)
    digests = {"sha256:" + hashlib.sha256(d).hexdigest() for d in getattr(defn, "def")}
    assert set(graph.vertices) <= digests
    assert set(defn.metadata) <= digests
    for dgst, md in defn.metadata.items():
        if dgst in graph.vertices and "llb.customname" in md.description:
            assert graph.vertices[dgst].name == md.description["llb.customname"]
    assert graph.result is not None and graph.result.digest in graph.vertices


def test_conformance_present():
    assert len(CONFORMANCE) > 10


def test_empty_definition_is_empty_result():
    assert load_definition(ops_pb2.Definition()).result is None


def test_names_and_sources():
    b = LLB()
    a = b.file([mkfile("/a", b"A")])
    c = b.file([copy("/a", "/b", input=0, secondary=0)], inputs=[a])
    defn = b.definition(c)
    defn.Source.infos.add(filename="Dockerfile", data=b"FROM scratch\nCOPY a b\n", language="Dockerfile")
    loc = defn.Source.locations[c].locations.add(sourceIndex=0)
    loc.ranges.add(start=ops_pb2.Position(line=2), end=ops_pb2.Position(line=2))
    g = load_definition(defn)
    assert g.vertices[a].name == "mkfile /a"
    assert g.vertices[c].name == "copy /a /b"
    src = g.vertices[c].sources[0]
    assert src.filename == "Dockerfile" and src.ranges == [(2, 0, 2, 0)]


def raw_definition(*ops: bytes) -> ops_pb2.Definition:
    d = ops_pb2.Definition()
    getattr(d, "def").extend(ops)
    return d


def terminal(dgst: str, index: int = 0) -> bytes:
    return ops_pb2.Op(inputs=[ops_pb2.Input(digest=dgst, index=index)]).SerializeToString()


def one(op: ops_pb2.Op, index: int = 0) -> ops_pb2.Definition:
    data = op.SerializeToString()
    return raw_definition(data, terminal("sha256:" + hashlib.sha256(data).hexdigest(), index))


SRC = ops_pb2.Op(source=ops_pb2.SourceOp(identifier="local://ctx"))
SRC_D = "sha256:" + hashlib.sha256(SRC.SerializeToString()).hexdigest()


def root_mount(**kw) -> ops_pb2.Mount:  # noqa: ANN003
    return ops_pb2.Mount(**{"input": 0, "dest": "/", "output": 0, **kw})


def exec_op(*mounts: ops_pb2.Mount, args=("true",)) -> ops_pb2.Op:  # noqa: ANN001
    return ops_pb2.Op(inputs=[ops_pb2.Input(digest=SRC_D)],
                      exec=ops_pb2.ExecOp(meta=ops_pb2.Meta(args=list(args)), mounts=list(mounts)))


def file_op(*actions: ops_pb2.FileAction, inputs: int = 0) -> ops_pb2.Op:
    return ops_pb2.Op(inputs=[ops_pb2.Input(digest=SRC_D)] * inputs,
                      file=ops_pb2.FileOp(actions=list(actions)))


def with_src(op: ops_pb2.Op, index: int = 0) -> ops_pb2.Definition:
    data = op.SerializeToString()
    return raw_definition(SRC.SerializeToString(), data,
                          terminal("sha256:" + hashlib.sha256(data).hexdigest(), index))


BAD = {
    "single op": (raw_definition(SRC.SerializeToString()), "at least 2 ops"),
    "undecodable": (raw_definition(b"\xff\xff\xff", terminal(SRC_D)), "cannot be decoded"),
    "terminal has body": (raw_definition(SRC.SerializeToString(), SRC.SerializeToString()), "terminal"),
    "missing input": (raw_definition(terminal("sha256:" + "0" * 64), terminal("sha256:" + "1" * 64)),
                      "not in the definition"),
    "output out of range": (one(SRC, index=3), "selects output 3"),
    "no op type": (raw_definition(ops_pb2.Op(inputs=[ops_pb2.Input(digest=SRC_D)]).SerializeToString(),
                                  SRC.SerializeToString(), terminal(
                                      "sha256:" + hashlib.sha256(ops_pb2.Op(inputs=[ops_pb2.Input(
                                          digest=SRC_D)]).SerializeToString()).hexdigest())),
                   "unknown or missing op type"),
    "source without scheme": (one(ops_pb2.Op(source=ops_pb2.SourceOp(identifier="ctx"))), "no scheme"),
    "exec no args": (with_src(exec_op(root_mount(), args=())), "no command"),
    "exec unknown mount type": (with_src(exec_op(root_mount(), ops_pb2.Mount(dest="/x", mountType=9,
                                                                              input=-1, output=-1))),
                                "unknown mount type 9"),
    "exec no root": (with_src(exec_op(ops_pb2.Mount(input=0, dest="/x", output=0))), "no root mount"),
    "exec bad mount input": (with_src(exec_op(root_mount(input=4))), "uses op input 4"),
    "exec cache without opt": (with_src(exec_op(root_mount(), ops_pb2.Mount(
        dest="/c", input=-1, output=-1, mountType=ops_pb2.CACHE))), "without cacheOpt"),
    "exec secret without id": (with_src(exec_op(root_mount(), ops_pb2.Mount(
        dest="/s", input=-1, output=-1, mountType=ops_pb2.SECRET))), "secret id"),
    "file no actions": (with_src(file_op(inputs=1)), "no actions"),
    "file bad input": (with_src(file_op(ops_pb2.FileAction(input=7, secondaryInput=-1, output=0,
                                                           mkdir=ops_pb2.FileActionMkDir(path="/x")),
                                        inputs=1)),
                       "input 7 is out of range"),
    "file forward ref": (with_src(file_op(ops_pb2.FileAction(input=1, secondaryInput=-1, output=0,
                                                             mkdir=ops_pb2.FileActionMkDir(path="/x")),
                                          inputs=1)), "does not come before"),
    "file owner names from itself": (with_src(file_op(ops_pb2.FileAction(
        input=0, secondaryInput=-1, output=0, mkdir=ops_pb2.FileActionMkDir(path="/x", owner=ops_pb2.ChownOpt(
            user=ops_pb2.UserOpt(byName=ops_pb2.NamedUserOpt(name="nobody", input=1))))), inputs=1)),
        "owner user reads names from action 0, which does not come before it"),
    "file secondary on mkdir": (with_src(file_op(ops_pb2.FileAction(input=0, secondaryInput=0, output=0,
                                                                    mkdir=ops_pb2.FileActionMkDir(path="/x")),
                                                 inputs=1)), "only copy takes a secondaryInput"),
    "file no outputs": (with_src(file_op(ops_pb2.FileAction(input=0, secondaryInput=-1, output=-1,
                                                            mkdir=ops_pb2.FileActionMkDir(path="/x")),
                                         inputs=1)), "no outputs"),
    "file gap in outputs": (with_src(file_op(ops_pb2.FileAction(input=0, secondaryInput=-1, output=1,
                                                                mkdir=ops_pb2.FileActionMkDir(path="/x")),
                                             inputs=1)), "output 0 is missing"),
    "file no action body": (with_src(file_op(ops_pb2.FileAction(input=0, secondaryInput=-1, output=0),
                                             inputs=1)), r"no \(or an unknown\) action"),
    "file empty path": (with_src(file_op(ops_pb2.FileAction(input=0, secondaryInput=-1, output=0,
                                                            mkfile=ops_pb2.FileActionMkFile()), inputs=1)),
                        "needs a path"),
    "merge no inputs": (with_src(ops_pb2.Op(inputs=[ops_pb2.Input(digest=SRC_D)], merge=ops_pb2.MergeOp())),
                        "merge op has no inputs"),
    "diff missing side": (with_src(ops_pb2.Op(inputs=[ops_pb2.Input(digest=SRC_D)], diff=ops_pb2.DiffOp(
        lower=ops_pb2.LowerDiffInput(input=0)))), "both lower and upper"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_invalid_definitions_raise_clear_errors(case):
    defn, message = BAD[case]
    with pytest.raises(InvalidArgument, match=message):
        load_definition(defn)


def test_deep_chain_loads():
    b = LLB()
    prev = b.file([mkfile("/f0", b"0")])
    for i in range(1, 3000):
        prev = b.file([mkfile(f"/f{i}", b"x", input=0)], inputs=[prev])
    g = load_definition(b.definition(prev))
    assert len(g.order) == 3000 and g.order[-1] == prev


@pytest.mark.parametrize("op,message", [
    (ops_pb2.Op(file=ops_pb2.FileOp(actions=[ops_pb2.FileAction(input=-1, secondaryInput=-1, output=0,
                                                                mkdir=ops_pb2.FileActionMkDir(path="/a\0b"))])),
     r"file.actions\[0\].mkdir.path contains a NUL byte"),
    (ops_pb2.Op(source=ops_pb2.SourceOp(identifier="local://ctx", attrs={"local.followpaths": '["a\0"]'})),
     r"source.attrs\['local.followpaths'\] contains a NUL byte"),
    (ops_pb2.Op(source=ops_pb2.SourceOp(identifier="local://ctx"),
                platform=ops_pb2.Platform(OS="linux", Architecture="../../")),
     "invalid platform architecture '../../'"),
    (ops_pb2.Op(source=ops_pb2.SourceOp(identifier="local://ctx"),
                platform=ops_pb2.Platform(OS="linux", Architecture="amd64", Variant="v\0")),
     r"platform.Variant contains a NUL byte"),
])
def test_nul_bytes_and_bad_platforms_are_refused(op: ops_pb2.Op, message: str) -> None:
    b = LLB()
    with pytest.raises(InvalidArgument, match=message):
        load_definition(b.definition(b.add(op)))


def test_remembered_validations_hold_digests_not_op_bytes():
    """Ops that passed validation are remembered across builds by a digest: a client's ops can be
    megabytes each (inline file data), and keeping their bytes as keys would grow without bound."""
    from buildkitpy import llb
    from buildkitpy.solver import loader

    payload = b"x" * (1 << 20)
    state = llb.scratch().file(llb.mkfile("/big", 0o644, payload))
    load_definition(llb.marshal(state))
    assert loader._VALID_OPS
    assert all(isinstance(k, bytes) and len(k) == 32 for k in loader._VALID_OPS)
    assert sum(len(k) for k in loader._VALID_OPS) < len(payload)
