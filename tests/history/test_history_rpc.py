"""Build history end to end: real daemon, real sockets, our client and raw gRPC.

ListenBuildHistory (stored, active/live, Ref, EarlyExit, filters, Limit), UpdateBuildHistory (pin,
delete, finalize), the containerd Content service over the record's blobs, Status replaying a
completed build, errors in records, [history] limits, and persistence across a restart.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import anyio
import grpc
import pytest

from buildkitpy.api import content_pb2, content_pb2_grpc, control_pb2, control_pb2_grpc
from buildkitpy.client.connection import Client
from buildkitpy.client.rpc_errors import BuildkitError
from tests.conftest import start_daemon, stop_daemon

COMPLETE = control_pb2.BuildHistoryEventType.COMPLETE
STARTED = control_pb2.BuildHistoryEventType.STARTED
DELETED = control_pb2.BuildHistoryEventType.DELETED


def dockerfile_build(daemon, tmp_path: Path, dockerfile: str, files: dict[str, str] | None = None,  # noqa: ANN001
                     *, check: bool = True, name: str = "ctx"):  # noqa: ANN201
    ctx = tmp_path / name
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    for rel, data in (files or {}).items():
        (ctx / rel).write_text(data)
    return daemon.client("build", "--progress", "plain", "--frontend", "dockerfile.v0",
                         "--local", f"context={ctx}", "--local", f"dockerfile={ctx}",
                         "--opt", "build-arg:GREETING=hello",
                         "--output", f"type=local,dest={tmp_path / (name + '-out')}", check=check)


def unix_channel(daemon) -> grpc.Channel:  # noqa: ANN001
    return grpc.insecure_channel(f"unix:{daemon.unix_addr.removeprefix('unix://')}")


def records(daemon, **kw) -> list[control_pb2.BuildHistoryRecord]:  # noqa: ANN001
    with unix_channel(daemon) as ch:
        stub = control_pb2_grpc.ControlStub(ch)
        events = list(stub.ListenBuildHistory(control_pb2.BuildHistoryRequest(EarlyExit=True, **kw),
                                              timeout=20))
    assert all(ev.type == COMPLETE for ev in events)
    return [ev.record for ev in events]


def read_blob(daemon, digest: str) -> bytes:  # noqa: ANN001
    with unix_channel(daemon) as ch:
        stub = content_pb2_grpc.ContentStub(ch)
        info = stub.Info(content_pb2.InfoRequest(digest=digest), timeout=10).info
        data = b"".join(r.data for r in stub.Read(content_pb2.ReadContentRequest(digest=digest), timeout=10))
        assert info.size == len(data)
        ranged = content_pb2.ReadContentRequest(digest=digest, offset=2, size=5)
        part = b"".join(r.data for r in stub.Read(ranged))
        assert part == data[2:7]
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    return data


@pytest.fixture(scope="module")
def hdaemon(tmp_path_factory):
    d = start_daemon(tmp_path_factory.mktemp("history") / "daemon")
    yield d
    stop_daemon(d)


def test_completed_record_blobs_status_and_updates(hdaemon, tmp_path: Path) -> None:
    dockerfile_build(hdaemon, tmp_path, "FROM scratch\nCOPY a.txt /\n", {"a.txt": "hello\n"})
    [rec] = records(hdaemon)
    assert rec.Frontend == ""  # buildctl-style build: the frontend runs through LLBBridge
    assert rec.FrontendAttrs["build-arg:GREETING"] == "hello"
    assert [e.Type for e in rec.Exporters] == ["local"]
    assert rec.HasField("CompletedAt") and not rec.HasField("error")
    assert rec.numTotalSteps >= 4 and rec.numCompletedSteps == rec.numTotalSteps
    assert rec.logs.media_type == "application/vnd.buildkit.status.v0"
    assert len(read_blob(hdaemon, rec.logs.digest)) == rec.logs.size

    # Status on a completed build replays the stored logs.
    with unix_channel(hdaemon) as ch:
        stub = control_pb2_grpc.ControlStub(ch)
        names = {v.name for m in stub.Status(control_pb2.StatusRequest(Ref=rec.Ref), timeout=10)
                 for v in m.vertexes}
        assert "[1/1] COPY a.txt /" in names
        # Unknown digests and bad ranges are clear errors.
        content = content_pb2_grpc.ContentStub(ch)
        with pytest.raises(grpc.RpcError) as exc:
            content.Info(content_pb2.InfoRequest(digest="sha256:" + "0" * 64))
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as exc:
            content.Info(content_pb2.InfoRequest(digest="md5:abc"))
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as exc:
            beyond = content_pb2.ReadContentRequest(digest=rec.logs.digest, offset=rec.logs.size + 1)
            list(content.Read(beyond))
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # Our client: Ref, filters, pin, finalize (then the trace is there), delete.
    traces: list[str] = []

    async def client_side() -> None:
        async with Client.connect(hdaemon.unix_addr) as c:
            got = [ev async for ev in c.build_history(ref=rec.Ref)]
            assert [ev.record.Ref for ev in got] == [rec.Ref]
            assert [ev async for ev in c.build_history(filters=["status==error"])] == []
            either = ["status==error", "ref==" + rec.Ref]
            assert len([ev async for ev in c.build_history(filters=either)]) == 1
            # startedAt>1h: started less than an hour ago (BuildKit's reading).
            assert len([ev async for ev in c.build_history(filters=["startedAt>1h,duration<10m"])]) == 1
            assert len([ev async for ev in c.build_history(filters=["startedAt<1h"])]) == 0
            with pytest.raises(BuildkitError, match="invalid limit"):
                [ev async for ev in c.build_history(limit=-1)]
            await c.update_build_history(rec.Ref, pinned=True)
            [pinned] = [ev.record async for ev in c.build_history(ref=rec.Ref)]
            assert pinned.pinned and pinned.Generation >= 1
            await c.update_build_history(rec.Ref, finalize=True)
            [final] = [ev.record async for ev in c.build_history(ref=rec.Ref)]
            assert final.trace.media_type == "application/vnd.buildkit.otlp.json.v0"
            assert b"moby.buildkit.v1.Control/Solve" in read_blob(hdaemon, final.trace.digest)
            traces.append(final.trace.digest)
            with pytest.raises(BuildkitError, match="not found"):
                await c.update_build_history("no-such-ref", pinned=True)

            live = c.build_history(early_exit=False)
            first = await live.__anext__()
            assert first.type == COMPLETE
            await c.update_build_history(rec.Ref, delete=True)
            with anyio.fail_after(10):
                while (ev := await live.__anext__()).type != DELETED:
                    pass
            assert ev.record.Ref == rec.Ref
            await live.aclose()
            assert rec.Ref not in [ev.record.Ref async for ev in c.build_history()]

    anyio.run(client_side)
    # Its blobs went with it.
    with unix_channel(hdaemon) as ch, pytest.raises(grpc.RpcError) as exc:
        content_pb2_grpc.ContentStub(ch).Info(content_pb2.InfoRequest(digest=traces[0]))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND


def test_exported_image_is_the_records_result(hdaemon, tmp_path: Path) -> None:
    ctx = tmp_path / "img"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY f /\n")
    (ctx / "f").write_text("image\n")
    meta = tmp_path / "meta.json"
    hdaemon.client("build", "--frontend", "dockerfile.v0", "--local", f"context={ctx}", "--local",
                   f"dockerfile={ctx}", "--output", f"type=oci,dest={tmp_path / 'img.tar'}",
                   "--metadata-file", str(meta))
    digest = json.loads(meta.read_text())["containerimage.digest"]
    [rec] = [r for r in records(hdaemon, Limit=1)]
    assert rec.Result.Results[0].digest == digest == rec.Result.ResultDeprecated.digest
    assert rec.Result.Results[0].media_type == "application/vnd.oci.image.manifest.v1+json"
    assert json.loads(read_blob(hdaemon, digest))["schemaVersion"] == 2  # served from the image store


def test_failed_build_record_and_live_events(hdaemon, tmp_path: Path) -> None:
    events: list[control_pb2.BuildHistoryEvent] = []
    ready = threading.Event()

    def listen() -> None:
        with unix_channel(hdaemon) as ch:
            stub = control_pb2_grpc.ControlStub(ch)
            # ActiveOnly: no stored records, then live events.
            call = stub.ListenBuildHistory(control_pb2.BuildHistoryRequest(ActiveOnly=True), timeout=60)
            ready.set()
            for ev in call:
                events.append(ev)
                if ev.type == COMPLETE:
                    call.cancel()
                    return

    t = threading.Thread(target=listen)
    t.start()
    ready.wait(10)
    time.sleep(0.3)
    res = dockerfile_build(hdaemon, tmp_path, "FROM scratch\nCOPY missing.txt /\n", check=False)
    assert res.returncode != 0
    t.join(30)
    assert [ev.type for ev in events] == [STARTED, COMPLETE]
    rec = events[-1].record
    assert rec.error.message and "missing.txt" in rec.error.message
    assert not rec.error.details  # the details live in the external error blob
    from google.rpc import status_pb2
    full = status_pb2.Status.FromString(read_blob(hdaemon, rec.externalError.digest))
    assert full.message == rec.error.message and full.details
    assert [r.Ref for r in records(hdaemon, Filter=["status==error"])] == [rec.Ref]
    assert rec.Ref not in [r.Ref for r in records(hdaemon, Filter=["status==completed"])]


def test_records_survive_restart_within_limits(tmp_path: Path) -> None:
    cfg = tmp_path / "buildkitd.toml"
    cfg.write_text('[history]\nmaxAge = "1s"\nmaxEntries = 2\n')
    d = start_daemon(tmp_path / "daemon", "--config", str(cfg))
    try:
        for i in range(3):
            dockerfile_build(d, tmp_path, f"FROM scratch\nCOPY f{i} /\n", {f"f{i}": str(i)}, name=f"c{i}")
            time.sleep(1.1)
        kept = records(d)
        assert len(kept) == 2
        newest = records(d, Limit=1)
        assert len(newest) == 1 and newest[0].CreatedAt.ToNanoseconds() == max(
            r.CreatedAt.ToNanoseconds() for r in kept)
    finally:
        stop_daemon(d)
    d = start_daemon(tmp_path / "daemon", "--config", str(cfg))
    try:
        again = records(d)
        assert sorted(r.Ref for r in again) == sorted(r.Ref for r in kept)
        for r in again:
            read_blob(d, r.logs.digest)
    finally:
        stop_daemon(d)
