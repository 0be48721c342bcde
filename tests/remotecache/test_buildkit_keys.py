"""Our cache keys equal the ones real BuildKit computes, so remote caches interoperate both ways.

The expected digests are fixtures recorded from a real BuildKit daemon (v0.32 built from source,
``buildkitd --oci-worker=true --save-cache-debug --debugaddr ...`` with a ``docker.io`` mirror on a
loopback registry serving the conformance corpus's busybox-static image) building, with the real
``buildctl build --frontend dockerfile.v0 --export-cache type=local,dest=D,mode=max``, this
Dockerfile and context::

    FROM busybox
    ENV FOO=bar
    WORKDIR /app
    COPY a.txt /app/
    COPY dir/ /app/dir/
    RUN echo $FOO > /app/out && cat /app/a.txt >> /app/out
    RUN ls -la /app > /app/ls

    a.txt = "hello\\n" (0644), dir/ (0755), dir/b.txt = "x\\n", dir/sub/ (0755), dir/sub/c.txt = "y\\n"
    (all owned by 0:0)

The record digests are those of the exported cache config (``D/blobs/...``, the
``application/vnd.buildkit.cacheconfig.v0`` blob); which op each record is was read from the
daemon's ``/debug/cache/all`` (the pre-image of every digest). The ops below are the LLB the
Dockerfile frontend produced for those steps.
"""

from __future__ import annotations

import os

import pytest

from buildkitpy.api import ops_pb2
from buildkitpy.image.platforms import Platform
from buildkitpy.jobs import Job
from buildkitpy.remotecache.keys import root_key
from buildkitpy.solver.cachekey import CacheMap, go_marshal, go_proto_value, selector_digest
from buildkitpy.solver.contenthash import combine, tree_digest
from buildkitpy.solver.loader import InputRef, Vertex
from buildkitpy.solver.ops.base import OpContext
from buildkitpy.solver.ops.exec import ExecOp
from buildkitpy.solver.ops.file import FileOp
from buildkitpy.solver.ops.source_image import ImageSource

BUSYBOX_MANIFEST = "sha256:3b1efa85b9d44689801e27a43cf5393658337c15f2387e5f0f46c2afe990ccbb"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Records of the exported cache config, by step.
FROM_RECORD = "sha256:f94fa320a2216a10fd535c6304c67d3388488cfc39c93f0aaa160401ef2a4992"
WORKDIR_RECORD = "sha256:807b3e8722c68572736f54d83fd741a5b1d69ccbef218fae52b4149a56d232ce"
COPY_FILE_RECORD = "sha256:4246240add2be28e0b1ac58c7fd911a09797ac0790227da9a9e580067e8a53ce"
COPY_FILE_CONTENT_RECORD = "sha256:c24a47b576469b52903dd7e5045a62fee5855b447dee1771d67b829458d2c08e"
COPY_DIR_RECORD = "sha256:c91d5f3666a51de550d9168f80c46b2eef5f6fb60d9e0c0de2f33cfed296ad07"
COPY_DIR_CONTENT_RECORD = "sha256:0e5a09fd846d445e69d0440e708241e3f14cdd50dc7f97e8b24a580e91f969c3"
RUN1_RECORD = "sha256:7302d3d0028bb3034ea930572c2e88d1ecd60c8d210971edff874bd784b1035a"
RUN2_RECORD = "sha256:7a80a8b9092dd22201becb1c20416231f7793cc596ce22d7baee059011942cd6"
ROOT_SELECTOR = "sha256:8a5edab282632443219e051e4ade2d1d5bbc671c781051bf1437897cbdfea0f1"
# Pre-images the daemon recorded (/debug/cache/all): the file hash of a.txt, the checksum of dir/.
A_TXT_FILE_HASH = "sha256:09eefdc91e8894bc767daae7daa5a4e8cbf396610f10ae20604d9086c76d4a93"
DIR_CHECKSUM = "sha256:d96fa1c95619715d638c1e0105d25e3d2c62a8c7b83971f21f420c476ce04092"
RUN1_PREIMAGE = (
    '{"Type":"buildkit.exec.v0","Exec":{"meta":{"args":["/bin/sh","-c","echo $FOO \\u003e /app/out '
    '\\u0026\\u0026 cat /app/a.txt \\u003e\\u003e /app/out"],"env":["PATH=/usr/local/sbin:/usr/local/bin:'
    '/usr/sbin:/usr/bin:/sbin:/bin","FOO=bar"],"cwd":"/app","removeMountStubsRecursive":true}},'
    '"OS":"linux","Arch":"amd64"}'
)

PLATFORM = ops_pb2.Platform(OS="linux", Architecture="amd64")


def vertex(op: ops_pb2.Op, kind: str) -> Vertex:
    op.platform.CopyFrom(PLATFORM)
    inputs = [InputRef(f"sha256:{n:064x}", 0) for n in range(len(op.inputs))]
    return Vertex(digest="", op=op, kind=kind, inputs=inputs, name=kind, num_outputs=1,
                  metadata=ops_pb2.OpMetadata())


def context(v: Vertex) -> OpContext:
    return OpContext(worker=None, job=Job(ref="keys"), vertex=v, shared=None)


def file_op(action: ops_pb2.FileAction, n_inputs: int) -> tuple[CacheMap, str]:
    op = ops_pb2.Op(inputs=[ops_pb2.Input() for _ in range(n_inputs)], file=ops_pb2.FileOp(actions=[action]))
    v = vertex(op, "file")
    cm = FileOp(v).cache_map(context(v))
    return cm, root_key(cm.digest, 0)


def copy_action(src: str, dest: str) -> ops_pb2.FileAction:
    c = ops_pb2.FileActionCopy(src=src, dest=dest, mode=-1, followSymlink=True, dirCopyContents=True,
                               createDestPath=True, allowWildcard=True, allowEmptyWildcard=True, timestamp=-1)
    return ops_pb2.FileAction(input=0, secondaryInput=1, output=0, copy=c)


def run_op(cmd: str) -> tuple[CacheMap, str]:
    meta = ops_pb2.Meta(args=["/bin/sh", "-c", cmd], env=[PATH_ENV, "FOO=bar"], cwd="/app",
                        removeMountStubsRecursive=True)
    exec_op = ops_pb2.ExecOp(meta=meta, mounts=[ops_pb2.Mount(input=0, dest="/", output=0)])
    v = vertex(ops_pb2.Op(inputs=[ops_pb2.Input()], exec=exec_op), "exec")
    cm = ExecOp(v).cache_map(context(v))
    return cm, root_key(cm.digest, 0)


def test_image_source_key():
    op = ops_pb2.Op(source=ops_pb2.SourceOp(
        identifier=f"docker-image://docker.io/library/busybox:latest@{BUSYBOX_MANIFEST}"))
    v = vertex(op, "source")
    cm = ImageSource(v).cache_map(context(v))
    assert root_key(cm.digest, 0) == FROM_RECORD


def test_workdir_mkdir_key():
    mkdir = ops_pb2.FileActionMkDir(path="/app", mode=0o755, makeParents=True, timestamp=-1)
    cm, record = file_op(ops_pb2.FileAction(input=0, secondaryInput=-1, output=0, mkdir=mkdir), 1)
    assert record == WORKDIR_RECORD
    assert cm.deps[0].selector == ""  # the mkdir target: linked without a selector, no content key


@pytest.mark.parametrize(("src", "dest", "expected"), [
    ("/a.txt", "/app/", COPY_FILE_RECORD),
    ("/dir", "/app/dir/", COPY_DIR_RECORD),
])
def test_copy_keys(src: str, dest: str, expected: str):
    cm, record = file_op(copy_action(src, dest), 2)
    assert record == expected
    assert cm.deps[1].selector == selector_digest([src])
    assert [s.path for s in cm.deps[1].content or []] == [src]


def test_run_keys():
    cm, record = run_op("echo $FOO > /app/out && cat /app/a.txt >> /app/out")
    assert record == RUN1_RECORD
    assert cm.deps[0].selector == ROOT_SELECTOR
    assert cm.deps[0].content is None  # BuildKit takes no content key of the root mount
    assert run_op("ls -la /app > /app/ls")[1] == RUN2_RECORD


def test_exec_preimage_is_go_json():
    meta = ops_pb2.Meta(args=["/bin/sh", "-c", "echo $FOO > /app/out && cat /app/a.txt >> /app/out"],
                        env=[PATH_ENV, "FOO=bar"], cwd="/app", removeMountStubsRecursive=True)
    value = {"Type": "buildkit.exec.v0", "Exec": go_proto_value(ops_pb2.ExecOp(meta=meta)), "OS": "linux",
             "Arch": "amd64"}
    assert go_marshal(value).decode() == RUN1_PREIMAGE


@pytest.mark.skipif(os.geteuid() != 0, reason="the recorded checksums are of files owned by 0:0")
def test_content_checksums(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"hello\n")
    (tmp_path / "dir" / "sub").mkdir(parents=True)
    (tmp_path / "dir" / "b.txt").write_bytes(b"x\n")
    (tmp_path / "dir" / "sub" / "c.txt").write_bytes(b"y\n")
    for p in [tmp_path / "a.txt", tmp_path / "dir" / "b.txt", tmp_path / "dir" / "sub" / "c.txt"]:
        p.chmod(0o644)
    for p in [tmp_path / "dir", tmp_path / "dir" / "sub"]:
        p.chmod(0o755)
    for p in tmp_path.rglob("*"):
        os.lchown(p, 0, 0)
    assert tree_digest(str(tmp_path / "a.txt")) == A_TXT_FILE_HASH
    assert tree_digest(str(tmp_path / "dir")) == DIR_CHECKSUM
    assert root_key(combine([A_TXT_FILE_HASH]), -1) == COPY_FILE_CONTENT_RECORD
    assert root_key(combine([DIR_CHECKSUM]), -1) == COPY_DIR_CONTENT_RECORD


def test_platform_in_image_key_matters():
    from buildkitpy.solver.ops.source_image import manifest_cache_key

    amd64 = manifest_cache_key(BUSYBOX_MANIFEST, Platform("linux", "amd64", ""))
    assert root_key(amd64, 0) == FROM_RECORD
    assert manifest_cache_key(BUSYBOX_MANIFEST, Platform("linux", "arm64", "v8")) != amd64
    assert manifest_cache_key(BUSYBOX_MANIFEST, Platform("linux", "amd64", ""), limit=1) != amd64


# A second recording, same daemon and procedure, of a multi-stage build whose context is
# Dockerfile (MULTI_STAGE below), one.txt = "one\n", two.txt = "two\n", sub/z.dat = "z\n" and a
# symlink link -> one.txt (files 0644, directories 0755, all 0:0). Its `COPY . .` hashes the whole
# context (a local source: BuildKit hashes the root's own header as the empty digest, the client
# never sends it) and `COPY *.txt /txt/` a wildcard (the matches, keyed by path).
MULTI_STAGE = (
    "FROM busybox AS base\nARG V=1\nRUN echo $V > /v\nFROM base AS build\nWORKDIR /src\nCOPY . .\n"
    "RUN --mount=type=cache,target=/cache echo cached > /cache/x; ls /src > /listing\nFROM busybox\n"
    "COPY --from=build /listing /listing\nCOPY *.txt /txt/\nCOPY --chown=1:1 sub /sub\nADD one.txt /added\n"
    "USER nobody\nRUN id > /tmp/id || true\nEXPOSE 80\nLABEL a=b\n"
)
CONTEXT_ROOT_CHECKSUM = "sha256:69091344ee003835b2bed0b1719ff8ee16bb12927dce1c08cf1e911225064b41"
CONTEXT_ROOT_CONTENT_RECORD = "sha256:30dccbf6d277984f21b36c921dd1bcc58759fb5f993d966feabb4b1424fd43c2"
TXT_WILDCARD_CHECKSUM = "sha256:a5efd6c77ba450e6284325a1a608b79dffa4145cc0eae5b22b42eef306a6cd33"
TXT_WILDCARD_CONTENT_RECORD = "sha256:b826f908c1294ba845f2c65328ea55bb16f1799a664afcbffde24a3e59d82666"
SUB_CONTENT_RECORD = "sha256:78e37614286d2efb19f87b64dc43d3fbcf022013c1b7d21efbf6f57cd8c1ae8d"


@pytest.mark.skipif(os.geteuid() != 0, reason="the recorded checksums are of files owned by 0:0")
def test_context_root_and_wildcard_checksums(tmp_path):
    from buildkitpy.solver.cachekey import Selector
    from buildkitpy.solver.contenthash import checksum

    (tmp_path / "Dockerfile").write_text(MULTI_STAGE)
    (tmp_path / "one.txt").write_text("one\n")
    (tmp_path / "two.txt").write_text("two\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "z.dat").write_text("z\n")
    (tmp_path / "link").symlink_to("one.txt")
    for p in tmp_path.rglob("*"):
        if not p.is_symlink():
            p.chmod(0o755 if p.is_dir() else 0o644)
        os.lchown(p, 0, 0)

    root = checksum(tmp_path, Selector("/", follow_links=True), synced=True)
    assert root == CONTEXT_ROOT_CHECKSUM
    assert root_key(combine([root]), -1) == CONTEXT_ROOT_CONTENT_RECORD
    txt = checksum(tmp_path, Selector("/*.txt", follow_links=True, wildcard=True), synced=True)
    assert txt == TXT_WILDCARD_CHECKSUM
    assert root_key(combine([txt]), -1) == TXT_WILDCARD_CONTENT_RECORD
    sub = checksum(tmp_path, Selector("/sub", follow_links=True), synced=True)
    assert root_key(combine([sub]), -1) == SUB_CONTENT_RECORD
    # Outside a local source the root's header is hashed like any directory's.
    assert checksum(tmp_path, Selector("/", follow_links=True)) != root


# A third recording (same procedure): `COPY --parents sub/deep/d.txt /p/` (the context root with an
# include pattern and a required path) and `COPY --exclude=*.dat sub /subx`, over a context with
# sub/z.dat = "z\n", sub/keep.txt = "k\n", sub/deep/d.txt = "d\n" (0644 files, 0755 dirs, 0:0).
PARENTS_CHECKSUM = "sha256:14c9ff1a9de2ea4952b8b9f345dd270d39c0a1c85a8be685740fd5b8a68d0415"
EXCLUDE_CHECKSUM = "sha256:0f346c2f74297103737cadd7be9fee6e386d214925bb1a652a4669bdfc8636cc"


@pytest.mark.skipif(os.geteuid() != 0, reason="the recorded checksums are of files owned by 0:0")
def test_filtered_checksums(tmp_path):
    from buildkitpy.solver.cachekey import Selector
    from buildkitpy.solver.contenthash import checksum

    (tmp_path / "sub" / "deep").mkdir(parents=True)
    (tmp_path / "sub" / "z.dat").write_text("z\n")
    (tmp_path / "sub" / "keep.txt").write_text("k\n")
    (tmp_path / "sub" / "deep" / "d.txt").write_text("d\n")
    for p in tmp_path.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
        os.lchown(p, 0, 0)

    parents = Selector("/", follow_links=True, include_patterns=("sub/deep/d.txt",),
                       required_paths=("/sub/deep/d.txt",))
    assert checksum(tmp_path, parents, synced=True) == PARENTS_CHECKSUM
    exclude = Selector("/sub", follow_links=True, exclude_patterns=("*.dat",))
    assert checksum(tmp_path, exclude, synced=True) == EXCLUDE_CHECKSUM


def test_merge_key():
    """`COPY --link` merges the copy (made on scratch) onto the stage: recorded from the third build
    (/debug/cache/all: sha256:4362… = {"Type":"buildkit.merge.v0","Merge":{"inputs":[{},{"input":1}]}})."""
    from buildkitpy.solver.ops.merge import MergeOp

    merge = ops_pb2.MergeOp(inputs=[ops_pb2.MergeInput(input=0), ops_pb2.MergeInput(input=1)])
    v = vertex(ops_pb2.Op(inputs=[ops_pb2.Input(), ops_pb2.Input()], merge=merge), "merge")
    cm = MergeOp(v).cache_map(context(v))
    assert cm.digest == "sha256:436287a2dc2ce494f564331be9ea3a9f27ebec398567877043da2f618f33d6c8"


def test_http_source_key():
    """`ADD http://127.0.0.1:5094/f.txt /f.txt` (a file "remote file\\n" served with that
    Last-Modified): the real daemon recorded sha256:28cd… = "buildkit.source.v0:" + sha256:6d63…,
    sha256:6d63… = {"Filename":"f.txt","Perm":0,"UID":0,"GID":0,"Checksum":"sha256:983d…",
    "LastModTime":"Sun, 06 Dec 2026 23:47:11 GMT"}."""
    from buildkitpy.solver.ops.source_http import HTTPSource, Resolved

    v = vertex(ops_pb2.Op(source=ops_pb2.SourceOp(identifier="http://127.0.0.1:5094/f.txt")), "source")
    src = HTTPSource(v)
    content = "sha256:983df9e32ce06c9b2dc3488eb603f14bdc8d1365b84849ce444fb9128a2db3a1"
    src.resolved = Resolved(content, "f.txt", last_modified="Sun, 06 Dec 2026 23:47:11 GMT")
    cm = src.cache_map(context(v))
    assert cm.digest == "sha256:28cd55f848973e7c26bc05b481456f986370c5dfdcde05bff35960f3903e26ce"


def test_git_source_key():
    """`ADD git://127.0.0.1:5095/repo.git#main /src` (a repository whose main is commit b92ae83…):
    the real daemon recorded sha256:603d… = "buildkit.source.v0:b92ae83f4c1d69072f67ea0eab076fa92e6526ac"."""
    from buildkitpy.solver.ops.source_git import GitSource

    op = ops_pb2.Op(source=ops_pb2.SourceOp(identifier="git://127.0.0.1:5095/repo.git#main"))
    v = vertex(op, "source")
    src = GitSource(v)
    src.key_commit = "b92ae83f4c1d69072f67ea0eab076fa92e6526ac"  # what resolve() found the ref at
    cm = src.cache_map(context(v))
    assert cm.digest == "sha256:603dde040415f9f466892e76c8a56d971253c9a85cc6a5b8513c82397146014e"
