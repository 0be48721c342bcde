"""OpenTelemetry traces: the daemon's spans, the client's spans, and the trace blob of a build.

The daemon's tracer provider (opentelemetry-sdk) gets two span processors: ``TraceRecorder``, which
keeps finished spans per trace id for the history record (like BuildKit's ``detect.Recorder``), and,
when the standard ``OTEL_*`` environment asks for it (``OTEL_TRACES_EXPORTER=otlp`` or an
``OTEL_EXPORTER_OTLP[_TRACES]_ENDPOINT``), an OTLP/gRPC exporter. Clients push their own spans to the
daemon's ``TraceService/Export``; ``TraceReceiver`` adds them to the recorder (and the exporter), so a
build's trace blob holds one tree: the client's command, our ``Control/Solve`` span continuing its
``traceparent``, each vertex, and exec/pull/push/export inside.

The blob format is BuildKit's (``application/vnd.buildkit.otlp.json.v0``): JSON-encoded Go
``tracetest.SpanStub`` values, one after another, which ``docker buildx history trace`` reads.
"""

from __future__ import annotations

import datetime
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from json.encoder import encode_basestring_ascii
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from buildkitpy.gocompat import json_indent

log = logging.getLogger(__name__)

TRACER_NAME = "github.com/buildkitpy/buildkitpy"
KEEP_UNLISTENED_SECONDS = 60.0
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
# Go's codes.Code names, indexed by the OTLP / Python status code (UNSET, OK, ERROR).
_STATUS_NAMES = {0: "Unset", 1: "Ok", 2: "Error"}


# The tracer of the current OpenTelemetry tracer provider, which is process-global by OTel's design
# (``trace.get_tracer_provider``), so this is no cache of a worker's state: one slot, the provider
# held with its tracer (an ``id`` of a replaced provider could be reused by a new one).
_tracer: tuple[trace.TracerProvider, trace.Tracer] | None = None


def tracer() -> trace.Tracer:
    """The daemon's tracer, made once per tracer provider (``get_tracer`` builds a new one on every
    call, which a span per vertex paid for)."""
    global _tracer
    provider = trace.get_tracer_provider()
    current = _tracer
    if current is None or current[0] is not provider:  # a replaced provider (tests): a new tracer
        current = _tracer = (provider, provider.get_tracer(TRACER_NAME))
    return current[1]


# -- span stubs (the blob's JSON) ----------------------------------------------------------------


def _go_time(ns: int) -> str:
    secs, frac = divmod(int(ns), 1_000_000_000)
    return _go_seconds(secs) + (f".{frac:09d}".rstrip("0") if frac else "") + "Z"


@functools.lru_cache(maxsize=256)
def _go_seconds(secs: int) -> str:
    """The date and time of a second (spans come by the hundred within a few seconds, and making
    a datetime and formatting it was most of turning a client's span into a stub)."""
    return datetime.datetime.fromtimestamp(secs, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _span_context(trace_id: str, span_id: str, flags: int = 1, remote: bool = False) -> dict:
    return {"TraceID": trace_id, "SpanID": span_id, "TraceFlags": f"{flags & 0xff:02x}", "TraceState": "",
            "Remote": remote}


def _value(v: object) -> dict | None:
    if isinstance(v, bool):
        return {"Type": "BOOL", "Value": v}
    if isinstance(v, int):
        return {"Type": "INT64", "Value": v}
    if isinstance(v, float):
        return {"Type": "FLOAT64", "Value": v}
    if isinstance(v, str):
        return {"Type": "STRING", "Value": v}
    if isinstance(v, (list, tuple)):
        items = list(v)
        if all(isinstance(i, bool) for i in items):
            return {"Type": "BOOLSLICE", "Value": items}
        if all(isinstance(i, int) and not isinstance(i, bool) for i in items):
            return {"Type": "INT64SLICE", "Value": items}
        if all(isinstance(i, float) for i in items):
            return {"Type": "FLOAT64SLICE", "Value": items}
        return {"Type": "STRINGSLICE", "Value": [str(i) for i in items]}
    return None


def _attributes(items: Iterable[tuple[str, object]]) -> list[dict]:
    out = []
    for k, v in items:
        val = _value(v)
        if val is not None:
            out.append({"Key": k, "Value": val})
    return out


def stub_from_sdk(span: ReadableSpan) -> dict:
    """A finished SDK span as a Go span stub."""
    ctx = span.context
    parent = span.parent
    scope = span.instrumentation_scope
    return {
        "Name": span.name,
        "SpanContext": _span_context(format(ctx.trace_id, "032x"), format(ctx.span_id, "016x"),
                                     int(ctx.trace_flags)),
        "Parent": _span_context(format(parent.trace_id, "032x"), format(parent.span_id, "016x"),
                                int(parent.trace_flags), parent.is_remote) if parent is not None
        else _span_context(_ZERO_TRACE, _ZERO_SPAN, 0),
        "SpanKind": span.kind.value + 1,  # Go counts Unspecified as 0
        "StartTime": _go_time(span.start_time or 0),
        "EndTime": _go_time(span.end_time or span.start_time or 0),
        "Attributes": _attributes((span.attributes or {}).items()),
        "Events": [{"Name": e.name, "Attributes": _attributes((e.attributes or {}).items()),
                    "DroppedAttributeCount": 0, "Time": _go_time(e.timestamp)} for e in span.events],
        "Links": [{"SpanContext": _span_context(format(lk.context.trace_id, "032x"),
                                                format(lk.context.span_id, "016x")),
                   "Attributes": _attributes((lk.attributes or {}).items()), "DroppedAttributeCount": 0}
                  for lk in span.links],
        "Status": {"Code": _STATUS_NAMES.get(span.status.status_code.value, "Unset"),
                   "Description": span.status.description or ""},
        "DroppedAttributes": 0, "DroppedEvents": 0, "DroppedLinks": 0, "ChildSpanCount": 0,
        "Resource": _resource(span.resource),
        "InstrumentationLibrary": _library(scope),
    }


# The daemon's spans share one resource and one scope: their stubs share one (read-only) value of
# each, which ``render_stubs`` then encodes once. Keyed by identity, the object kept with its value.
_SHARED: dict[tuple[str, int], tuple[object, object]] = {}


def _shared(kind: str, obj: object, make: Callable[[], object]) -> Any:
    got = _SHARED.get((kind, id(obj)))
    if got is not None and got[0] is obj:
        return got[1]
    value = make()
    if len(_SHARED) >= 64:
        _SHARED.clear()
    _SHARED[(kind, id(obj))] = (obj, value)
    return value


def _resource(resource: Resource | None) -> list[dict]:
    if not resource:
        return []
    return _shared("resource", resource, lambda: _attributes(resource.attributes.items()))


def _library(scope: Any) -> dict:
    if scope is None:
        return {"Name": "", "Version": "", "SchemaURL": "", "Attributes": None}
    return _shared("scope", scope, lambda: {"Name": scope.name, "Version": scope.version or "",
                                            "SchemaURL": "", "Attributes": None})


_TAIL = ("Resource", "InstrumentationLibrary")
# The fields of a stub as ``stub_from_sdk`` and ``stubs_from_otlp`` make them, in order.
_STUB_KEYS = ("Name", "SpanContext", "Parent", "SpanKind", "StartTime", "EndTime", "Attributes", "Events",
              "Links", "Status", "DroppedAttributes", "DroppedEvents", "DroppedLinks", "ChildSpanCount",
              "Resource", "InstrumentationLibrary")
_CONTEXT_KEYS = ("TraceID", "SpanID", "TraceFlags", "TraceState", "Remote")
_STATUS_KEYS = ("Code", "Description")


def _context_text(ctx: object) -> str | None:
    """``json_indent`` of a span context as a field of a stub, or None for another shape."""
    if type(ctx) is not dict or tuple(ctx) != _CONTEXT_KEYS:
        return None
    tid, sid, flags, state, remote = ctx.values()
    if not (type(tid) is str and type(sid) is str and type(flags) is str and type(state) is str
            and type(remote) is bool):
        return None
    enc = encode_basestring_ascii
    return (f'{{\n    "TraceID": {enc(tid)},\n    "SpanID": {enc(sid)},\n    "TraceFlags": {enc(flags)},'
            f'\n    "TraceState": {enc(state)},\n    "Remote": {"true" if remote else "false"}\n  }}')


def _list_text(items: object) -> str | None:
    if type(items) is not list:
        return None
    return "[]" if not items else json_indent(items).replace("\n", "\n  ")


def _head_text(stub: dict) -> str | None:
    """``json_indent`` of a stub of the usual shape up to its "Resource" (exclusive), made with
    templates for its fixed parts (the generic walk of every field of 500 spans was most of
    rendering a cached graph's trace); None for any other shape."""
    name, ctx, parent, kind, start, end, attrs, events, links, status, da, de, dl, cc = \
        (stub[k] for k in _STUB_KEYS[:14])
    if not (type(name) is str and type(kind) is int and type(start) is str and type(end) is str
            and type(da) is int and type(de) is int and type(dl) is int and type(cc) is int
            and type(status) is dict and tuple(status) == _STATUS_KEYS
            and type(status["Code"]) is str and type(status["Description"]) is str):
        return None
    ctx_text, parent_text = _context_text(ctx), _context_text(parent)
    attrs_text, events_text, links_text = _list_text(attrs), _list_text(events), _list_text(links)
    if ctx_text is None or parent_text is None or attrs_text is None or events_text is None \
            or links_text is None:
        return None
    enc = encode_basestring_ascii
    return (f'{{\n  "Name": {enc(name)},\n  "SpanContext": {ctx_text},\n  "Parent": {parent_text},\n'
            f'  "SpanKind": {kind},\n  "StartTime": {enc(start)},\n  "EndTime": {enc(end)},\n'
            f'  "Attributes": {attrs_text},\n  "Events": {events_text},\n  "Links": {links_text},\n'
            f'  "Status": {{\n    "Code": {enc(status["Code"])},\n    "Description": '
            f'{enc(status["Description"])}\n  }},\n  "DroppedAttributes": {da},\n  "DroppedEvents": {de},\n'
            f'  "DroppedLinks": {dl},\n  "ChildSpanCount": {cc}')


def render_stubs(stubs: list[dict]) -> str:
    """``json_indent(stub) + "\\n"`` for each stub, the same text; a Resource or
    InstrumentationLibrary value that many stubs share is encoded once (they were half of every
    span's encoding, and a cached graph of 500 steps has a span per step)."""
    done: dict[int, str] = {}  # id of a shared value -> its text, indented as a field of a stub

    def field(value: object) -> str:
        text = done.get(id(value))
        if text is None:
            text = done[id(value)] = json_indent(value).replace("\n", "\n  ")
        return text

    out: list[str] = []
    for stub in stubs:
        keys = tuple(stub)
        if len(keys) <= 2 or keys[-2:] != _TAIL:
            out.append(json_indent(stub) + "\n")
            continue
        head = _head_text(stub) if keys == _STUB_KEYS else None
        if head is None:
            head = json_indent({k: stub[k] for k in keys[:-2]})[:-2]
        out.append(f'{head},\n  "Resource": {field(stub["Resource"])},\n  '
                   f'"InstrumentationLibrary": {field(stub["InstrumentationLibrary"])}\n}}\n')
    return "".join(out)


def _any_value(v: common_pb2.AnyValue) -> object:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_any_value(i) for i in v.array_value.values]
    if kind == "kvlist_value":
        return str({kv.key: _any_value(kv.value) for kv in v.kvlist_value.values})
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind) if kind else None


def _otlp_attributes(kvs) -> list[dict]:  # noqa: ANN001 - repeated KeyValue
    return _attributes((kv.key, _any_value(kv.value)) for kv in kvs)


def stubs_from_otlp(resource_spans) -> Iterator[tuple[str, dict]]:  # noqa: ANN001 - repeated ResourceSpans
    """``(trace id, stub)`` for each span of an OTLP export request (a client's spans)."""
    for rs in resource_spans:
        resource = _otlp_attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            scope = {"Name": ss.scope.name, "Version": ss.scope.version, "SchemaURL": ss.schema_url,
                     "Attributes": None}
            for sp in ss.spans:
                trace_id = sp.trace_id.hex()
                parent = sp.parent_span_id.hex()
                yield trace_id, {
                    "Name": sp.name,
                    "SpanContext": _span_context(trace_id, sp.span_id.hex(), sp.flags or 1),
                    "Parent": _span_context(trace_id, parent, 1) if parent
                    else _span_context(_ZERO_TRACE, _ZERO_SPAN, 0),
                    "SpanKind": int(sp.kind),
                    "StartTime": _go_time(sp.start_time_unix_nano),
                    "EndTime": _go_time(sp.end_time_unix_nano),
                    "Attributes": _otlp_attributes(sp.attributes),
                    "Events": [{"Name": e.name, "Attributes": _otlp_attributes(e.attributes),
                                "DroppedAttributeCount": e.dropped_attributes_count,
                                "Time": _go_time(e.time_unix_nano)} for e in sp.events],
                    "Links": [{"SpanContext": _span_context(lk.trace_id.hex(), lk.span_id.hex()),
                               "Attributes": _otlp_attributes(lk.attributes),
                               "DroppedAttributeCount": lk.dropped_attributes_count} for lk in sp.links],
                    "Status": {"Code": _STATUS_NAMES.get(int(sp.status.code), "Unset"),
                               "Description": sp.status.message},
                    "DroppedAttributes": sp.dropped_attributes_count,
                    "DroppedEvents": sp.dropped_events_count,
                    "DroppedLinks": sp.dropped_links_count,
                    "ChildSpanCount": 0,
                    "Resource": resource,
                    "InstrumentationLibrary": scope,
                }


def _as_stub(span: dict | ReadableSpan) -> dict | None:
    if isinstance(span, dict):
        return span
    try:
        return stub_from_sdk(span)
    except Exception:  # noqa: BLE001 - tracing must never break a build
        log.debug("cannot record span %s", span.name, exc_info=True)
        return None


# -- the recorder --------------------------------------------------------------------------------


class TraceRecorder(SpanProcessor):
    """Finished spans per trace id; kept while a build listens for them, then a minute more.

    The daemon's own spans are kept as the SDK's (immutable) finished spans and turned into stubs
    only when a build takes them (``record``'s ``stop``, which the history runs in a worker thread):
    a span per vertex ends on the event loop, so ending one must stay cheap."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: dict[str, list[dict | ReadableSpan]] = {}
        self._last: dict[str, float] = {}
        self._listeners: dict[str, int] = {}
        self._closed = False
        self._next_expiry = 0.0

    def add(self, trace_id: str, stub: dict | ReadableSpan) -> None:
        with self._lock:
            if self._closed:
                return
            self._spans.setdefault(trace_id, []).append(stub)
            now = time.monotonic()
            self._last[trace_id] = now
            if now >= self._next_expiry:  # a scan of every trace, at most once a second
                self._next_expiry = now + 1.0
                self._expire(now)

    def _expire(self, now: float) -> None:
        cutoff = now - KEEP_UNLISTENED_SECONDS
        for tid in [t for t, last in self._last.items() if last < cutoff and t not in self._listeners]:
            self._spans.pop(tid, None)
            self._last.pop(tid, None)

    def record(self, trace_id: str) -> Callable[[], list[dict]]:
        with self._lock:
            self._listeners[trace_id] = self._listeners.get(trace_id, 0) + 1
        taken: list[list[dict]] = []

        def stop() -> list[dict]:
            if taken:
                return taken[0]
            with self._lock:
                kept = list(self._spans.get(trace_id, []))
                self._listeners[trace_id] -= 1
                if not self._listeners[trace_id]:
                    del self._listeners[trace_id]
            spans = [stub for s in kept if (stub := _as_stub(s)) is not None]
            taken.append(spans)
            return spans

        return stop

    # SpanProcessor
    def on_start(self, span, parent_context=None) -> None:  # noqa: ANN001
        pass

    def on_end(self, span: ReadableSpan) -> None:
        try:
            self.add(format(span.context.trace_id, "032x"), span)
        except Exception:  # noqa: BLE001 - tracing must never break a build
            log.debug("cannot record span %s", span.name, exc_info=True)

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            self._spans.clear()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class TraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """``opentelemetry.proto.collector.trace.v1.TraceService``: clients' spans, kept with their build."""

    def __init__(self, recorder: TraceRecorder, forward: Callable[[object], None] | None = None) -> None:
        self.recorder = recorder
        self.forward = forward

    async def Export(self, request, context):
        try:
            for trace_id, stub in stubs_from_otlp(request.resource_spans):
                self.recorder.add(trace_id, stub)
            if self.forward is not None:
                self.forward(request)
        except Exception:  # noqa: BLE001
            log.warning("cannot read exported client spans", exc_info=True)
        return trace_service_pb2.ExportTraceServiceResponse()


# -- setup ---------------------------------------------------------------------------------------


def otlp_requested() -> bool:
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return exporter == "otlp" or bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                                      or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def install(recorder: TraceRecorder) -> TracerProvider:
    """Attach ``recorder`` (and the OTLP exporter the environment asks for) to the process's tracer
    provider, creating it on first use."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider(resource=Resource.create({"service.name": "buildkitd"}))
        trace.set_tracer_provider(provider)
        if otlp_requested():
            _add_otlp_exporter(provider)
    provider.add_span_processor(recorder)
    return provider


def _add_otlp_exporter(provider: TracerProvider) -> None:
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                              os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"))
    if protocol != "grpc":
        log.warning("OTLP protocol %r is not supported (only grpc); traces are not exported", protocol)
        return
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("opentelemetry-exporter-otlp-proto-grpc is not installed; traces are not exported")
        return
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    log.info("exporting traces over OTLP to %s", os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
             or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "the default endpoint")


# -- spans of a build ----------------------------------------------------------------------------

_propagator = TraceContextTextMapPropagator()


class BuildSpans:
    """The ``Control/Solve`` span of each running build, so work done elsewhere for that build (a
    client-side frontend's LLBBridge calls run the solver in other tasks) joins its tree."""

    def __init__(self) -> None:
        self._builds: dict[str, trace.Span] = {}

    @contextmanager
    def solve(self, ref: str, metadata: Iterable[tuple[str, str | bytes]]) -> Iterator[trace.Span]:
        """The server span of one Solve call, continuing the client's ``traceparent``."""
        carrier = {k.lower(): v if isinstance(v, str) else v.decode(errors="replace") for k, v in metadata}
        parent = _propagator.extract(carrier)
        with tracer().start_as_current_span("moby.buildkit.v1.Control/Solve", context=parent,
                                            kind=trace.SpanKind.SERVER,
                                            attributes={"rpc.system": "grpc",
                                                        "rpc.service": "moby.buildkit.v1.Control",
                                                        "rpc.method": "Solve",
                                                        "buildkit.ref": ref}) as span:
            self._builds[ref] = span
            try:
                yield span
            finally:
                if self._builds.get(ref) is span:
                    del self._builds[ref]

    def parent_context(self, ref: str) -> otel_context.Context | None:
        span = self._builds.get(ref)
        return trace.set_span_in_context(span) if span is not None else None
