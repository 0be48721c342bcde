"""ExecOp through the real solver, real snapshots and real runc (a static busybox rootfs)."""

from __future__ import annotations

import shutil
from pathlib import Path

import anyio
import pytest

from buildkitpy.api import ops_pb2
from buildkitpy.errors import SolveError
from tests.solver.llbutil import LLB, mkdir, mkfile, symlink

BUSYBOX = shutil.which("busybox")
pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not (BUSYBOX and shutil.which("runc")), reason="needs runc and busybox")]


@pytest.fixture
def xenv(env, tmp_path):  # noqa: ANN001, ANN201
    from buildkitpy.executor.runc import RuncExecutor

    env.worker.executor = RuncExecutor(tmp_path / "exec")
    return env


def rootfs(b: LLB) -> str:
    data = Path(BUSYBOX).read_bytes()
    return b.file([mkdir("/bin", output=-1), mkfile("/bin/busybox", data, 0o755, input=0, output=-1),
                   symlink("busybox", "/bin/sh", input=1, output=-1), mkdir("/tmp", 0o1777, input=2)])


def run(b: LLB, inputs: list[str], script: str, mounts: list[ops_pb2.Mount] | None = None,
        valid: list[int] | None = None, **meta: object) -> str:
    ex = ops_pb2.ExecOp(meta=ops_pb2.Meta(args=["/bin/sh", "-c", script], env=["A=1"], cwd="/"),
                        mounts=[ops_pb2.Mount(input=0, dest="/", output=0), *(mounts or [])],
                        network=ops_pb2.NONE)
    if valid:
        ex.meta.validExitCodes.extend(valid)
    return b.add(ops_pb2.Op(inputs=[ops_pb2.Input(digest=i) for i in inputs], exec=ex), **meta)


def logs(job) -> bytes:  # noqa: ANN001
    async def collect() -> bytes:
        job.progress.close()
        out = b""
        async for msg in job.progress.subscribe():
            for entry in msg.logs:
                out += entry.msg
        return out
    return anyio.run(collect)


def test_run_writes_output_and_streams_logs(xenv):
    b = LLB()
    e = run(b, [rootfs(b)], "echo hello; echo oops >&2; echo $A > /out.txt")
    job = xenv.job()
    tree = xenv.tree(b.definition(e), job)
    assert tree["out.txt"] == b"1\n"
    out = logs(job)
    assert b"hello" in out and b"oops" in out
    # cached the second time
    xenv.tree(b.definition(e))
    assert xenv.executed() == []


def test_exit_code_error_and_valid_exit_codes(xenv):
    b = LLB()
    e = run(b, [rootfs(b)], "exit 3")
    with pytest.raises(SolveError, match=r'process "/bin/sh -c exit 3" did not complete successfully: '
                                         r"exit code: 3") as ei:
        xenv.solve(b.definition(e))
    assert ei.value.exit_code == 3 and ei.value.vertex == e
    assert xenv.live_handles() == {} and xenv.mutables() == []
    b2 = LLB()
    ok = run(b2, [rootfs(b2)], "touch /x; exit 3", valid=[0, 3])
    assert "x" in xenv.tree(b2.definition(ok))


def test_mounts_bind_cache_tmpfs(xenv):
    b = LLB()
    root = rootfs(b)
    data = b.file([mkdir("/sub", output=-1), mkfile("/sub/in.txt", b"input", input=0)])
    mounts = [
        ops_pb2.Mount(input=1, selector="/sub", dest="/data", readonly=True, output=-1),
        ops_pb2.Mount(input=-1, dest="/cache", output=-1, mountType=ops_pb2.CACHE,
                      cacheOpt=ops_pb2.CacheOpt(ID="c1", sharing=ops_pb2.SHARED)),
        ops_pb2.Mount(input=-1, dest="/scratch", output=-1, mountType=ops_pb2.TMPFS,
                      TmpfsOpt=ops_pb2.TmpfsOpt(size=1 << 20)),
        ops_pb2.Mount(input=1, dest="/rw", output=1),
    ]
    e = run(b, [root, data], "cat /data/in.txt > /copied; echo run >> /cache/count; "
                             "cp /cache/count /seen; echo t > /scratch/t; grep -q tmpfs /proc/mounts; "
                             "echo new > /rw/new", mounts)
    tree = xenv.tree(b.definition(e))
    assert tree["copied"] == b"input" and tree["seen"] == b"run\n"
    assert "scratch/t" not in tree
    out1 = xenv.tree(b.definition(e, 1))
    assert out1["new"] == b"new\n" and out1["sub/in.txt"] == b"input"
    # the cache mount persists into a different exec
    b2 = LLB()
    e2 = run(b2, [rootfs(b2)], "echo again >> /cache/count; cp /cache/count /seen2",
             [ops_pb2.Mount(input=-1, dest="/cache", output=-1, mountType=ops_pb2.CACHE,
                            cacheOpt=ops_pb2.CacheOpt(ID="c1", sharing=ops_pb2.LOCKED))])
    assert xenv.tree(b2.definition(e2))["seen2"] == b"run\nagain\n"


def test_missing_required_secret_without_session_fails_clearly(xenv):
    b = LLB()
    e = run(b, [rootfs(b)], "cat /run/secrets/s",
            [ops_pb2.Mount(input=-1, dest="/run/secrets/s", mountType=ops_pb2.SECRET,
                           secretOpt=ops_pb2.SecretOpt(ID="s", mode=0o400))])
    with pytest.raises(SolveError, match=r"secret s: not found \(.*session"):
        xenv.solve(b.definition(e))
    b2 = LLB()
    ok = run(b2, [rootfs(b2)], "test ! -e /run/secrets/s",
             [ops_pb2.Mount(input=-1, dest="/run/secrets/s", mountType=ops_pb2.SECRET,
                            secretOpt=ops_pb2.SecretOpt(ID="s", optional=True))])
    xenv.solve(b2.definition(ok)).ref.release()


def test_ssh_mount_without_session_fails_unless_optional(xenv):
    b = LLB()
    e = run(b, [rootfs(b)], "true", [ops_pb2.Mount(input=-1, dest="/ssh", mountType=ops_pb2.SSH,
                                                   SSHOpt=ops_pb2.SSHOpt(ID="default"))])
    with pytest.raises(SolveError, match='no SSH key "default" forwarded from the client'):
        xenv.solve(b.definition(e))
    b2 = LLB()
    ok = run(b2, [rootfs(b2)], "test ! -e /ssh", [ops_pb2.Mount(
        input=-1, dest="/ssh", mountType=ops_pb2.SSH, SSHOpt=ops_pb2.SSHOpt(ID="default", optional=True))])
    xenv.solve(b2.definition(ok)).ref.release()
