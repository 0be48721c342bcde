"""The logs blob of a build record (``application/vnd.buildkit.status.v0``).

BuildKit's format: a sequence of ``StatusResponse`` messages, each preceded by its length as a
little-endian uint32. ``Control.Status`` on a completed build replays it, which is what
``docker buildx history logs`` prints.

Unlike BuildKit, the logs we store are complete: a step whose full output was kept on disk
(``solver.steplog``) has its clipped live log messages replaced by the full output, with the
original streams and write times, at the point where its first live log message was.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from google.protobuf.timestamp_pb2 import Timestamp

from buildkitpy.api import control_pb2
from buildkitpy.solver.steplog import read_full_log

MEDIA_TYPE = "application/vnd.buildkit.status.v0"
_LEN = struct.Struct("<I")
MAX_LOG_MESSAGE = 1 << 20


@dataclass
class StatusSummary:
    digest: str
    size: int
    cached_steps: int
    completed_steps: int
    total_steps: int
    warnings: int


def _full_log_messages(path: Path, vertex: str) -> Iterator[control_pb2.StatusResponse]:
    for stream, ts_ns, data in read_full_log(path, MAX_LOG_MESSAGE):
        ts = Timestamp()
        ts.FromNanoseconds(ts_ns)
        yield control_pb2.StatusResponse(logs=[control_pb2.VertexLog(vertex=vertex, timestamp=ts,
                                                                     stream=stream, msg=data)])


def with_full_logs(messages: Iterable[control_pb2.StatusResponse],
                   log_dir: Path | None) -> Iterator[control_pb2.StatusResponse]:
    """``messages`` with each step's clipped logs replaced by its complete output from ``log_dir``."""
    emitted: set[str] = set()

    def full_path(vertex: str) -> Path | None:
        if log_dir is None:
            return None
        p = log_dir / (vertex.removeprefix("sha256:") + ".log")
        return p if p.is_file() else None

    for msg in messages:
        if not msg.logs:
            yield msg
            continue
        kept = []
        replaced: list[str] = []
        for lg in msg.logs:
            path = full_path(lg.vertex)
            if path is None:
                kept.append(lg)
            elif lg.vertex not in emitted:
                emitted.add(lg.vertex)
                replaced.append(lg.vertex)
        if kept or msg.vertexes or msg.statuses or msg.warnings:
            out = control_pb2.StatusResponse()
            out.CopyFrom(msg)
            del out.logs[:]
            out.logs.extend(kept)
            yield out
        for vertex in replaced:
            path = full_path(vertex)
            assert path is not None
            yield from _full_log_messages(path, vertex)


def write_status(out: BinaryIO, messages: Iterable[control_pb2.StatusResponse]) -> StatusSummary:
    """Write ``messages`` in the blob format to ``out``; digest, size and BuildKit's step counts."""
    h = hashlib.sha256()
    size = 0
    cached: set[str] = set()
    completed: set[str] = set()
    seen: set[str] = set()
    warnings = 0
    for msg in messages:
        warnings += len(msg.warnings)
        for v in msg.vertexes:
            seen.add(v.digest)
            if v.cached:
                cached.add(v.digest)
            if v.HasField("completed"):
                completed.add(v.digest)
        data = msg.SerializeToString()
        frame = _LEN.pack(len(data)) + data
        out.write(frame)
        h.update(frame)
        size += len(frame)
    return StatusSummary(digest="sha256:" + h.hexdigest(), size=size, cached_steps=len(cached),
                         completed_steps=len(completed), total_steps=len(seen), warnings=warnings)


def read_status(f: BinaryIO) -> Iterator[control_pb2.StatusResponse]:
    """The messages of a logs blob."""
    while True:
        head = f.read(_LEN.size)
        if len(head) < _LEN.size:
            return
        (n,) = _LEN.unpack(head)
        data = f.read(n)
        if len(data) < n:
            return
        yield control_pb2.StatusResponse.FromString(data)
