"""Traces: the client's traceparent is continued, client spans join the build's trace, and the
daemon exports its spans over OTLP/gRPC when the OTEL_* environment asks for it."""

from __future__ import annotations

import json
import secrets
import threading
import time
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from buildkitpy import llb
from buildkitpy.api import control_pb2, control_pb2_grpc
from tests.conftest import free_port, start_daemon, stop_daemon
from tests.history.test_history_rpc import read_blob, records, unix_channel
from tests.history.test_rebuilds_traces_logs import _json_stream


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: list[trace_pb2.Span] = []
        self.got = threading.Event()

    def Export(self, request, context):  # noqa: N802
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                self.spans.extend(ss.spans)
        self.got.set()
        return trace_service_pb2.ExportTraceServiceResponse()


def solve_with_traceparent(daemon, trace_id: str, parent_span: str) -> str:  # noqa: ANN001
    ref = "trace" + secrets.token_hex(8)
    definition = llb.scratch().file(llb.mkfile("/hello", 0o644, b"hi\n")).marshal()
    with unix_channel(daemon) as ch:
        stub = control_pb2_grpc.ControlStub(ch)
        stub.Solve(control_pb2.SolveRequest(Ref=ref, Definition=definition), timeout=60,
                   metadata=[("traceparent", f"00-{trace_id}-{parent_span}-01")])
    return ref


def test_traceparent_continued_and_client_spans_kept(tmp_path) -> None:
    d = start_daemon(tmp_path / "daemon")
    try:
        trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
        ref = solve_with_traceparent(d, trace_id, client_span)
        # The client's own span arrives afterwards at our OTLP endpoint, as buildx sends it.
        now = time.time_ns()
        span = trace_pb2.Span(trace_id=bytes.fromhex(trace_id), span_id=bytes.fromhex(client_span),
                              name="client build", kind=trace_pb2.Span.SPAN_KIND_CLIENT,
                              start_time_unix_nano=now - 10**9, end_time_unix_nano=now)
        req = trace_service_pb2.ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(
            scope_spans=[trace_pb2.ScopeSpans(spans=[span])])])
        with unix_channel(d) as ch:
            trace_service_pb2_grpc.TraceServiceStub(ch).Export(req, timeout=10)
            control_pb2_grpc.ControlStub(ch).UpdateBuildHistory(
                control_pb2.UpdateBuildHistoryRequest(Ref=ref, Finalize=True), timeout=30)
        [rec] = records(d, Ref=ref)
        spans = [json.loads(s) for s in _json_stream(read_blob(d, rec.trace.digest))]
        assert {s["SpanContext"]["TraceID"] for s in spans} == {trace_id}
        by_name = {s["Name"]: s for s in spans}
        solve = by_name["moby.buildkit.v1.Control/Solve"]
        assert solve["Parent"]["SpanID"] == client_span and solve["SpanKind"] == 2
        assert by_name["client build"]["Parent"]["SpanID"] == "0" * 16
        mkfile = next(s for s in spans if s["Name"].startswith("mkfile /hello"))
        assert mkfile["Parent"]["SpanID"] == solve["SpanContext"]["SpanID"]
    finally:
        stop_daemon(d)


def test_spans_exported_over_otlp(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    d = start_daemon(tmp_path / "daemon")
    try:
        trace_id = secrets.token_hex(16)
        solve_with_traceparent(d, trace_id, secrets.token_hex(8))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(
                s.name == "moby.buildkit.v1.Control/Solve" for s in collector.spans):
            collector.got.wait(0.5)
        solves = [s for s in collector.spans if s.name == "moby.buildkit.v1.Control/Solve"]
        assert solves and solves[0].trace_id.hex() == trace_id
    finally:
        stop_daemon(d)
        server.stop(0)


def test_render_stubs_is_each_stub_indented_like_go() -> None:
    """The trace blob: ``json_indent`` of each stub and a newline, the same text when the stubs
    share their resource and scope (encoded once), when they do not, and for other shapes."""
    from opentelemetry.proto.common.v1 import common_pb2
    from opentelemetry.proto.resource.v1 import resource_pb2
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    from buildkitpy.gocompat import json_indent
    from buildkitpy.history import tracing

    recorder = tracing.TraceRecorder()
    provider = TracerProvider(resource=Resource.create({"service.name": "buildkitd", "x": 1.5, "é": "ü\n"}))
    provider.add_span_processor(recorder)
    tracer = provider.get_tracer("github.com/x", "1.0")
    with tracer.start_as_current_span("root") as root:
        stop = recorder.record(format(root.get_span_context().trace_id, "032x"))
        for i in range(20):
            with tracer.start_as_current_span(f"v{i} \"q\" ☃", attributes={"a": i, "b": [1, 2]}) as span:
                span.add_event("e", {"k": "v"})
    stubs = stop()
    assert stubs[0]["Resource"] is stubs[1]["Resource"]
    client = trace_pb2.ResourceSpans(
        resource=resource_pb2.Resource(attributes=[common_pb2.KeyValue(
            key="service.name", value=common_pb2.AnyValue(string_value="buildx"))]),
        scope_spans=[trace_pb2.ScopeSpans(spans=[trace_pb2.Span(trace_id=b"\1" * 16, span_id=b"\2" * 8,
                                                                name=f"c{i}") for i in range(3)])])
    stubs += [stub for _, stub in tracing.stubs_from_otlp([client])]
    stubs += [{"Name": "other order", "Resource": [], "InstrumentationLibrary": {}, "Extra": 1},
              {"Resource": [], "InstrumentationLibrary": {}}, {}]
    # the usual shape with values of other types (rendered generically, the same text)
    odd = [dict(stubs[0], SpanKind=True), dict(stubs[0], Name=None), dict(stubs[0], Events=()),
           dict(stubs[0], Status={"Description": "", "Code": "Ok"}),
           dict(stubs[0], Parent=dict(stubs[0]["Parent"], Remote=1)), dict(stubs[0], DroppedLinks=2.5)]
    stubs += odd
    text = tracing.render_stubs(stubs)
    assert text == "".join(json_indent(s) + "\n" for s in stubs)
    assert json.loads(text.split("\n}\n")[0] + "\n}")["Name"].startswith("v0")
