"""The daemon over real sockets, driven by our CLI (buildctl's flags) and by raw gRPC calls."""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from pathlib import Path

import grpc
import pytest

from buildkitpy import llb
from buildkitpy.api import control_pb2, control_pb2_grpc


def definition_bytes(state) -> bytes:
    return state.marshal().SerializeToString()


def manifest(root: Path, *, owners: bool = True) -> dict[str, tuple]:
    """Everything we promise to keep about a tree: type, mode, size, content, link target,
    hardlink groups (and owners unless the exporter gives files to the client's user)."""
    out: dict[str, tuple] = {}
    inodes: dict[tuple[int, int], str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = os.lstat(path)
            kind = stat.S_IFMT(st.st_mode)
            extra: object = None
            if stat.S_ISREG(st.st_mode):
                extra = hashlib.sha256(path.read_bytes()).hexdigest()
                if st.st_nlink > 1:
                    first = inodes.setdefault((st.st_dev, st.st_ino), rel)
                    extra = (extra, "hardlink-group", first)
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(path)
            mode = stat.S_IMODE(st.st_mode) if not stat.S_ISLNK(st.st_mode) else 0
            entry = (kind, mode, st.st_size if stat.S_ISREG(st.st_mode) else 0, extra)
            if owners:
                entry += (st.st_uid, st.st_gid)
            out[rel] = entry
    return out


def test_debug_workers_and_info_on_unix_and_tcp(daemon):
    for addr in (daemon.unix_addr, daemon.tcp_addr):
        workers = daemon.client("debug", "workers", addr=addr).stdout.decode()
        assert "linux/" in workers
        assert len(workers.strip().splitlines()) == 2, workers  # header + our one worker
        info = daemon.client("debug", "info", addr=addr).stdout.decode()
        assert "0.1.0" in info


def file_op_graph():
    ctx = llb.local("context")
    return (llb.scratch()
            .file(llb.mkdir("/out", 0o755))
            .file(llb.mkfile("/out/hello.txt", 0o640, b"hello from buildkitpy\n"))
            .file(llb.copy(ctx, "/", "/out/ctx/", copy_dir_contents=True, create_dest_path=True))
            .file(llb.symlink("hello.txt", "/out/link"))
            .file(llb.rm("/out/ctx/remove-me")))


@pytest.mark.parametrize("path", ["gateway", "direct"])
def test_llb_build_exports_local_and_tar(daemon, tmp_path, path):
    ctx = tmp_path / "ctx"
    (ctx / "sub").mkdir(parents=True)
    (ctx / "sub" / "a.txt").write_text("A")
    (ctx / "remove-me").write_text("x")
    (ctx / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(ctx / "run.sh", 0o755)
    data = definition_bytes(file_op_graph())
    extra = ["--direct"] if path == "direct" else []

    out = tmp_path / "out"
    daemon.client("build", *extra, "--local", f"context={ctx}", "--output", f"type=local,dest={out}",
                  input=data)
    assert (out / "out" / "hello.txt").read_text() == "hello from buildkitpy\n"
    assert stat.S_IMODE(os.stat(out / "out" / "hello.txt").st_mode) == 0o640
    assert (out / "out" / "ctx" / "sub" / "a.txt").read_text() == "A"
    assert os.access(out / "out" / "ctx" / "run.sh", os.X_OK)
    assert os.readlink(out / "out" / "link") == "hello.txt"
    assert not (out / "out" / "ctx" / "remove-me").exists()

    tar_path = tmp_path / "out.tar"
    daemon.client("build", *extra, "--local", f"context={ctx}", "--output",
                  f"type=tar,dest={tar_path}", input=data)
    with tarfile.open(tar_path) as tar:
        names = set(tar.getnames())
        assert {"out", "out/hello.txt", "out/ctx/sub/a.txt", "out/link"} <= names
        assert tar.extractfile("out/hello.txt").read() == b"hello from buildkitpy\n"
        assert tar.getmember("out/link").linkname == "hello.txt"


def test_a_cached_result_exported_again_is_the_same_tree_and_a_changed_one_is_new(daemon, tmp_path):
    """The second local export of a cached result sends the walk the worker remembers of its
    snapshot (fsutil.walk.WalkMemo); a changed result is a new snapshot, walked anew."""
    ctx = tmp_path / "ctx"
    (ctx / "sub").mkdir(parents=True)
    (ctx / "sub" / "a.txt").write_text("A")
    (ctx / "remove-me").write_text("x")
    os.link(ctx / "sub" / "a.txt", ctx / "sub" / "a-again.txt")
    data = definition_bytes(file_op_graph())

    def export(name: str) -> Path:
        out = tmp_path / name
        daemon.client("build", "--local", f"context={ctx}", "--output", f"type=local,dest={out}",
                      input=data)
        return out

    first, second = manifest(export("first")), manifest(export("second"))
    assert first == second
    assert first["out/ctx/sub/a-again.txt"][3][1:] == ("hardlink-group", "out/ctx/sub/a-again.txt")
    (ctx / "sub" / "a.txt").write_text("changed, longer")
    changed = export("changed")
    assert (changed / "out" / "ctx" / "sub" / "a.txt").read_text() == "changed, longer"
    assert manifest(changed)["out/ctx/sub/a.txt"] != first["out/ctx/sub/a.txt"]
    assert manifest(export("changed-again")) == manifest(changed)


def make_odd_context(root: Path, n_files: int = 2000) -> None:
    (root / "dir").mkdir(parents=True)
    for i in range(n_files):
        sub = root / "dir" / f"d{i % 40:02d}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{i:04d}.txt").write_bytes(f"file {i}\n".encode() * (i % 7))
    (root / "ünïcödé name ✓.txt").write_text("non-ascii")
    (root / "with space").mkdir()
    (root / "with space" / "x y").write_text("space")
    (root / "link-rel").symlink_to("dir/d00/f0000.txt")
    (root / "link-abs").symlink_to("/etc/passwd")
    (root / "link-dangling").symlink_to("nowhere")
    (root / "hard-a").write_text("hardlinked")
    os.link(root / "hard-a", root / "hard-b")
    for name, mode in (("setuid", 0o4755), ("sticky-dir", 0o1777), ("none", 0o000), ("all", 0o777)):
        p = root / name
        if name.endswith("dir"):
            p.mkdir()
        else:
            p.write_text(name)
        os.chmod(p, mode)
    (root / "private").mkdir()
    os.chmod(root / "private", 0o700)
    (root / "empty").write_bytes(b"")


def test_context_of_2000_odd_files_round_trips_exactly(daemon, tmp_path):
    ctx = tmp_path / "ctx"
    make_odd_context(ctx)
    out = tmp_path / "out"
    daemon.client("build", "--local", f"context={ctx}", "--output", f"type=local,dest={out}",
                  input=definition_bytes(llb.local("context")))
    assert manifest(out, owners=False) == manifest(ctx, owners=False)


class _HostileFileSync:
    """A client whose FileSync sender breaks the protocol in a chosen way."""

    def __init__(self, packets):
        self.packets = packets

    def method_names(self):
        return ["/moby.filesync.v1.FileSync/DiffCopy"]

    def add_to_server(self, server):
        from buildkitpy.api import filesync_pb2_grpc

        packets = self.packets

        class Servicer(filesync_pb2_grpc.FileSyncServicer):
            async def DiffCopy(self, request_iterator, context):
                for p in packets:
                    yield p

        filesync_pb2_grpc.add_FileSyncServicer_to_server(Servicer(), server)


def _stat_packet(path: str, mode: int = 0o644, size: int = 0):
    from buildkitpy.api import fsutil_stat_pb2, fsutil_wire_pb2

    return fsutil_wire_pb2.Packet(type=fsutil_wire_pb2.Packet.PACKET_STAT,
                                  stat=fsutil_stat_pb2.Stat(path=path, mode=mode, size=size))


@pytest.mark.anyio
@pytest.mark.parametrize("bad_path, reason", [
    ("../escape", ".."),
    ("/etc/evil", "absolute"),
])
async def test_hostile_filesync_sender_gets_clear_error_and_daemon_keeps_serving(
        daemon, tmp_path, bad_path, reason):
    from buildkitpy.api import fsutil_wire_pb2
    from buildkitpy.session.client import ClientSession

    packets = [_stat_packet("ok.txt"), _stat_packet(bad_path),
               fsutil_wire_pb2.Packet(type=fsutil_wire_pb2.Packet.PACKET_STAT)]
    session = ClientSession([_HostileFileSync(packets)])
    async with grpc.aio.insecure_channel(daemon.unix_addr.replace("unix://", "unix:")) as channel:
        stub = control_pb2_grpc.ControlStub(channel)
        async with session.run(stub):
            definition = llb.local("context", session_id=session.session_id).marshal()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Solve(control_pb2.SolveRequest(Ref=f"hostile{os.getpid()}{len(bad_path)}",
                                                          Definition=definition,
                                                          Session=session.session_id), timeout=60)
    message = err.value.details()
    assert bad_path in message and reason in message, message
    assert daemon.alive()
    # The daemon still serves a normal build.
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "fine").write_text("ok")
    out = tmp_path / "out"
    daemon.client("build", "--local", f"context={ctx}", "--output", f"type=local,dest={out}",
                  input=definition_bytes(llb.local("context")))
    assert (out / "fine").read_text() == "ok"


def test_local_output_dir_is_created_like_buildctl(daemon, tmp_path):
    out = tmp_path / "new" / "out"
    old = os.umask(0o022)
    try:
        daemon.client("build", "--output", f"type=local,dest={out}",
                      input=definition_bytes(llb.scratch().file(llb.mkfile("/f", 0o644, b"x"))))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o755
    assert (out / "f").read_bytes() == b"x"
