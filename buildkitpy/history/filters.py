"""``BuildHistoryRequest.Filter`` and ``Limit``, with BuildKit's semantics.

Each filter string is a comma-separated list of conditions that must all hold; a record passes if
any filter string matches. Conditions are containerd filter expressions on ``ref``, ``status``
(``running``, ``completed``, ``error``, ``canceled``) and ``repository`` (``==``, ``!=``, ``~=``
regular expression, or a bare field name meaning "is set"), or time comparisons
``startedAt``/``completedAt`` (a Go duration meaning "that long ago", or RFC 3339) and ``duration``
with ``>``, ``>=``, ``<``, ``<=``. ``Limit`` keeps the newest records (by start time).
"""

from __future__ import annotations

import csv
import datetime
import re
import time
from collections.abc import Callable
from urllib.parse import urlparse

from buildkitpy.api import control_pb2
from buildkitpy.errors import InvalidArgument

Event = control_pb2.BuildHistoryEvent
Predicate = Callable[[control_pb2.BuildHistoryRecord], bool]

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_go_duration(text: str) -> float | None:
    """Seconds of a Go duration string (``90s``, ``1h30m``, ``-5m``), or None if it is not one."""
    s = text.strip()
    sign = -1.0 if s.startswith("-") else 1.0
    s = s.lstrip("+-")
    if s == "0":
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(s):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        return None
    return sign * total


def _seconds(ts) -> float:  # noqa: ANN001 - google.protobuf.Timestamp
    return ts.ToNanoseconds() / 1e9


def record_status(rec: control_pb2.BuildHistoryRecord) -> str:
    if not rec.HasField("CompletedAt"):
        return "running"
    if rec.HasField("error"):
        return "canceled" if "context canceled" in rec.error.message or rec.error.code == 1 else "error"
    return "completed"


def _repository(rec: control_pb2.BuildHistoryRecord) -> str | None:
    if "vcs:source" in rec.FrontendAttrs:
        return rec.FrontendAttrs["vcs:source"]
    ctx = rec.FrontendAttrs.get("context")
    if ctx and ("://" in ctx or ctx.startswith("git@")):
        if ctx.startswith("git@"):
            return ctx.split("#", 1)[0]
        url = urlparse(ctx)
        return url._replace(fragment="").geturl()
    return None


def _field(rec: control_pb2.BuildHistoryRecord, name: str) -> str | None:
    if name == "ref":
        return rec.Ref or None
    if name == "status":
        return record_status(rec)
    if name == "repository":
        return _repository(rec)
    return None


def _time_condition(cond: str) -> Predicate | None:
    for op in (">=", "<=", ">", "<"):
        if op in cond:
            key, value = cond.split(op, 1)
            break
    else:
        return None
    key, value = key.strip(), value.strip()
    if key in ("startedAt", "completedAt"):
        ago = parse_go_duration(value)
        if ago is not None:
            ref = float(int(time.time() - ago))
        else:
            try:
                ref = float(int(datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()))
            except ValueError:
                raise InvalidArgument(f"invalid time {value}") from None
    elif key == "duration":
        d = parse_go_duration(value)
        if d is None:
            raise InvalidArgument(f"invalid duration {value}")
        ref = d
    else:
        return None

    def value_of(rec: control_pb2.BuildHistoryRecord) -> float:
        if key == "startedAt":
            return float(int(_seconds(rec.CreatedAt)))
        if not rec.HasField("CompletedAt"):
            return 0.0
        if key == "completedAt":
            return float(int(_seconds(rec.CompletedAt)))
        return _seconds(rec.CompletedAt) - _seconds(rec.CreatedAt)

    compare = {">=": float.__ge__, "<=": float.__le__, ">": float.__gt__, "<": float.__lt__}[op]
    return lambda rec: compare(value_of(rec), ref)


def _unquote(v: str) -> str:
    v = v.strip()
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'/":
        return v[1:-1]
    return v


def _static_condition(cond: str, original: str) -> Predicate:
    for op in ("==", "!=", "~="):
        if op in cond:
            key, value = cond.split(op, 1)
            key, value = key.strip(), _unquote(value)
            break
    else:
        key, op, value = cond.strip(), "", ""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", key):
        raise InvalidArgument(f"failed to parse history filters [{original}]: invalid field {key!r}")
    if op == "~=":
        try:
            pattern = re.compile(value)
        except re.error as exc:
            raise InvalidArgument(f"failed to parse history filters [{original}]: {exc}") from None
        return lambda rec: (v := _field(rec, key)) is not None and pattern.search(v) is not None
    if op == "==":
        return lambda rec: _field(rec, key) == value
    if op == "!=":
        return lambda rec: _field(rec, key) != value
    return lambda rec: _field(rec, key) is not None


def parse_filter(text: str) -> list[Predicate]:
    try:
        fields = next(csv.reader([text], skipinitialspace=True), [])
    except csv.Error as exc:
        raise InvalidArgument(f"invalid history filter {text!r}: {exc}") from None
    out: list[Predicate] = []
    for cond in fields:
        if not cond.strip():
            continue
        out.append(_time_condition(cond) or _static_condition(cond, text))
    return out


def filter_events(events: list[Event], filters: list[str], limit: int) -> list[Event]:
    if limit < 0:
        raise InvalidArgument(f"invalid limit {limit}")
    parsed = [parse_filter(f) for f in filters if f.strip()]
    if parsed:
        events = [ev for ev in events if any(all(p(ev.record) for p in conds) for conds in parsed)]
    if limit:
        events = sorted(events, key=lambda ev: ev.record.CreatedAt.ToNanoseconds(), reverse=True)[:limit]
    return events
