"""ListenBuildHistory filters and limits (BuildKit's semantics), on records built in memory."""

from __future__ import annotations

import time

import pytest

from buildkitpy.api import control_pb2
from buildkitpy.errors import InvalidArgument
from buildkitpy.history.filters import filter_events, parse_go_duration


def event(ref: str, *, started_ago: float, took: float | None, error: str = "",
          attrs: dict[str, str] | None = None) -> control_pb2.BuildHistoryEvent:
    rec = control_pb2.BuildHistoryRecord(Ref=ref, FrontendAttrs=attrs or {})
    now = time.time()
    rec.CreatedAt.FromNanoseconds(int((now - started_ago) * 1e9))
    if took is not None:
        rec.CompletedAt.FromNanoseconds(int((now - started_ago + took) * 1e9))
    if error:
        rec.error.message = error
        rec.error.code = 2
    return control_pb2.BuildHistoryEvent(record=rec)


EVENTS = [
    event("old", started_ago=7200, took=5),
    event("failed", started_ago=600, took=90, error="process did not complete"),
    event("canceled", started_ago=300, took=1, error="context canceled"),
    event("git", started_ago=60, took=2, attrs={"context": "https://github.com/o/r.git#main"}),
    event("running", started_ago=10, took=None),
]


def refs(filters: list[str], limit: int = 0) -> list[str]:
    return [e.record.Ref for e in filter_events(list(EVENTS), filters, limit)]


def test_filters() -> None:
    assert refs([]) == [e.record.Ref for e in EVENTS]
    assert refs(["status==error"]) == ["failed"]
    assert refs(["status==canceled"]) == ["canceled"]
    assert refs(["status==running"]) == ["running"]
    assert refs(["status!=completed"]) == ["failed", "canceled", "running"]
    assert refs(["ref==old", "ref==git"]) == ["old", "git"]  # several filters: any
    assert refs(["status==completed,ref~=^g"]) == ["git"]  # comma: all
    assert refs(["repository==https://github.com/o/r.git"]) == ["git"]
    assert refs(["startedAt>1h"]) == ["failed", "canceled", "git", "running"]
    assert refs(["startedAt<1h"]) == ["old"]
    assert refs(["duration>1m"]) == ["failed"]
    assert refs(["duration<=2s,status==completed"]) == ["git"]
    assert refs([], limit=2) == ["running", "git"]  # newest first


def test_bad_filters_are_clear_errors() -> None:
    with pytest.raises(InvalidArgument, match="invalid duration"):
        refs(["duration>soon"])
    with pytest.raises(InvalidArgument, match="invalid time"):
        refs(["startedAt>yesterday"])
    with pytest.raises(InvalidArgument, match="invalid limit"):
        refs([], limit=-1)
    with pytest.raises(InvalidArgument, match="failed to parse history filters"):
        refs(["ref~=("])


def test_go_durations() -> None:
    assert parse_go_duration("1h30m") == 5400
    assert parse_go_duration("1.5s") == 1.5
    assert parse_go_duration("250ms") == 0.25
    assert parse_go_duration("-5m") == -300
    assert parse_go_duration("5") is None and parse_go_duration("") is None
