"""Progress printers fed with ``StatusResponse`` messages, like BuildKit's progressui.

- ``plain``: ``#1 [internal] load build definition from Dockerfile`` / ``#1 DONE 0.1s`` /
  ``#3 0.123 hello`` / ``#3 ERROR: ...``, with the failing steps' last log lines at the end.
- ``tty``: a redrawing ``[+] Building`` view (a simpler layout than BuildKit's, same information).
- ``rawjson``: one JSON object per message, field names as Go's ``client.SolveStatus``.
- ``quiet``: nothing.

``auto`` picks tty when the stream is a terminal, else plain (``BUILDKIT_PROGRESS`` overrides
``auto`` as in buildctl). Every printer has ``update(msg)`` and ``done()``.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol, TextIO

from google.protobuf.timestamp_pb2 import Timestamp

from buildkitpy.api import control_pb2
from buildkitpy.client.textformat import format_bytes, format_rfc3339_nano

MODES = ("auto", "plain", "tty", "rawjson", "quiet")
CANCELED_SUFFIX = "context canceled"

# The plain printer does not reprint a running status until it moved 5% or 5 s passed.
MIN_PROGRESS_DELTA = 0.05
MIN_TIME_DELTA_NS = 5_000_000_000
# Another step that waited this long for attention gets printed even if the current one is busy.
MAX_DELAY_NS = 10_000_000_000
LOGS_BUFFER_SIZE = 10


class ProgressPrinter(Protocol):
    def update(self, msg: control_pb2.StatusResponse) -> None: ...

    def done(self) -> None: ...


def make_printer(mode: str, out: TextIO) -> ProgressPrinter:
    """A printer for ``--progress`` ``mode``; raises ValueError for an unknown mode and for
    ``tty`` when ``out`` is not a terminal (buildctl: "failed to get console")."""
    if mode == "auto" and os.environ.get("BUILDKIT_PROGRESS"):
        mode = os.environ["BUILDKIT_PROGRESS"]
    if mode in ("auto", "tty", ""):
        if _is_tty(out):
            return TTYPrinter(out)
        if mode == "tty":
            raise ValueError("failed to get console: output is not a terminal")
        mode = "plain"
    if mode == "plain":
        return PlainPrinter(out)
    if mode == "rawjson":
        return RawJSONPrinter(out)
    if mode == "quiet":
        return QuietPrinter()
    raise ValueError(f"invalid progress mode {mode}")


def _is_tty(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


def _ns(ts: Timestamp) -> int:
    return ts.seconds * 1_000_000_000 + ts.nanos


# -- the shared model of a build's steps ---------------------------------------------------------

@dataclass
class _Status:
    id: str
    current: int = 0
    total: int = 0
    timestamp: int = 0
    started: int | None = None
    completed: int | None = None


@dataclass
class _Step:
    """What we know about one vertex: its latest state, intervals, statuses and unprinted logs."""

    digest: str
    name: str = ""
    cached: bool = False
    error: str = ""
    index: int = 0                      # the "#N" number, assigned when first printed
    intervals: dict[int, int | None] = field(default_factory=dict)   # start ns → stop ns
    statuses: list[_Status] = field(default_factory=list)
    statuses_by_id: dict[str, _Status] = field(default_factory=dict)
    status_updates: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)
    warnings_printed: int = 0
    logs: list[str] = field(default_factory=list)      # complete or partial lines not yet printed
    logs_partial: bool = False
    logs_offset: int = 0
    last_logs: deque = field(default_factory=lambda: deque(maxlen=LOGS_BUFFER_SIZE))
    all_logs: list[str] = field(default_factory=list)  # tty mode keeps every line
    prev: tuple | None = None
    pending_since: int | None = None    # monotonic ns of the first unprinted update

    def merged_intervals(self) -> list[tuple[int, int | None]]:
        ivals = sorted(self.intervals.items())
        merged: list[tuple[int, int | None]] = []
        for start, stop in ivals:
            if merged:
                cur_start, cur_stop = merged[-1]
                if cur_stop is None:
                    break
                if start <= cur_stop:
                    merged[-1] = (cur_start, None if stop is None else max(cur_stop, stop))
                    continue
            merged.append((start, stop))
        return merged

    @property
    def started(self) -> bool:
        return bool(self.intervals)

    @property
    def completed(self) -> bool:
        merged = self.merged_intervals()
        return bool(merged) and merged[-1][1] is not None

    def last_start(self) -> int:
        merged = self.merged_intervals()
        return merged[-1][0] if merged else 0

    def duration_s(self, now_ns: int) -> float:
        return sum(((stop if stop is not None else now_ns) - start) / 1e9
                   for start, stop in self.merged_intervals())


class _Trace:
    """Folds StatusResponse messages into steps, remembering which steps changed."""

    def __init__(self) -> None:
        self.steps: dict[str, _Step] = {}
        self.order: list[_Step] = []       # in the order they started
        self.updates: dict[str, None] = {}  # insertion-ordered set of changed digests
        self.start_ns: int | None = None

    def update(self, msg: control_pb2.StatusResponse) -> None:
        now = time.monotonic_ns()
        for v in msg.vertexes:
            step = self.steps.get(v.digest)
            if step is None:
                step = self.steps[v.digest] = _Step(v.digest)
            was_started = step.started
            has_start = v.HasField("started")
            if has_start:
                snapshot = (v.name, _ns(v.started),
                            _ns(v.completed) if v.HasField("completed") else None, v.cached, v.error)
                if snapshot != step.prev:
                    self._touch(step, now)
                step.prev = snapshot
                if self.start_ns is None:
                    self.start_ns = _ns(v.started)
            if not was_started or has_start:
                step.name, step.cached, step.error = v.name, v.cached, v.error
            if has_start:
                step.intervals[_ns(v.started)] = _ns(v.completed) if v.HasField("completed") else None
                if not was_started:
                    self.order.append(step)
        for s in msg.statuses:
            step = self.steps.get(s.vertex)
            if step is None:
                continue
            st = step.statuses_by_id.get(s.ID)
            if st is None:
                st = step.statuses_by_id[s.ID] = _Status(s.ID)
            if s.HasField("started") and st.started is None:
                step.statuses.append(st)
            st.current, st.total, st.timestamp = s.current, s.total, _ns(s.timestamp)
            st.started = _ns(s.started) if s.HasField("started") else None
            st.completed = _ns(s.completed) if s.HasField("completed") else None
            step.status_updates.add(s.ID)
            self._touch(step, now)
        for w in msg.warnings:
            step = self.steps.get(w.vertex)
            if step is None:
                continue
            step.warnings.append(w.short.decode(errors="replace"))
            self._touch(step, now)
        for log in msg.logs:
            step = self.steps.get(log.vertex)
            if step is None:
                continue
            self._add_log(step, log)
            self._touch(step, now)

    def _touch(self, step: _Step, now: int) -> None:
        if step.pending_since is None:
            step.pending_since = now
        self.updates[step.digest] = None

    @staticmethod
    def _add_log(step: _Step, log: control_pb2.VertexLog) -> None:
        data = log.msg.decode(errors="replace")
        if not data:
            return
        pieces = data.split("\n")
        complete = pieces[-1] == ""
        if complete:
            pieces.pop()
        for i, piece in enumerate(pieces):
            if i == 0 and step.logs_partial and step.logs:
                step.logs[-1] += piece
                step.all_logs[-1] += piece
                continue
            sec = max(0, _ns(log.timestamp) - step.last_start()) / 1e9 if step.started else 0.0
            prec = 3 if sec < 10 else 2 if sec < 100 else 1
            line = f"{sec:.{prec}f} {piece}"
            step.logs.append(line)
            step.all_logs.append(line)
        step.logs_partial = not complete

    def failed_steps(self) -> list[_Step]:
        return [s for s in self.order if s.error and not s.error.endswith(CANCELED_SUFFIX)]


# -- plain ---------------------------------------------------------------------------------------

class PlainPrinter:
    """BuildKit's plain text output. One step is "current"; its lines are printed as they come,
    other running steps wait (and get ``#N ...`` continuation markers when attention moves)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.trace = _Trace()
        self._current: str = ""
        self._next_index = 0
        self._first = True
        self._last_printed: dict[str, tuple[int, int]] = {}  # status id → (current, timestamp)

    def update(self, msg: control_pb2.StatusResponse) -> None:
        self.trace.update(msg)
        self._print()
        self.out.flush()

    def done(self) -> None:
        self._print()
        _print_error_logs(self.trace, self.out, keep_all=False)
        self.out.flush()

    def _w(self, text: str) -> None:
        self.out.write(text)

    def _print(self) -> None:
        t = self.trace
        completed: list[str] = []
        rest: list[str] = []
        for dgst in list(t.updates):
            step = t.steps.get(dgst)
            if step is None or not step.started:
                continue
            (completed if step.completed else rest).append(dgst)
        current = self._current
        if current in completed:
            self._print_step(current)
        completed.sort(key=lambda d: t.steps[d].merged_intervals()[-1][1] or 0)
        for dgst in completed:
            if dgst != current:
                self._print_step(dgst)
        if not rest:
            cur = t.steps.get(self._current)
            if cur is not None and cur.started and not cur.completed:
                return
            for step in t.order:  # make any open step the current one
                if step.started and not step.completed:
                    self._print_step(step.digest)
                    return
            return
        if self._current in rest:
            self._print_step(self._current)
            rest.remove(self._current)
        if not rest:
            return
        now = time.monotonic_ns()
        cur = t.steps.get(self._current)
        if not self._current or cur is None or cur.completed:
            self._print_step(max(rest, key=lambda d: now - (t.steps[d].pending_since or now)))
            return
        for dgst in rest:  # a step that waited too long gets a turn
            since = t.steps[dgst].pending_since
            if since is not None and now - since > MAX_DELAY_NS:
                self._print_step(dgst)
                return

    def _print_step(self, dgst: str) -> None:
        t = self.trace
        step = t.steps[dgst]
        if step.index == 0:
            self._next_index += 1
            step.index = self._next_index
        if dgst != self._current:
            if self._current:
                old = t.steps[self._current]
                if old.logs_partial:
                    self._w("\n")
                old.logs_offset = 0
                self._w(f"#{old.index} ...\n")
            if not self._first:
                self._w("\n")
            self._first = False
            self._w(f"#{step.index} {step.name}\n")

        open_status = False
        for st in step.statuses:
            if st.id not in step.status_updates:
                continue
            last = self._last_printed.get(st.id)
            if last is not None and st.completed is None:
                delta = (st.current - last[0]) / st.total if st.total > 0 else 0.0
                if delta < MIN_PROGRESS_DELTA and st.timestamp - last[1] < MIN_TIME_DELTA_NS:
                    continue
            self._last_printed[st.id] = (st.current, st.timestamp)
            size = ""
            if st.total:
                size = f" {format_bytes(st.current)} / {format_bytes(st.total)}"
            elif st.current:
                size = f" {format_bytes(st.current)}"
            tm = ""
            end = st.completed if st.completed is not None else st.timestamp
            if st.started is not None and (end - st.started) / 1e9 > 0.01:
                tm = f" {(end - st.started) / 1e9:.1f}s"
            if st.completed is not None:
                tm += " done"
            else:
                open_status = True
            self._w(f"#{step.index} {st.id}{size}{tm}\n")
        step.status_updates.clear()

        for short in step.warnings[step.warnings_printed:]:
            self._w(f"#{step.index} WARN: {short}\n")
        step.warnings_printed = len(step.warnings)

        for i, line in enumerate(step.logs):
            if i == 0 and step.logs_offset:
                self._w(line[step.logs_offset:])
            else:
                self._w(f"#{step.index} {line}")
            if i != len(step.logs) - 1 or not step.logs_partial:
                self._w("\n")
                step.last_logs.append(line)
        if step.logs:
            if step.logs_partial:
                step.logs = step.logs[-1:]
                step.logs_offset = len(step.logs[0])
            else:
                step.logs, step.logs_offset = [], 0

        self._current = dgst
        if step.completed and not open_status:
            self._current = ""
            if step.logs_partial:
                self._w("\n")
                if step.logs:
                    step.last_logs.append(step.logs[-1])
            if step.error:
                if step.error.endswith(CANCELED_SUFFIX):
                    self._w(f"#{step.index} CANCELED\n")
                else:
                    self._w(f"#{step.index} ERROR: {step.error}\n")
            elif step.cached:
                self._w(f"#{step.index} CACHED\n")
            else:
                tm = f" {step.duration_s(0):.1f}s" if step.intervals else ""
                self._w(f"#{step.index} DONE{tm}\n")
        step.pending_since = None
        self.trace.updates.pop(dgst, None)


def _print_error_logs(trace: _Trace, out: TextIO, *, keep_all: bool) -> None:
    """The ``------ > step:`` block with the failing steps' last log lines."""
    for step in trace.failed_steps():
        out.write("------\n")
        out.write(f" > {step.name}:\n")
        lines = step.all_logs if keep_all else list(step.last_logs)
        for line in lines:
            out.write(line + "\n")
        out.write("------\n")


# -- tty -----------------------------------------------------------------------------------------

class TTYPrinter:
    """A redrawing view: a header with elapsed time and step counts, one line per started step
    (plus its running statuses), redrawn in place with ANSI cursor movement."""

    def __init__(self, out: TextIO, *, min_interval: float = 0.1) -> None:
        self.out = out
        self.trace = _Trace()
        self._lines_drawn = 0
        self._started = time.monotonic()
        self._min_interval = min_interval
        self._last_draw = 0.0

    def update(self, msg: control_pb2.StatusResponse) -> None:
        self.trace.update(msg)
        self.trace.updates.clear()
        now = time.monotonic()
        if now - self._last_draw >= self._min_interval:
            self._draw(final=False)
            self._last_draw = now

    def done(self) -> None:
        self._draw(final=True)
        _print_error_logs(self.trace, self.out, keep_all=True)
        self.out.flush()

    def _draw(self, *, final: bool) -> None:
        try:
            width = os.get_terminal_size(self.out.fileno()).columns or 80
        except (OSError, ValueError, AttributeError):
            width = 80
        lines = self._render(width, final=final)
        buf = []
        if self._lines_drawn:
            buf.append(f"\x1b[{self._lines_drawn}A\r")
        for line in lines:
            buf.append("\x1b[2K" + line + "\n")
        self.out.write("".join(buf))
        self.out.flush()
        self._lines_drawn = len(lines)

    def _render(self, width: int, *, final: bool) -> list[str]:
        steps = self.trace.order
        total = len(self.trace.steps)
        done = sum(1 for s in self.trace.steps.values() if s.completed)
        elapsed = time.monotonic() - self._started
        state = " FINISHED" if final and total and done == total else ""
        lines = [f"[+] Building {elapsed:.1f}s ({done}/{total}){state}"]
        now_ns = time.time_ns()
        for step in steps:
            prefix = ""
            if step.error:
                prefix = "CANCELED " if step.error.endswith(CANCELED_SUFFIX) else "ERROR "
            if step.cached:
                prefix = "CACHED " + prefix
            dur = f"{step.duration_s(now_ns):.1f}s"
            lines.append(_fit(f" => {prefix}{step.name.replace(chr(9), ' ')}", dur, width))
            for st in step.statuses:
                if st.completed is not None and not final and st is not step.statuses[-1]:
                    continue
                size = ""
                if st.total:
                    size = f" {format_bytes(st.current)} / {format_bytes(st.total)}"
                elif st.current:
                    size = f" {format_bytes(st.current)}"
                end = st.completed if st.completed is not None else now_ns
                sdur = f"{max(0, end - (st.started or end)) / 1e9:.1f}s"
                lines.append(_fit(f" => => {st.id}{size}", sdur, width))
            for short in step.warnings:
                lines.append(_fit(f" => WARN: {short}", "", width))
            if not step.completed and step.all_logs:
                for log in step.all_logs[-6:]:
                    lines.append(_fit(f" => > {log}", "", width))
        return lines


def _fit(text: str, right: str, width: int) -> str:
    room = max(10, width - len(right) - 1)
    if len(text) > room:
        text = text[: room - 3] + "..."
    return text + " " * (width - len(text) - len(right)) + right if right else text


# -- rawjson -------------------------------------------------------------------------------------

class RawJSONPrinter:
    """One JSON object per StatusResponse, shaped like Go's ``client.SolveStatus``."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def update(self, msg: control_pb2.StatusResponse) -> None:
        self.out.write(go_json_dumps(solve_status_json(msg)) + "\n")
        self.out.flush()

    def done(self) -> None:
        self.out.flush()


class QuietPrinter:
    def update(self, msg: control_pb2.StatusResponse) -> None:
        pass

    def done(self) -> None:
        pass


def go_json_dumps(value: object) -> str:
    """JSON as Go's encoder writes it: compact, with <, > and & escaped."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _position_json(p) -> dict:
    out: dict = {}
    if p.line:
        out["line"] = p.line
    if p.character:
        out["character"] = p.character
    return out


def _range_json(r) -> dict:
    out: dict = {}
    if r.HasField("start"):
        out["start"] = _position_json(r.start)
    if r.HasField("end"):
        out["end"] = _position_json(r.end)
    return out


def _source_info_json(info) -> dict:
    out: dict = {}
    if info.filename:
        out["filename"] = info.filename
    if info.data:
        out["data"] = _b64(info.data)
    if info.language:
        out["language"] = info.language
    return out


def solve_status_json(msg: control_pb2.StatusResponse) -> dict:
    """The Go JSON form (``client.SolveStatus``) of one StatusResponse."""
    out: dict = {}
    if msg.vertexes:
        vertexes = []
        for v in msg.vertexes:
            d: dict = {}
            if v.digest:
                d["digest"] = v.digest
            if v.inputs:
                d["inputs"] = list(v.inputs)
            if v.name:
                d["name"] = v.name
            if v.HasField("started"):
                d["started"] = format_rfc3339_nano(v.started)
            if v.HasField("completed"):
                d["completed"] = format_rfc3339_nano(v.completed)
            if v.cached:
                d["cached"] = True
            if v.error:
                d["error"] = v.error
            if v.HasField("progressGroup"):
                g: dict = {}
                if v.progressGroup.id:
                    g["id"] = v.progressGroup.id
                if v.progressGroup.name:
                    g["name"] = v.progressGroup.name
                if v.progressGroup.weak:
                    g["weak"] = True
                d["progressGroup"] = g
            vertexes.append(d)
        out["vertexes"] = vertexes
    if msg.statuses:
        statuses = []
        for s in msg.statuses:
            d = {"id": s.ID}
            if s.vertex:
                d["vertex"] = s.vertex
            if s.name:
                d["name"] = s.name
            if s.total:
                d["total"] = s.total
            d["current"] = s.current
            d["timestamp"] = format_rfc3339_nano(s.timestamp)
            if s.HasField("started"):
                d["started"] = format_rfc3339_nano(s.started)
            if s.HasField("completed"):
                d["completed"] = format_rfc3339_nano(s.completed)
            statuses.append(d)
        out["statuses"] = statuses
    if msg.logs:
        logs = []
        for log in msg.logs:
            d = {}
            if log.vertex:
                d["vertex"] = log.vertex
            if log.stream:
                d["stream"] = log.stream
            d["data"] = _b64(log.msg) if log.msg else None
            d["timestamp"] = format_rfc3339_nano(log.timestamp)
            logs.append(d)
        out["logs"] = logs
    if msg.warnings:
        warnings = []
        for w in msg.warnings:
            d = {}
            if w.vertex:
                d["vertex"] = w.vertex
            if w.level:
                d["level"] = w.level
            if w.short:
                d["short"] = _b64(w.short)
            if w.detail:
                d["detail"] = [_b64(x) for x in w.detail]
            if w.url:
                d["url"] = w.url
            if w.HasField("info"):
                d["sourceInfo"] = _source_info_json(w.info)
            if w.ranges:
                d["range"] = [_range_json(r) for r in w.ranges]
            warnings.append(d)
        out["warnings"] = warnings
    return out
