"""Pin the wire encoding of the generated BuildKit-compatible protobuf modules.

Expected bytes are assembled by hand from field numbers and wire types (the helpers below), so a
renumbered field, a changed scalar type or a renamed service/method breaks these tests even when
the Python code still round-trips with itself.
"""

from __future__ import annotations

import base64
import glob
import json
import os
from pathlib import Path

import pytest
from google.protobuf import descriptor_pool, json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.protobuf.unknown_fields import UnknownFieldSet

from buildkitpy.api import (
    auth_pb2,
    auth_pb2_grpc,
    caps_pb2,
    control_pb2,
    control_pb2_grpc,
    errdefs_pb2,
    exporter_pb2_grpc,
    filesync_pb2,
    filesync_pb2_grpc,
    fsutil_stat_pb2,
    fsutil_wire_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    ops_pb2,
    policysession_pb2_grpc,
    secrets_pb2,
    secrets_pb2_grpc,
    ssh_pb2_grpc,
    stack_pb2,
    upload_pb2_grpc,
    worker_pb2,
)

# ---------------------------------------------------------------------------- encoding helpers

VARINT, I64, LEN, I32 = 0, 1, 2, 5


def varint(n: int) -> bytes:
    """Base-128 varint; negative ints are encoded as their 64-bit two's complement (int32/int64)."""
    if n < 0:
        n &= (1 << 64) - 1
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def tag(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def vint(field: int, n: int) -> bytes:
    """Varint-typed field (int32/int64/uint32/uint64/bool/enum)."""
    return tag(field, VARINT) + varint(n)


def ld(field: int, payload: bytes | str) -> bytes:
    """Length-delimited field (string/bytes/sub-message/packed repeated)."""
    if isinstance(payload, str):
        payload = payload.encode()
    return tag(field, LEN) + varint(len(payload)) + payload


def entry(field: int, key: bytes, value: bytes) -> bytes:
    """One map entry; `key`/`value` are already-encoded fields 1 and 2 of the entry message."""
    return ld(field, key + value)


def ser(msg: Message) -> bytes:
    # deterministic=True sorts map keys, so multi-entry maps have a stable order.
    return msg.SerializeToString(deterministic=True)


def check(msg: Message, expected: bytes) -> None:
    assert ser(msg) == expected
    back = type(msg)()
    back.ParseFromString(expected)
    assert back == msg
    assert len(UnknownFieldSet(back)) == 0


def test_varint_helper() -> None:
    assert varint(0) == b"\x00"
    assert varint(300) == b"\xac\x02"
    assert varint(-1) == b"\xff" * 9 + b"\x01"
    assert tag(19, LEN) == b"\x9a\x01"


# ---------------------------------------------------------------------------- LLB (package pb)

DGST_A = "sha256:" + "a" * 64
DGST_B = "sha256:" + "b" * 64


def test_op_exec() -> None:
    op = ops_pb2.Op(
        inputs=[ops_pb2.Input(digest=DGST_A, index=0), ops_pb2.Input(digest=DGST_B, index=1)],
        exec=ops_pb2.ExecOp(
            meta=ops_pb2.Meta(
                args=["sh", "-c", "true"],
                env=["PATH=/bin"],
                cwd="/",
                user="root",
                proxy_env=ops_pb2.ProxyEnv(http_proxy="http://p:3128"),
                extraHosts=[ops_pb2.HostIP(Host="h", IP="10.0.0.1")],
                ulimit=[ops_pb2.Ulimit(Name="nofile", Soft=1024, Hard=2048)],
                validExitCodes=[0, 1],
            ),
            mounts=[
                ops_pb2.Mount(input=0, dest="/", output=0),
                ops_pb2.Mount(
                    input=-1,
                    dest="/root/.cache",
                    output=-1,
                    mountType=ops_pb2.CACHE,
                    cacheOpt=ops_pb2.CacheOpt(ID="go", sharing=ops_pb2.LOCKED),
                ),
                ops_pb2.Mount(
                    input=-1,
                    dest="/run/secrets/tok",
                    output=-1,
                    mountType=ops_pb2.SECRET,
                    secretOpt=ops_pb2.SecretOpt(ID="tok", mode=0o400, optional=True),
                ),
                ops_pb2.Mount(input=1, selector="/src", dest="/src", output=-1, readonly=True),
            ],
            network=ops_pb2.NONE,
            security=ops_pb2.INSECURE,
            secretenv=[ops_pb2.SecretEnv(ID="tok", name="TOKEN")],
        ),
        platform=ops_pb2.Platform(Architecture="amd64", OS="linux"),
        constraints=ops_pb2.WorkerConstraints(),
    )
    meta = (
        ld(1, "sh")
        + ld(1, "-c")
        + ld(1, "true")
        + ld(2, "PATH=/bin")
        + ld(3, "/")
        + ld(4, "root")
        + ld(5, ld(1, "http://p:3128"))
        + ld(6, ld(1, "h") + ld(2, "10.0.0.1"))
        + ld(9, ld(1, "nofile") + vint(2, 1024) + vint(3, 2048))
        + ld(12, b"\x00\x01")  # proto3 repeated int32 is packed
    )
    mounts = (
        ld(2, ld(3, "/"))
        + ld(
            2,
            vint(1, -1) + ld(3, "/root/.cache") + vint(4, -1) + vint(6, 3) + ld(20, ld(1, "go") + vint(2, 2)),
        )
        + ld(
            2,
            vint(1, -1)
            + ld(3, "/run/secrets/tok")
            + vint(4, -1)
            + vint(6, 1)
            + ld(21, ld(1, "tok") + vint(4, 0o400) + vint(5, 1)),
        )
        + ld(2, vint(1, 1) + ld(2, "/src") + ld(3, "/src") + vint(4, -1) + vint(5, 1))
    )
    exec_op = ld(1, meta) + mounts + vint(3, 2) + vint(4, 1) + ld(5, ld(1, "tok") + ld(2, "TOKEN"))
    expected = (
        ld(1, ld(1, DGST_A))
        + ld(1, ld(1, DGST_B) + vint(2, 1))
        + ld(2, exec_op)
        + ld(10, ld(1, "amd64") + ld(2, "linux"))
        + ld(11, b"")  # present-but-empty constraints, as BuildKit emits
    )
    check(op, expected)
    assert op.WhichOneof("op") == "exec"


def test_op_source() -> None:
    op = ops_pb2.Op(
        source=ops_pb2.SourceOp(
            identifier="docker-image://docker.io/library/busybox:latest",
            attrs={"image.recordtype": "internal"},
        ),
        platform=ops_pb2.Platform(Architecture="arm64", OS="linux", Variant="v8"),
    )
    expected = ld(
        3,
        ld(1, "docker-image://docker.io/library/busybox:latest")
        + entry(2, ld(1, "image.recordtype"), ld(2, "internal")),
    ) + ld(10, ld(1, "arm64") + ld(2, "linux") + ld(3, "v8"))
    check(op, expected)


def test_op_file() -> None:
    mkdir = ops_pb2.FileAction(
        input=0,
        secondaryInput=-1,
        output=-1,
        mkdir=ops_pb2.FileActionMkDir(path="/app", mode=0o755, makeParents=True, timestamp=-1),
    )
    copy = ops_pb2.FileAction(
        input=2,
        secondaryInput=1,
        output=0,
        copy=ops_pb2.FileActionCopy(
            src="/a*",
            dest="/app/",
            owner=ops_pb2.ChownOpt(
                user=ops_pb2.UserOpt(byID=1000),
                group=ops_pb2.UserOpt(byName=ops_pb2.NamedUserOpt(name="staff", input=-1)),
            ),
            mode=-1,
            followSymlink=True,
            allowWildcard=True,
            timestamp=-1,
            include_patterns=["*.go"],
            exclude_patterns=["vendor"],
            modeStr="u+x",
        ),
    )
    mkfile = ops_pb2.FileAction(
        input=3,
        secondaryInput=-1,
        output=-1,
        mkfile=ops_pb2.FileActionMkFile(path="/f", mode=0o644, data=b"hi\n", timestamp=-1),
    )
    rm = ops_pb2.FileAction(
        input=4,
        secondaryInput=-1,
        output=-1,
        rm=ops_pb2.FileActionRm(path="/tmp/*", allowNotFound=True, allowWildcard=True),
    )
    symlink = ops_pb2.FileAction(
        input=5,
        secondaryInput=-1,
        output=1,
        symlink=ops_pb2.FileActionSymlink(oldpath="/a", newpath="/b", timestamp=-1),
    )
    op = ops_pb2.Op(
        inputs=[ops_pb2.Input(digest=DGST_A), ops_pb2.Input(digest=DGST_B)],
        file=ops_pb2.FileOp(actions=[mkdir, copy, mkfile, rm, symlink]),
    )
    neg = -1
    a_mkdir = vint(2, neg) + vint(3, neg) + ld(6, ld(1, "/app") + vint(2, 0o755) + vint(3, 1) + vint(5, neg))
    owner = ld(1, vint(2, 1000)) + ld(2, ld(1, ld(1, "staff") + vint(2, neg)))
    a_copy = (
        vint(1, 2)
        + vint(2, 1)
        + ld(
            4,
            (
                ld(1, "/a*")
                + ld(2, "/app/")
                + ld(3, owner)
                + vint(4, neg)
                + vint(5, 1)
                + vint(9, 1)
                + vint(11, neg)
                + ld(12, "*.go")
                + ld(13, "vendor")
                + ld(15, "u+x")
            ),
        )
    )
    a_mkfile = (
        vint(1, 3)
        + vint(2, neg)
        + vint(3, neg)
        + ld(5, (ld(1, "/f") + vint(2, 0o644) + ld(3, b"hi\n") + vint(5, neg)))
    )
    a_rm = vint(1, 4) + vint(2, neg) + vint(3, neg) + ld(7, ld(1, "/tmp/*") + vint(2, 1) + vint(3, 1))
    a_symlink = vint(1, 5) + vint(2, neg) + vint(3, 1) + ld(8, ld(1, "/a") + ld(2, "/b") + vint(4, neg))
    expected = (
        ld(1, ld(1, DGST_A))
        + ld(1, ld(1, DGST_B))
        + ld(4, b"".join(ld(2, a) for a in (a_mkdir, a_copy, a_mkfile, a_rm, a_symlink)))
    )
    check(op, expected)
    assert [a.WhichOneof("action") for a in op.file.actions] == ["mkdir", "copy", "mkfile", "rm", "symlink"]


def test_op_merge_diff_build() -> None:
    merge = ops_pb2.Op(
        merge=ops_pb2.MergeOp(inputs=[ops_pb2.MergeInput(input=0), ops_pb2.MergeInput(input=1)])
    )
    check(merge, ld(6, ld(1, b"") + ld(1, vint(1, 1))))
    diff = ops_pb2.Op(
        diff=ops_pb2.DiffOp(lower=ops_pb2.LowerDiffInput(input=0), upper=ops_pb2.UpperDiffInput(input=1))
    )
    check(diff, ld(7, ld(1, b"") + ld(2, vint(1, 1))))
    build = ops_pb2.Op(build=ops_pb2.BuildOp(builder=-1, attrs={"filename": "Dockerfile"}))
    check(build, ld(5, vint(1, -1) + entry(4, ld(1, "filename"), ld(2, "Dockerfile"))))


def test_definition_metadata_and_source() -> None:
    defn = ops_pb2.Definition(
        metadata={
            DGST_A: ops_pb2.OpMetadata(
                ignore_cache=True,
                description={"llb.customname": "[1/2] FROM busybox"},
                caps={"source.image": True},
                progress_group=ops_pb2.ProgressGroup(id="g1", name="grp", weak=True),
            ),
            DGST_B: ops_pb2.OpMetadata(export_cache=ops_pb2.ExportCache(Value=True)),
        },
        Source=ops_pb2.Source(
            locations={
                DGST_A: ops_pb2.Locations(
                    locations=[
                        ops_pb2.Location(
                            sourceIndex=0,
                            ranges=[
                                ops_pb2.Range(
                                    start=ops_pb2.Position(line=1), end=ops_pb2.Position(line=1, character=4)
                                )
                            ],
                        )
                    ]
                )
            },
            infos=[ops_pb2.SourceInfo(filename="Dockerfile", data=b"FROM busybox\n", language="Dockerfile")],
        ),
    )
    getattr(defn, "def").extend([b"\x0a\x00", b"op-two"])
    md_a = (
        vint(1, 1)
        + entry(2, ld(1, "llb.customname"), ld(2, "[1/2] FROM busybox"))
        + entry(5, ld(1, "source.image"), vint(2, 1))
        + ld(6, ld(1, "g1") + ld(2, "grp") + vint(3, 1))
    )
    md_b = ld(4, vint(1, 1))
    loc = ld(2, ld(1, vint(1, 1)) + ld(2, vint(1, 1) + vint(2, 4)))  # Location.ranges[0]
    source = entry(1, ld(1, DGST_A), ld(2, ld(1, loc))) + ld(
        2, ld(1, "Dockerfile") + ld(2, b"FROM busybox\n") + ld(4, "Dockerfile")
    )
    expected = (
        ld(1, b"\x0a\x00")
        + ld(1, "op-two")
        + entry(2, ld(1, DGST_A), ld(2, md_a))
        + entry(2, ld(1, DGST_B), ld(2, md_b))
        + ld(3, source)
    )
    check(defn, expected)


def test_linux_resources_and_cdi() -> None:
    md = ops_pb2.OpMetadata(
        linux_resources=ops_pb2.LinuxResources(
            memory=1 << 30,
            memorySwap=-1,
            cpuShares=512,
            cpuPeriod=100000,
            cpuQuota=50000,
            cpusetCpus="0-3",
            cpusetMems="0",
        )
    )
    check(
        md,
        ld(
            7,
            vint(1, 1 << 30)
            + vint(2, -1)
            + vint(3, 512)
            + vint(4, 100000)
            + vint(5, 50000)
            + ld(6, "0-3")
            + ld(7, "0"),
        ),
    )
    ex = ops_pb2.ExecOp(cdiDevices=[ops_pb2.CDIDevice(name="vendor.com/gpu=0", optional=True)])
    check(ex, ld(6, ld(1, "vendor.com/gpu=0") + vint(2, 1)))
    m = ops_pb2.Mount(
        mountType=ops_pb2.TMPFS,
        TmpfsOpt=ops_pb2.TmpfsOpt(size=64 << 20),
        SSHOpt=ops_pb2.SSHOpt(ID="default", uid=1, gid=2, mode=0o600),
        resultID="r1",
        contentCache=ops_pb2.OFF,
    )
    check(
        m,
        vint(6, 4)
        + ld(19, vint(1, 64 << 20))
        + ld(22, ld(1, "default") + vint(2, 1) + vint(3, 2) + vint(4, 0o600))
        + ld(23, "r1")
        + vint(24, 2),
    )


# ---------------------------------------------------------------------------- fsutil / filesync


def test_fsutil_packet_data() -> None:
    pkt = fsutil_wire_pb2.Packet(type=fsutil_wire_pb2.Packet.PACKET_DATA, ID=3, data=b"x")
    check(pkt, b"\x08\x02\x18\x03\x22\x01x")
    # the end-of-listing STAT (all defaults) is an empty message
    check(fsutil_wire_pb2.Packet(), b"")
    check(fsutil_wire_pb2.Packet(type=fsutil_wire_pb2.Packet.PACKET_FIN), b"\x08\x03")
    assert fsutil_wire_pb2.Packet.PacketType.items() == [
        ("PACKET_STAT", 0),
        ("PACKET_REQ", 1),
        ("PACKET_DATA", 2),
        ("PACKET_FIN", 3),
        ("PACKET_ERR", 4),
    ]


def test_fsutil_stat() -> None:
    dir_mode = (1 << 31) | 0o755  # Go os.ModeDir | 0755
    mtime = 1_700_000_000_123_456_789
    st = fsutil_stat_pb2.Stat(
        path="src/lib",
        mode=dir_mode,
        uid=1000,
        gid=1000,
        size=0,
        modTime=mtime,
        xattrs={"user.k": b"\x00v"},
    )
    expected = (
        ld(1, "src/lib")
        + vint(2, dir_mode)
        + vint(3, 1000)
        + vint(4, 1000)
        + vint(6, mtime)
        + entry(10, ld(1, "user.k"), ld(2, b"\x00v"))
    )
    check(st, expected)
    assert vint(2, dir_mode) == b"\x10\xed\x83\x80\x80\x08"
    link = fsutil_stat_pb2.Stat(
        path="l", mode=(1 << 27) | 0o777, size=3, linkname="tgt", devmajor=8, devminor=1
    )
    check(link, ld(1, "l") + vint(2, (1 << 27) | 0o777) + vint(5, 3) + ld(7, "tgt") + vint(8, 8) + vint(9, 1))
    pkt = fsutil_wire_pb2.Packet(stat=fsutil_stat_pb2.Stat(path="a", mode=0o644, size=1))
    check(pkt, ld(2, ld(1, "a") + vint(2, 0o644) + vint(5, 1)))


def test_bytes_messages() -> None:
    for cls in (control_pb2.BytesMessage, filesync_pb2.BytesMessage):
        check(cls(data=b"\x00\x01PRI"), b"\x0a\x05\x00\x01PRI")
        check(cls(), b"")


# ---------------------------------------------------------------------------- control API


def test_solve_request() -> None:
    req = control_pb2.SolveRequest(
        Ref="k3s2e9fk2z8q4x1m0n7b5v6c3",
        ExporterDeprecated="local",
        ExporterAttrsDeprecated={},
        Session="sess1",
        FrontendAttrs={"filename": "Dockerfile", "no-cache": ""},
        Cache=control_pb2.CacheOptions(
            Imports=[control_pb2.CacheOptionsEntry(Type="registry", Attrs={"ref": "r/c"})],
        ),
        Entitlements=["network.host"],
        Internal=True,
        SourcePolicy=None,
        Exporters=[control_pb2.Exporter(Type="local", Attrs={})],
        CompatibilityVersion=1,
        ProxyNetwork=True,
    )
    expected = (
        ld(1, "k3s2e9fk2z8q4x1m0n7b5v6c3")
        + ld(3, "local")
        + ld(5, "sess1")
        + entry(7, ld(1, "filename"), ld(2, "Dockerfile"))
        + entry(7, ld(1, "no-cache"), ld(2, ""))  # map entries always carry key and value
        + ld(8, ld(5, ld(1, "registry") + entry(2, ld(1, "ref"), ld(2, "r/c"))))
        + ld(9, "network.host")
        + vint(11, 1)
        + ld(13, ld(1, "local"))
        + vint(16, 1)
        + vint(17, 1)
    )
    check(req, expected)
    req2 = control_pb2.SolveRequest(
        Definition=ops_pb2.Definition(),
        Frontend="dockerfile.v0",
        FrontendInputs={"context": ops_pb2.Definition()},
        EnableSessionExporter=True,
        SourcePolicySession="ps",
    )
    req2.SourcePolicy.rules.add(
        action=2,
        selector={"identifier": "docker-image://x", "match_type": 1},
        updates={"identifier": "docker-image://y"},
    )
    check(
        req2,
        (
            ld(2, b"")
            + ld(6, "dockerfile.v0")
            + entry(10, ld(1, "context"), ld(2, b""))
            + ld(
                12,
                ld(
                    2,
                    vint(1, 2)
                    + ld(2, ld(1, "docker-image://x") + vint(2, 1))
                    + ld(3, ld(1, "docker-image://y")),
                ),
            )
            + vint(14, 1)
            + ld(15, "ps")
        ),
    )
    check(
        control_pb2.SolveResponse(ExporterResponse={"containerimage.digest": "sha256:1"}),
        entry(1, ld(1, "containerimage.digest"), ld(2, "sha256:1")),
    )


def ts(seconds: int, nanos: int = 0) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


def ts_bytes(seconds: int, nanos: int = 0) -> bytes:
    return vint(1, seconds) + (vint(2, nanos) if nanos else b"")


def test_status_response() -> None:
    resp = control_pb2.StatusResponse(
        vertexes=[
            control_pb2.Vertex(
                digest=DGST_A,
                inputs=[DGST_B],
                name="[1/2] RUN true",
                cached=True,
                started=ts(1700000000, 5),
                completed=ts(1700000001),
                error="boom",
                progressGroup=ops_pb2.ProgressGroup(id="g"),
            )
        ],
        statuses=[
            control_pb2.VertexStatus(
                ID="transferring context:", vertex=DGST_A, current=10, total=20, timestamp=ts(1700000002)
            )
        ],
        logs=[control_pb2.VertexLog(vertex=DGST_A, timestamp=ts(1700000003), stream=2, msg=b"err\n")],
        warnings=[
            control_pb2.VertexWarning(
                vertex=DGST_A,
                level=1,
                short=b"s",
                detail=[b"d1", b"d2"],
                url="https://u",
                ranges=[ops_pb2.Range()],
            )
        ],
    )
    vertex = (
        ld(1, DGST_A)
        + ld(2, DGST_B)
        + ld(3, "[1/2] RUN true")
        + vint(4, 1)
        + ld(5, ts_bytes(1700000000, 5))
        + ld(6, ts_bytes(1700000001))
        + ld(7, "boom")
        + ld(8, ld(1, "g"))
    )
    status = (
        ld(1, "transferring context:")
        + ld(2, DGST_A)
        + vint(4, 10)
        + vint(5, 20)
        + ld(6, ts_bytes(1700000002))
    )
    log = ld(1, DGST_A) + ld(2, ts_bytes(1700000003)) + vint(3, 2) + ld(4, b"err\n")
    warning = (
        ld(1, DGST_A)
        + vint(2, 1)
        + ld(3, b"s")
        + ld(4, b"d1")
        + ld(4, b"d2")
        + ld(5, "https://u")
        + ld(7, b"")
    )
    check(resp, ld(1, vertex) + ld(2, status) + ld(3, log) + ld(4, warning))


def test_worker_record_and_info() -> None:
    rec = worker_pb2.WorkerRecord(
        ID="w0",
        Labels={"org.mobyproject.buildkit.worker.executor": "oci"},
        platforms=[ops_pb2.Platform(Architecture="amd64", OS="linux")],
        GCPolicy=[
            worker_pb2.GCPolicy(
                all=True,
                keepDuration=172800,
                filters=["type==source.local"],
                reservedSpace=10 << 30,
                maxUsedSpace=20 << 30,
                minFreeSpace=1 << 30,
            )
        ],
        BuildkitVersion=worker_pb2.BuildkitVersion(
            version="v0.32.2", revision="abc", dockerfileVersion="1.26"
        ),
        CDIDevices=[worker_pb2.CDIDevice(Name="nvidia.com/gpu=all", AutoAllow=True, OnDemand=True)],
    )
    setattr(rec.BuildkitVersion, "package", "github.com/moby/buildkit")  # noqa: B010
    gc = (
        vint(1, 1)
        + vint(2, 172800)
        + vint(3, 10 << 30)
        + ld(4, "type==source.local")
        + vint(5, 20 << 30)
        + vint(6, 1 << 30)
    )
    version = ld(1, "github.com/moby/buildkit") + ld(2, "v0.32.2") + ld(3, "abc") + ld(4, "1.26")
    expected = (
        ld(1, "w0")
        + entry(2, ld(1, "org.mobyproject.buildkit.worker.executor"), ld(2, "oci"))
        + ld(3, ld(1, "amd64") + ld(2, "linux"))
        + ld(4, gc)
        + ld(5, version)
        + ld(6, ld(1, "nvidia.com/gpu=all") + vint(2, 1) + vint(4, 1))
    )
    check(rec, expected)
    check(control_pb2.ListWorkersResponse(record=[rec]), ld(1, expected))
    check(control_pb2.InfoResponse(buildkitVersion=rec.BuildkitVersion), ld(1, version))


def test_prune_usage_history() -> None:
    check(
        control_pb2.PruneRequest(
            filter=["type==regular"],
            all=True,
            keepDuration=60,
            reservedSpace=1,
            maxUsedSpace=2,
            minFreeSpace=3,
        ),
        ld(1, "type==regular") + vint(2, 1) + vint(3, 60) + vint(4, 1) + vint(5, 2) + vint(6, 3),
    )
    check(
        control_pb2.UsageRecord(
            ID="u",
            Mutable=True,
            InUse=True,
            Size=4096,
            CreatedAt=ts(5),
            UsageCount=2,
            Description="d",
            RecordType="regular",
            Shared=True,
            Parents=["p1"],
        ),
        ld(1, "u")
        + vint(2, 1)
        + vint(3, 1)
        + vint(4, 4096)
        + ld(6, ts_bytes(5))
        + vint(8, 2)
        + ld(9, "d")
        + ld(10, "regular")
        + vint(11, 1)
        + ld(12, "p1"),
    )
    check(
        control_pb2.BuildHistoryRequest(
            ActiveOnly=True, Ref="buildx-test-history-api-feature", EarlyExit=True
        ),
        vint(1, 1) + ld(2, "buildx-test-history-api-feature") + vint(3, 1),
    )
    result = control_pb2.BuildResultInfo(Results={-1: control_pb2.Descriptor(digest="sha256:x", size=7)})
    rec = control_pb2.BuildHistoryRecord(
        Ref="r", Result=result, Generation=2, pinned=True, numWarnings=1, Results={"linux/amd64": result}
    )
    result_b = entry(3, vint(1, -1), ld(2, ld(2, "sha256:x") + vint(3, 7)))  # map<int64, Descriptor>
    check(
        control_pb2.BuildHistoryEvent(type=control_pb2.COMPLETE, record=rec),
        vint(1, 1)
        + ld(
            2,
            ld(1, "r")
            + ld(10, result_b)
            + entry(11, ld(1, "linux/amd64"), ld(2, result_b))
            + vint(12, 2)
            + vint(14, 1)
            + vint(19, 1),
        ),
    )


# ---------------------------------------------------------------------------- gateway


def test_gateway_pong() -> None:
    pong = gateway_pb2.PongResponse(
        FrontendAPICaps=[caps_pb2.APICap(ID="solve.base", Enabled=True)],
        LLBCaps=[
            caps_pb2.APICap(ID="file.base", Enabled=True),
            caps_pb2.APICap(
                ID="old.cap",
                Deprecated=True,
                DisabledReason="r",
                DisabledReasonMsg="m",
                DisabledAlternative="a",
            ),
        ],
        Workers=[worker_pb2.WorkerRecord(ID="w0")],
    )
    expected = (
        ld(1, ld(1, "solve.base") + vint(2, 1))
        + ld(2, ld(1, "file.base") + vint(2, 1))
        + ld(2, ld(1, "old.cap") + vint(3, 1) + ld(4, "r") + ld(5, "m") + ld(6, "a"))
        + ld(3, ld(1, "w0"))
    )
    check(pong, expected)


def test_gateway_solve_and_return() -> None:
    req = gateway_pb2.SolveRequest(
        Frontend="dockerfile.v0",
        FrontendOpt={"target": "t"},
        allowResultReturn=True,
        allowResultArrayRef=True,
        CacheImports=[gateway_pb2.CacheOptionsEntry(Type="local", Attrs={"src": "/c"})],
        Evaluate=True,
    )
    check(
        req,
        ld(2, "dockerfile.v0")
        + entry(3, ld(1, "target"), ld(2, "t"))
        + vint(5, 1)
        + vint(6, 1)
        + ld(12, ld(1, "local") + entry(2, ld(1, "src"), ld(2, "/c")))
        + vint(14, 1),
    )
    res = gateway_pb2.Result(
        ref=gateway_pb2.Ref(id="ref1"),
        metadata={"containerimage.config": b"{}"},
        attestations={
            "linux/amd64": gateway_pb2.Attestations(
                attestation=[
                    gateway_pb2.Attestation(
                        kind=gateway_pb2.InToto,
                        path="/p",
                        inTotoPredicateType="https://slsa.dev/provenance/v0.2",
                        inTotoSubjects=[
                            gateway_pb2.InTotoSubject(kind=gateway_pb2.Raw, digest=[DGST_A], name="n")
                        ],
                    )
                ]
            )
        },
    )
    result = (
        ld(3, ld(1, "ref1"))
        + entry(10, ld(1, "containerimage.config"), ld(2, b"{}"))
        + entry(
            12,
            ld(1, "linux/amd64"),
            ld(
                2,
                ld(
                    1,
                    (
                        ld(4, "/p")
                        + ld(5, "https://slsa.dev/provenance/v0.2")
                        + ld(6, vint(1, 1) + ld(2, DGST_A) + ld(3, "n"))
                    ),
                ),
            ),
        )
    )
    check(gateway_pb2.SolveResponse(result=res), ld(3, result))
    ret = gateway_pb2.ReturnRequest(result=res)
    ret.error.code = 2
    ret.error.message = "failed"
    check(ret, ld(1, result) + ld(2, vint(1, 2) + ld(2, "failed")))
    refs = gateway_pb2.Result(refs=gateway_pb2.RefMap(refs={"linux/arm64": gateway_pb2.Ref(id="a")}))
    check(refs, ld(4, entry(1, ld(1, "linux/arm64"), ld(2, ld(1, "a")))))


def test_gateway_exec_message() -> None:
    init = gateway_pb2.ExecMessage(
        ProcessID="p1",
        Init=gateway_pb2.InitMessage(
            ContainerID="c",
            Meta=ops_pb2.Meta(args=["sh"]),
            Fds=[0, 1, 2],
            Tty=True,
            Security=ops_pb2.INSECURE,
        ),
    )
    check(
        init,
        ld(1, "p1")
        + ld(2, ld(1, "c") + ld(2, ld(1, "sh")) + ld(3, b"\x00\x01\x02") + vint(4, 1) + vint(5, 1)),
    )
    fd = gateway_pb2.ExecMessage(ProcessID="p1", File=gateway_pb2.FdMessage(Fd=1, EOF=True, Data=b"o"))
    check(fd, ld(1, "p1") + ld(3, vint(1, 1) + vint(2, 1) + ld(3, b"o")))
    check(gateway_pb2.ExecMessage(Done=gateway_pb2.DoneMessage()), ld(7, b""))
    check(gateway_pb2.ExecMessage(Exit=gateway_pb2.ExitMessage(Code=3)), ld(6, vint(1, 3)))


def test_gateway_file_requests() -> None:
    check(
        gateway_pb2.ReadFileRequest(
            Ref="r", FilePath="/Dockerfile", Range=gateway_pb2.FileRange(Offset=1, Length=2), MountIndex=1
        ),
        ld(1, "r") + ld(2, "/Dockerfile") + ld(3, vint(1, 1) + vint(2, 2)) + vint(4, 1),
    )
    check(gateway_pb2.ReadDirResponse(entries=[fsutil_stat_pb2.Stat(path="x")]), ld(1, ld(1, "x")))
    check(
        gateway_pb2.ResolveImageConfigRequest(
            Ref="busybox",
            Platform=ops_pb2.Platform(OS="linux"),
            ResolveMode="default",
            ResolverType=1,
            SessionID="s",
        ),
        ld(1, "busybox") + ld(2, ld(2, "linux")) + ld(3, "default") + vint(5, 1) + ld(6, "s"),
    )
    check(
        gateway_pb2.ResolveImageConfigResponse(Digest="sha256:d", Config=b"{}", Ref="r"),
        ld(1, "sha256:d") + ld(2, b"{}") + ld(3, "r"),
    )


# ---------------------------------------------------------------------------- session side


def test_session_messages() -> None:
    check(auth_pb2.CredentialsRequest(Host="registry-1.docker.io"), ld(1, "registry-1.docker.io"))
    check(auth_pb2.CredentialsResponse(Username="u", Secret="p"), ld(1, "u") + ld(2, "p"))
    check(
        auth_pb2.FetchTokenResponse(Token="t", ExpiresIn=300, IssuedAt=1700000000),
        ld(1, "t") + vint(2, 300) + vint(3, 1700000000),
    )
    check(
        secrets_pb2.GetSecretRequest(ID="tok", annotations={"a": "b"}),
        ld(1, "tok") + entry(2, ld(1, "a"), ld(2, "b")),
    )
    check(secrets_pb2.GetSecretResponse(data=b"s3cr3t"), ld(1, b"s3cr3t"))


def test_error_details() -> None:
    check(errdefs_pb2.Vertex(digest=DGST_A), ld(1, DGST_A))
    src = errdefs_pb2.Source(
        info=ops_pb2.SourceInfo(filename="Dockerfile"), ranges=[ops_pb2.Range(start=ops_pb2.Position(line=3))]
    )
    check(src, ld(1, ld(1, "Dockerfile")) + ld(2, ld(1, vint(1, 3))))
    solve = errdefs_pb2.Solve(
        inputIDs=["i"],
        mountIDs=["m"],
        op=ops_pb2.Op(),
        file=errdefs_pb2.FileAction(index=2),
        description={"k": "v"},
    )
    check(solve, ld(1, "i") + ld(2, "m") + ld(3, b"") + ld(4, vint(1, 2)) + entry(6, ld(1, "k"), ld(2, "v")))
    check(
        stack_pb2.Stack(frames=[stack_pb2.Frame(Name="f", File="x.go", Line=9)], pid=1, version="v"),
        ld(1, ld(1, "f") + ld(2, "x.go") + vint(3, 9)) + vint(3, 1) + ld(4, "v"),
    )


# ---------------------------------------------------------------------------- services

U, SS, CS, BIDI = "unary_unary", "unary_stream", "stream_unary", "stream_stream"

SERVICES = {
    "moby.buildkit.v1.Control": (
        control_pb2_grpc.ControlStub,
        {
            "DiskUsage": (U, "moby.buildkit.v1.DiskUsageRequest", "moby.buildkit.v1.DiskUsageResponse"),
            "Prune": (SS, "moby.buildkit.v1.PruneRequest", "moby.buildkit.v1.UsageRecord"),
            "Solve": (U, "moby.buildkit.v1.SolveRequest", "moby.buildkit.v1.SolveResponse"),
            "Status": (SS, "moby.buildkit.v1.StatusRequest", "moby.buildkit.v1.StatusResponse"),
            "Session": (BIDI, "moby.buildkit.v1.BytesMessage", "moby.buildkit.v1.BytesMessage"),
            "ListWorkers": (U, "moby.buildkit.v1.ListWorkersRequest", "moby.buildkit.v1.ListWorkersResponse"),
            "Info": (U, "moby.buildkit.v1.InfoRequest", "moby.buildkit.v1.InfoResponse"),
            "ListenBuildHistory": (
                SS,
                "moby.buildkit.v1.BuildHistoryRequest",
                "moby.buildkit.v1.BuildHistoryEvent",
            ),
            "UpdateBuildHistory": (
                U,
                "moby.buildkit.v1.UpdateBuildHistoryRequest",
                "moby.buildkit.v1.UpdateBuildHistoryResponse",
            ),
        },
    ),
    "moby.buildkit.v1.frontend.LLBBridge": (
        gateway_pb2_grpc.LLBBridgeStub,
        {
            name: (
                BIDI if name == "ExecProcess" else U,
                f"moby.buildkit.v1.frontend.{req}",
                f"moby.buildkit.v1.frontend.{resp}",
            )
            for name, req, resp in [
                ("ResolveImageConfig", "ResolveImageConfigRequest", "ResolveImageConfigResponse"),
                ("ResolveSourceMeta", "ResolveSourceMetaRequest", "ResolveSourceMetaResponse"),
                ("Solve", "SolveRequest", "SolveResponse"),
                ("ReadFile", "ReadFileRequest", "ReadFileResponse"),
                ("ReadDir", "ReadDirRequest", "ReadDirResponse"),
                ("StatFile", "StatFileRequest", "StatFileResponse"),
                ("Evaluate", "EvaluateRequest", "EvaluateResponse"),
                ("Ping", "PingRequest", "PongResponse"),
                ("Return", "ReturnRequest", "ReturnResponse"),
                ("Inputs", "InputsRequest", "InputsResponse"),
                ("NewContainer", "NewContainerRequest", "NewContainerResponse"),
                ("ReleaseContainer", "ReleaseContainerRequest", "ReleaseContainerResponse"),
                ("ExecProcess", "ExecMessage", "ExecMessage"),
                ("ReadFileContainer", "ReadFileRequest", "ReadFileResponse"),
                ("ReadDirContainer", "ReadDirRequest", "ReadDirResponse"),
                ("StatFileContainer", "StatFileRequest", "StatFileResponse"),
                ("Warn", "WarnRequest", "WarnResponse"),
            ]
        },
    ),
    "moby.filesync.v1.FileSync": (
        filesync_pb2_grpc.FileSyncStub,
        {
            "DiffCopy": (BIDI, "fsutil.types.Packet", "fsutil.types.Packet"),
            "TarStream": (BIDI, "fsutil.types.Packet", "fsutil.types.Packet"),
        },
    ),
    "moby.filesync.v1.FileSend": (
        filesync_pb2_grpc.FileSendStub,
        {
            "DiffCopy": (BIDI, "moby.filesync.v1.BytesMessage", "moby.filesync.v1.BytesMessage"),
        },
    ),
    "moby.filesync.v1.Auth": (
        auth_pb2_grpc.AuthStub,
        {
            name: (U, f"moby.filesync.v1.{name}Request", f"moby.filesync.v1.{name}Response")
            for name in ("Credentials", "FetchToken", "GetTokenAuthority", "VerifyTokenAuthority")
        },
    ),
    "moby.buildkit.secrets.v1.Secrets": (
        secrets_pb2_grpc.SecretsStub,
        {
            "GetSecret": (
                U,
                "moby.buildkit.secrets.v1.GetSecretRequest",
                "moby.buildkit.secrets.v1.GetSecretResponse",
            ),
        },
    ),
    "moby.sshforward.v1.SSH": (
        ssh_pb2_grpc.SSHStub,
        {
            "CheckAgent": (
                U,
                "moby.sshforward.v1.CheckAgentRequest",
                "moby.sshforward.v1.CheckAgentResponse",
            ),
            "ForwardAgent": (BIDI, "moby.sshforward.v1.BytesMessage", "moby.sshforward.v1.BytesMessage"),
        },
    ),
    "moby.upload.v1.Upload": (
        upload_pb2_grpc.UploadStub,
        {
            "Pull": (BIDI, "moby.upload.v1.BytesMessage", "moby.upload.v1.BytesMessage"),
        },
    ),
    "moby.exporter.v1.Exporter": (
        exporter_pb2_grpc.ExporterStub,
        {
            "FindExporters": (
                U,
                "moby.exporter.v1.FindExportersRequest",
                "moby.exporter.v1.FindExportersResponse",
            ),
            "FinalizeExport": (
                U,
                "moby.exporter.v1.FinalizeExportRequest",
                "moby.exporter.v1.FinalizeExportResponse",
            ),
        },
    ),
    "moby.buildkit.v1.sourcepolicy.policysession.PolicyVerifier": (
        policysession_pb2_grpc.PolicyVerifierStub,
        {
            "CheckPolicy": (
                U,
                "moby.buildkit.v1.sourcepolicy.policysession.CheckPolicyRequest",
                "moby.buildkit.v1.sourcepolicy.policysession.CheckPolicyResponse",
            ),
        },
    ),
}

SHAPES = {U: (False, False), SS: (False, True), CS: (True, False), BIDI: (True, True)}


class _RecordingChannel:
    """Stands in for grpc.Channel and records which multicallable each stub asks for."""

    def __init__(self) -> None:
        self.calls: dict[str, str] = {}

    def __getattr__(self, kind: str):
        if kind not in SHAPES:
            raise AttributeError(kind)

        def make(path: str, **_kwargs):
            self.calls[path] = kind
            return object()

        return make


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_service_methods(service: str) -> None:
    stub_cls, methods = SERVICES[service]
    svc = descriptor_pool.Default().FindServiceByName(service)
    assert sorted(m.name for m in svc.methods) == sorted(methods)
    channel = _RecordingChannel()
    stub_cls(channel)
    assert channel.calls == {f"/{service}/{name}": shape for name, (shape, _, _) in methods.items()}
    for name, (shape, req, resp) in methods.items():
        m = svc.methods_by_name[name]
        assert (m.client_streaming, m.server_streaming) == SHAPES[shape], name
        assert m.input_type.full_name == req
        assert m.output_type.full_name == resp


def test_key_method_paths() -> None:
    channel = _RecordingChannel()
    for stub_cls, _ in SERVICES.values():
        stub_cls(channel)
    for path, kind in {
        "/moby.buildkit.v1.Control/Solve": U,
        "/moby.buildkit.v1.Control/Session": BIDI,
        "/moby.buildkit.v1.frontend.LLBBridge/Ping": U,
        "/moby.filesync.v1.FileSync/DiffCopy": BIDI,
        "/moby.filesync.v1.FileSend/DiffCopy": BIDI,
        "/moby.filesync.v1.Auth/Credentials": U,
        "/moby.buildkit.secrets.v1.Secrets/GetSecret": U,
        "/moby.sshforward.v1.SSH/ForwardAgent": BIDI,
        "/moby.upload.v1.Upload/Pull": BIDI,
    }.items():
        assert channel.calls[path] == kind


# ---------------------------------------------------------------------------- LLB JSON corpus

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CORPUS = sorted(glob.glob(str(SHARED / "conformance/llb/*.json")))
LOCAL_SAMPLE = {
    # Go encoding/json form of a Definition: proto field names, bytes as base64.
    "definition": {
        "def": [base64.b64encode(ld(3, ld(1, "local://context"))).decode()],
        "metadata": {
            DGST_A: {
                "caps": {"source.local": True},
                "description": {"llb.customname": "ctx"},
                "ignore_cache": True,
                "progress_group": {"id": "g"},
            }
        },
        "Source": {"infos": [{"filename": "Dockerfile", "data": "RlJPTQ==", "language": "Dockerfile"}]},
    },
}


def _assert_no_unknown(msg: Message) -> None:
    assert len(UnknownFieldSet(msg)) == 0, type(msg).__name__
    for fd, value in msg.ListFields():
        if fd.message_type is None:
            continue
        if fd.message_type.GetOptions().map_entry:
            if fd.message_type.fields_by_name["value"].message_type is not None:
                for v in value.values():
                    _assert_no_unknown(v)
        elif fd.is_repeated:
            for v in value:
                _assert_no_unknown(v)
        else:
            _assert_no_unknown(value)


def _load_definition(doc: dict) -> ops_pb2.Definition:
    return json_format.ParseDict(doc["definition"], ops_pb2.Definition(), ignore_unknown_fields=False)


def _check_definition(defn: ops_pb2.Definition) -> int:
    _assert_no_unknown(defn)
    ops = getattr(defn, "def")
    assert ops, "definition has no ops"
    for raw in ops:
        op = ops_pb2.Op()
        op.ParseFromString(raw)
        _assert_no_unknown(op)
        # BuildKit (vtprotobuf) may order fields differently from upb, but the field set is identical.
        assert len(op.SerializeToString()) == len(raw)
    return len(ops)


def test_llb_json_builtin_sample() -> None:
    defn = _load_definition(LOCAL_SAMPLE)
    assert _check_definition(defn) == 1
    assert defn.metadata[DGST_A].ignore_cache
    assert defn.Source.infos[0].data == b"FROM"


@pytest.mark.skipif(not CORPUS, reason="conformance corpus not present")
@pytest.mark.parametrize("path", CORPUS, ids=[os.path.basename(p) for p in CORPUS])
def test_llb_json_corpus(path: str) -> None:
    with open(path) as f:
        doc = json.load(f)
    _check_definition(_load_definition(doc))
