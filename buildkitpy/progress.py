"""A build's progress: what ``Control.Status`` streams to clients.

The solver, exporters and session transfers report vertexes, statuses, logs and warnings here. A
``ProgressBus`` keeps the whole history so a ``Status`` call that arrives late (or after the build
finished) still sees everything, then follows live updates until the bus closes.

Reporting methods are thread-safe (executor log pumps and file copies run in worker threads).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator

from google.protobuf.timestamp_pb2 import Timestamp

from buildkitpy.api import control_pb2, ops_pb2

STDOUT = 1
STDERR = 2

# Clients split nothing; BuildKit caps a single VertexLog message near 1 MiB, so do we.
MAX_LOG_CHUNK = 1 << 20
# A batched subscriber's messages: at most this many updates, and this many bytes (a log chunk
# alone is up to MAX_LOG_CHUNK; gRPC's default limit is 4 MiB).
MAX_BATCH_MESSAGES = 1000
MAX_BATCH_BYTES = 2 << 20


def now_timestamp() -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(time.time_ns())
    return ts


class ProgressBus:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._history: list[control_pb2.StatusResponse] = []
        self._subscribers: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = []
        self._vertexes: dict[str, control_pb2.Vertex] = {}
        self._status_started: dict[tuple[str, str], Timestamp] = {}
        self._closed = False

    # -- reporting -------------------------------------------------------------------------------

    def vertex(self, digest: str, name: str | None = None, inputs: Iterable[str] | None = None,
               *, cached: bool | None = None, started: bool = False, completed: bool = False,
               error: str | None = None, progress_group: object | None = None) -> None:
        """Create or update a vertex and publish its new state."""
        with self._lock:
            v = self._vertexes.get(digest)
            if v is None:
                v = control_pb2.Vertex(digest=digest)
                self._vertexes[digest] = v
            if name is not None:
                v.name = name
            if inputs is not None:
                del v.inputs[:]
                v.inputs.extend(inputs)
            if cached is not None:
                v.cached = cached
            if started and not v.HasField("started"):
                v.started.CopyFrom(now_timestamp())
            if completed:
                if not v.HasField("started"):
                    v.started.CopyFrom(now_timestamp())
                v.completed.CopyFrom(now_timestamp())
            if error is not None:
                v.error = error
            if progress_group is not None:
                v.progressGroup.CopyFrom(progress_group)
            msg = control_pb2.StatusResponse(vertexes=[v])
        self._publish(msg)

    def status(self, vertex: str, status_id: str, *, name: str = "", current: int = 0, total: int = 0,
               started: bool = True, completed: bool = False) -> None:
        ts = now_timestamp()
        vs = control_pb2.VertexStatus(ID=status_id, vertex=vertex, name=name, current=current,
                                      total=total, timestamp=ts)
        if started or completed:
            with self._lock:
                first = self._status_started.setdefault((vertex, status_id), ts)
            vs.started.CopyFrom(first)
        if completed:
            vs.completed.CopyFrom(ts)
        self._publish(control_pb2.StatusResponse(statuses=[vs]))

    def log(self, vertex: str, stream: int, data: bytes) -> None:
        for off in range(0, len(data), MAX_LOG_CHUNK):
            chunk = data[off:off + MAX_LOG_CHUNK]
            self._publish(control_pb2.StatusResponse(logs=[control_pb2.VertexLog(
                vertex=vertex, timestamp=now_timestamp(), stream=stream, msg=chunk)]))

    def warning(self, vertex: str, short: str, detail: Iterable[bytes] = (), *, level: int = 1,
                url: str = "", info: ops_pb2.SourceInfo | None = None,
                ranges: Iterable[ops_pb2.Range] = ()) -> None:
        """A warning for ``vertex``; ``info``/``ranges`` locate it in a source file (a Dockerfile)."""
        self._publish(control_pb2.StatusResponse(warnings=[control_pb2.VertexWarning(
            vertex=vertex, level=level, short=short.encode(), detail=list(detail), url=url, info=info,
            ranges=list(ranges))]))

    def close(self) -> None:
        """No more updates: subscribers drain what is queued and finish."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            subscribers = list(self._subscribers)
        for loop, queue in subscribers:
            _put(loop, queue, None)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- consuming -------------------------------------------------------------------------------

    async def subscribe(self, *, batch: bool = False) -> AsyncIterator[control_pb2.StatusResponse]:
        """The history so far, then live updates until ``close``. With ``batch``, the updates
        ready at once come merged into one message (in order; a client reads each list in turn),
        as BuildKit's Status sends them: a cached 500-step build made a gRPC message per step."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            backlog = list(self._history)
            closed = self._closed
            if not closed:
                self._subscribers.append((loop, queue))
        try:
            if batch:
                for merged in _merged(backlog):
                    yield merged
            else:
                for msg in backlog:
                    yield msg
            if closed:
                return
            while True:
                msg = await queue.get()
                if msg is None:
                    return
                if batch:
                    ready = [msg]
                    while not queue.empty() and len(ready) < MAX_BATCH_MESSAGES:
                        ready.append(queue.get_nowait())
                    end = ready[-1] is None
                    for merged in _merged([m for m in ready if m is not None]):
                        yield merged
                    if end:
                        return
                else:
                    yield msg
        finally:
            with self._lock:
                if (loop, queue) in self._subscribers:
                    self._subscribers.remove((loop, queue))

    def _publish(self, msg: control_pb2.StatusResponse) -> None:
        with self._lock:
            if self._closed:
                return
            self._history.append(msg)
            subscribers = list(self._subscribers)
        for loop, queue in subscribers:
            _put(loop, queue, msg)


def _merged(msgs: list[control_pb2.StatusResponse]) -> Iterator[control_pb2.StatusResponse]:
    """``msgs`` merged in order into as few messages as keep each under MAX_BATCH_BYTES."""
    out: control_pb2.StatusResponse | None = None
    size = 0
    for msg in msgs:
        n = msg.ByteSize()
        if out is not None and size + n > MAX_BATCH_BYTES:
            yield out
            out = None
        if out is None:
            out, size = control_pb2.StatusResponse(), 0
        out.MergeFrom(msg)
        size += n
    if out is not None:
        yield out


def _put(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, item: object) -> None:
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        queue.put_nowait(item)
    else:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the subscriber's loop is gone
            pass
