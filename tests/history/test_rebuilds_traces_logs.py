"""Why a step rebuilt, the trace's tree, and complete step logs: real daemon, registry and runc.

One Dockerfile built several times with one change each; the plain progress output and the history
record name the reason. The trace blob's spans form one tree under the Solve span; a step printing
more than BuildKit's 2 MiB live-log limit is complete in the history's logs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from buildkitpy.api import control_pb2, control_pb2_grpc
from tests.conftest import needs_root, start_daemon, stop_daemon
from tests.history.test_history_rpc import read_blob, records, unix_channel
from tests.image.conftest import _need_registry
from tests.image.registryfixture import Registry, TarBuilder, busybox_rootfs, start_registry

pytestmark = needs_root


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Iterator[Registry]:
    _need_registry()
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    reg.push_image("test/busybox", "latest", [(busybox_rootfs(), "gzip")])
    # Its own image, so the trace test pulls whatever ran before it.
    marker = TarBuilder().add("marker", data=b"trace test\n").bytes()
    reg.push_image("test/traced", "latest", [(busybox_rootfs(), "gzip"), (marker, "gzip")])
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def rdaemon(tmp_path_factory):
    d = start_daemon(tmp_path_factory.mktemp("rebuilds") / "daemon")
    yield d
    stop_daemon(d)


DOCKERFILE = """FROM {image}
ARG GREETING
COPY app/ /app/
RUN echo "$GREETING" > /greeting
RUN cat /app/main.txt /greeting
"""


def build(daemon, ctx: Path, *extra: str) -> str:  # noqa: ANN001
    res = daemon.client("build", "--progress", "plain", "--frontend", "dockerfile.v0",
                        "--local", f"context={ctx}", "--local", f"dockerfile={ctx}",
                        "--output", f"type=local,dest={ctx.parent / 'out'}", *extra)
    return res.stderr.decode(errors="replace")


def reasons(daemon, text: str) -> dict[str, str]:  # noqa: ANN001
    """{step name: reason} printed at the end of a plain build, checked against the newest record."""
    printed = {}
    if "rebuilt steps" in text:
        for line in text.split("rebuilt steps", 1)[1].splitlines()[1:]:
            if line.startswith(" => "):
                name, _, reason = line[4:].partition(": ")
                printed[name] = reason
    newest = records(daemon, Limit=1)[0]
    stored = json.loads(newest.ExporterResponse.get("buildkitpy.rebuilds", "[]"))
    assert {r["name"]: r["reason"] for r in stored} == printed
    return printed


def test_why_each_step_rebuilt(rdaemon, registry: Registry, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    (ctx / "app").mkdir(parents=True)
    (ctx / "Dockerfile").write_text(DOCKERFILE.format(image=f"127.0.0.1:{registry.port}/test/busybox"))
    (ctx / "app" / "main.txt").write_text("v1\n")
    (ctx / "app" / "other.txt").write_text("same\n")

    first = reasons(rdaemon, build(rdaemon, ctx, "--opt", "build-arg:GREETING=hello"))
    assert first["[2/4] COPY app/ /app/"] == "no earlier build of this step", first
    # Frontends put build arg values into names; the step is still matched by its place.
    assert first['[3/4] RUN echo "hello" > /greeting'] == "no earlier build of this step", first

    assert reasons(rdaemon, build(rdaemon, ctx, "--opt", "build-arg:GREETING=hello")) == {}

    (ctx / "app" / "main.txt").write_text("v2\n")
    third = reasons(rdaemon, build(rdaemon, ctx, "--opt", "build-arg:GREETING=hello"))
    assert third["[2/4] COPY app/ /app/"].startswith("file /app/main.txt changed")
    assert third['[3/4] RUN echo "hello" > /greeting'].startswith(
        "input step [2/4] COPY app/ /app/ changed (it ran because: file /app/main.txt changed")

    fourth = reasons(rdaemon, build(rdaemon, ctx, "--opt", "build-arg:GREETING=bye"))
    assert "[2/4] COPY app/ /app/" not in fourth
    assert fourth['[3/4] RUN echo "bye" > /greeting'] == "build arg GREETING changed: hello → bye"

    (ctx / "app" / "new.txt").write_text("new\n")
    fifth = reasons(rdaemon, build(rdaemon, ctx, "--opt", "build-arg:GREETING=bye"))
    assert fifth["[2/4] COPY app/ /app/"].startswith("file /app/new.txt was added")

    # Nothing changed but the cache is gone: every step says so (a step whose input is hashed by
    # content keeps no input key to compare).
    rdaemon.client("prune", "--all")
    pruned = reasons(rdaemon, build(rdaemon, ctx, "--opt", "build-arg:GREETING=bye"))
    assert pruned["[2/4] COPY app/ /app/"].startswith("nothing differs from the earlier build"), pruned
    assert "cannot record why" not in rdaemon.log_text()

    sixth = reasons(rdaemon, build(rdaemon, ctx, "--opt", "build-arg:GREETING=bye", "--no-cache"))
    assert set(sixth.values()) == {"the cache was disabled for this build (--no-cache)"}


def test_trace_is_one_tree_and_logs_are_complete(rdaemon, registry: Registry, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        f"FROM 127.0.0.1:{registry.port}/test/traced\n"
        # 3 MiB of numbered lines: past BuildKit's 2 MiB live limit
        "RUN i=0; while [ $i -lt 150000 ]; do echo \"line $i of the long output\"; i=$((i+1)); done\n")
    out = build(rdaemon, ctx)
    assert "[output clipped, log limit" in out
    rec = records(rdaemon, Limit=1)[0]
    with unix_channel(rdaemon) as ch:
        stub = control_pb2_grpc.ControlStub(ch)
        stub.UpdateBuildHistory(control_pb2.UpdateBuildHistoryRequest(Ref=rec.Ref, Finalize=True), timeout=30)
        logs = b"".join(lg.msg for m in stub.Status(control_pb2.StatusRequest(Ref=rec.Ref), timeout=30)
                        for lg in m.logs)
    assert b"line 0 of the long output\n" in logs and b"line 149999 of the long output\n" in logs
    assert b"output clipped" not in logs

    [final] = records(rdaemon, Ref=rec.Ref)
    spans = [json.loads(chunk) for chunk in _json_stream(read_blob(rdaemon, final.trace.digest))]
    by_id = {s["SpanContext"]["SpanID"]: s for s in spans}
    assert len({s["SpanContext"]["TraceID"] for s in spans}) == 1
    [solve] = [s for s in spans if s["Name"] == "moby.buildkit.v1.Control/Solve"]
    run = next(s for s in spans if s["Name"].startswith("[2/2] RUN"))
    exec_span = next(s for s in spans if s["Name"].startswith("exec /bin/sh -c"))
    pull = next(s for s in spans if s["Name"].startswith("pull "))
    export = next(s for s in spans if s["Name"] == "export local")
    assert run["Parent"]["SpanID"] == solve["SpanContext"]["SpanID"]
    assert exec_span["Parent"]["SpanID"] == run["SpanContext"]["SpanID"]
    assert by_id[pull["Parent"]["SpanID"]]["Name"].startswith("[1/2] FROM")
    assert export["Parent"]["SpanID"] == solve["SpanContext"]["SpanID"]


def _json_stream(data: bytes) -> Iterator[str]:
    decoder = json.JSONDecoder()
    text, pos = data.decode(), 0
    while pos < len(text):
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return
        obj, end = decoder.raw_decode(text, pos)
        yield json.dumps(obj)
        pos = end


def test_status_of_unknown_ref_is_not_found(rdaemon) -> None:
    with unix_channel(rdaemon) as ch:
        stub = control_pb2_grpc.ControlStub(ch)
        with pytest.raises(grpc.RpcError) as exc:
            list(stub.Status(control_pb2.StatusRequest(Ref="no-such-build"), timeout=30))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
