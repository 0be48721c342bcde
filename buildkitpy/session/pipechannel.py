"""A ``grpc.aio.Channel`` look-alike whose one HTTP/2 connection is a pipe of byte chunks.

The daemon's side of a client session (and our Engine API client's ``/grpc`` connection) is an
HTTP/2 connection carried in the messages of another gRPC stream. :func:`channel_over_pipe` runs
it with the sans-I/O :class:`~buildkitpy.session.h2.H2Connection` directly on those chunks, with no
socket and no second gRPC stack in between: BuildKit's clients send one HTTP/2 frame per message
(~12,000 of ~70 bytes for an unchanged 10,000-file context), and splicing each into a socket for
grpcio to parse again cost more than the rest of the transfer.

:class:`PipeChannel` offers what the generated stubs and our session code use of a
``grpc.aio.Channel``: the four multicallables, whose calls are awaitable and/or async-iterable,
with ``read``/``write``/``done_writing``, ``cancel``, ``done``, ``cancelled``, ``code``,
``details``, ``initial_metadata``, ``trailing_metadata``, ``metadata=`` and ``timeout=``; failures
raise ``grpc.aio.AioRpcError``, reads after a local ``cancel()`` raise ``CancelledError`` and a
write into a finished call ``asyncio.InvalidStateError``, as grpc.aio does. When the pipe ends,
calls in flight fail with UNAVAILABLE; after :meth:`PipeChannel.close` new calls raise
``grpc.aio.UsageError``.

The pipe's two ends are a :class:`ChunkSink` for what we send (an anyio memory stream, or the
daemon's front writing straight to its client's HTTP/2 stream) and, for what we receive, either an
async iterable of chunks or a :class:`PushSource` that hands each chunk over as it arrives. With
the front's push source and sink, the answer to a chunk (the data a WINDOW_UPDATE lets out, a PING
ACK) is on the client's socket before the socket read that brought it returns: no task wake-ups in
between (three of them before). buildctl lets at most 1 MiB of its session connection be in
flight, so they held back a 200 MB tar export: 0.605 -> 0.565 s (medians of 14, alternating).
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Generator, Iterable, Sequence
from typing import Any, Protocol

import anyio
import grpc

from buildkitpy.session.bridge import Pipe, in_background
from buildkitpy.session.h2 import H2Connection, H2ProtocolError, Metadata, Stream

# A write waits once this much is queued for the pipe (the pipe's own queue holds more).
OUTBOUND_HIGH_WATER = 1 << 20
# The largest chunk put on the pipe (each is one message of the carrying stream). Go's gRPC
# receives every message over 32 KiB into a pooled 1 MiB buffer that it clears whole first, so
# half of that, not a quarter: a 200 MB tar export to buildctl 0.86 -> 0.76 s (medians of 8).
MAX_CHUNK = 512 << 10

_LOCAL_CANCELLATION = "Locally cancelled by application!"
_CHANNEL_CLOSED = "Channel closed!"


class ChunkSink(Protocol):
    """Where the pipe's outgoing chunks go (an anyio ``MemoryObjectSendStream[bytes]`` is one)."""

    def send_nowait(self, chunk: bytes) -> None:
        """Send at once, or raise ``anyio.WouldBlock`` (nothing sent) when there is no room;
        ``anyio.BrokenResourceError``/``ClosedResourceError`` once the other end is gone."""

    async def send(self, chunk: bytes) -> None:
        """Send, waiting for room."""

    def close(self) -> None:
        """No more chunks."""


class PushTarget(Protocol):
    """What a :class:`PushSource` hands its chunks to (the receiving end of a pipe)."""

    def push(self, chunk: bytes) -> None:
        """Take one chunk, synchronously (its answers are sent before this returns when the sink
        has room). Raises ``H2ProtocolError`` when the peer broke the protocol."""

    def backlogged(self) -> bool:
        """Whether the peer should send no more for now (our answers to it wait to go out)."""

    async def drained(self) -> None:
        """Wait until :meth:`backlogged` is over (or the pipe is gone)."""


class PushSource(Protocol):
    """Incoming chunks pushed as they arrive rather than read by a task (the front's session
    stream: the chunk a socket read brought is taken in that read's callback)."""

    async def push_into(self, target: PushTarget) -> None:
        """Give every chunk to ``target.push`` as it arrives, until the peer's end of the stream,
        then return; raise what ``push`` raised. Chunks should stop (no flow-control credit for
        them) while ``target.backlogged()``."""


class _Waiters:
    """Futures of the tasks waiting on one stream (a reader and a writer may wait at once)."""

    __slots__ = ("futures",)

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[None]] = []

    def __call__(self) -> None:
        futures = self.futures
        if futures:
            self.futures = []
            for fut in futures:
                if not fut.done():
                    fut.set_result(None)

    async def wait(self) -> None:
        fut = asyncio.get_running_loop().create_future()
        self.futures.append(fut)
        await fut


class PipeCall:
    """One call (all four kinds): the parts of grpc.aio's call objects our code uses."""

    def __init__(self, channel: PipeChannel, method: str, serializer: Callable[[Any], bytes] | None,
                 deserializer: Callable[[bytes], Any] | None, metadata: Any,
                 timeout: float | None, unary_response: bool) -> None:
        self._channel = channel
        self._method = method
        self._serialize = serializer
        self._deserialize = deserializer
        self._unary_response = unary_response
        self._waiters = _Waiters()
        self._locally_cancelled = False
        self._done_writing = False
        self._request_task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._response_task: asyncio.Future[Any] | None = None
        self._consumer: Callable[[Any], None] | None = None
        self._consumer_error: Exception | None = None
        self._end_waiters = _Waiters()  # consumed_all: woken when the call ends, not per message
        self._loop = asyncio.get_running_loop()
        conn = channel._conn
        self._stream: Stream = conn.open_stream(method, _metadata_tuple(metadata), timeout)
        # Weakly: a call dropped without cancel() is garbage, and then cancelled (as in grpc.aio).
        # A plain weak reference, called and then its _wake: a WeakMethod is a Python-level call
        # on every received chunk (one per STAT packet of a context).
        self._stream.waker = weakref.ref(self)
        if timeout is not None and not self._stream.done:
            self._timer = self._loop.call_later(timeout, self._deadline)
        if not self._stream.done:
            channel._calls.add(self)
        channel._kick()

    # -- state ---------------------------------------------------------------------------------------

    def done(self) -> bool:
        return self._stream.status is not None

    def cancelled(self) -> bool:
        status = self._stream.status
        return status is not None and status[0] == grpc.StatusCode.CANCELLED

    def cancel(self) -> bool:
        if self._stream.status is not None:
            return False
        self._locally_cancelled = True
        self._end(grpc.StatusCode.CANCELLED, _LOCAL_CANCELLATION)
        return True

    def __del__(self) -> None:
        # The collector may run in any thread: the stream is cancelled from the loop.
        stream = getattr(self, "_stream", None)
        if stream is not None and stream.status is None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self._loop.call_soon_threadsafe(self._channel._orphaned, stream)

    def _end(self, code: grpc.StatusCode, details: str) -> None:
        self._channel._conn.cancel_stream(self._stream, code, details)
        self._finished()
        self._channel._kick()

    def _wake(self) -> None:
        if self._consumer is not None and self._stream.messages:
            self._feed_consumer()
        if self._waiters.futures:  # none while a consumer takes the messages
            self._waiters()
        if self._stream.status is not None:
            self._end_waiters()
            if self._channel._calls and self in self._channel._calls:
                self._finished()

    def _finished(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._request_task is not None and not self._request_task.done():
            self._request_task.cancel()
        self._channel._calls.discard(self)
        self._waiters()
        self._end_waiters()

    def _deadline(self) -> None:
        self._timer = None
        if self._stream.status is None:
            self._end(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")

    async def _wait(self) -> None:
        try:
            await self._waiters.wait()
        except asyncio.CancelledError:
            # As grpc.aio: a caller cancelled while waiting cancels the call.
            self.cancel()
            raise

    async def _status(self) -> tuple[grpc.StatusCode, str, Metadata]:
        while (status := self._stream.status) is None:
            await self._wait()
        return status

    async def code(self) -> grpc.StatusCode:
        return (await self._status())[0]

    async def details(self) -> str:
        return (await self._status())[1]

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata(*(await self._status())[2])

    async def initial_metadata(self) -> grpc.aio.Metadata:
        while self._stream.headers is None and self._stream.status is None:
            await self._wait()
        return grpc.aio.Metadata(*(self._stream.headers or ()))

    def _raise_for_status(self) -> None:
        if self._locally_cancelled:
            raise asyncio.CancelledError()
        status = self._stream.status
        assert status is not None
        code, details, trailers = status
        if code != grpc.StatusCode.OK:
            raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(*(self._stream.headers or ())),
                                       grpc.aio.Metadata(*trailers), details)

    # -- reading -------------------------------------------------------------------------------------

    async def read(self) -> Any:
        """The next response, or ``grpc.aio.EOF`` once the call ended with OK."""
        stream = self._stream
        while True:
            messages = stream.messages
            if messages:
                message = messages.popleft()
                self._channel._conn.consumed(stream, len(message) + 5)
                self._channel._kick()
                return message if self._deserialize is None else self._deserialize(message)
            if stream.status is not None:
                self._raise_for_status()
                return grpc.aio.EOF
            await self._wait()

    def consume(self, consumer: Callable[[Any], None]) -> None:
        """Hand every response to ``consumer`` as soon as it is received, in the task that
        received it, instead of :meth:`read`: no wake-up of a reading task per message (a BuildKit
        client sends each of an unchanged context's ~10,000 STAT packets in a message of its own).
        ``consumer`` must not block; when it raises, it is called no more and
        :meth:`consumed_all` raises its error. Not combined with ``read``."""
        self._consumer = consumer
        if self._stream.messages:
            self._feed_consumer()
            self._channel._kick()

    async def consumed_all(self) -> None:
        """Wait until every response went to the consumer and the call ended with OK; raises the
        consumer's error, the call's ``AioRpcError``, or ``CancelledError`` after a local
        ``cancel()``."""
        stream = self._stream
        while True:
            if self._consumer_error is not None:
                raise self._consumer_error
            if stream.status is not None and not stream.messages:
                self._raise_for_status()
                return
            try:
                await self._end_waiters.wait()
            except asyncio.CancelledError:
                self.cancel()  # as _wait
                raise

    def _feed_consumer(self) -> None:
        stream = self._stream
        messages = stream.messages
        conn = self._channel._conn
        consumer = self._consumer
        deserialize = self._deserialize
        assert consumer is not None
        try:
            while messages:
                message = messages.popleft()
                conn.consumed(stream, len(message) + 5)
                consumer(message if deserialize is None else deserialize(message))
        except Exception as exc:  # noqa: BLE001 - raised by consumed_all, in the consumer's caller
            self._consumer = None
            self._consumer_error = exc
            self._end_waiters()
        if conn.outbound_size:
            self._channel._output.set()  # WINDOW_UPDATEs

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._responses()

    async def _responses(self) -> AsyncIterator[Any]:
        while (message := await self.read()) is not grpc.aio.EOF:
            yield message

    def __await__(self) -> Generator[Any, None, Any]:
        if self._response_task is None:
            self._response_task = asyncio.ensure_future(self._unary())
        return self._response_task.__await__()

    async def _unary(self) -> Any:
        response = await self.read()
        if response is grpc.aio.EOF:
            raise grpc.aio.AioRpcError(grpc.StatusCode.INTERNAL, grpc.aio.Metadata(),
                                       grpc.aio.Metadata(), "the server sent no response message")
        while await self.read() is not grpc.aio.EOF:
            pass
        return response

    # -- writing -------------------------------------------------------------------------------------

    async def write(self, request: Any) -> None:
        self._check_writable()
        data = request if self._serialize is None else self._serialize(request)
        self._channel._conn.send_message(self._stream, data)
        await self._written()

    async def write_many(self, requests: Sequence[Any]) -> None:
        """``write`` of several requests: queued at once (HTTP/2 frames carry as many as fit), then
        one wait for them to go out. Not a grpc.aio method: a filesync sender writing a listing of
        hundreds of small packets uses it when the call has it."""
        self._check_writable()
        serialize = self._serialize
        self._channel._conn.send_messages(self._stream, requests if serialize is None
                                          else [serialize(r) for r in requests])
        await self._written()

    def _check_writable(self) -> None:
        if self._stream.status is not None:
            self._raise_for_status()
            raise asyncio.InvalidStateError("RPC already finished.")
        if self._done_writing:
            raise asyncio.InvalidStateError("RPC is half closed after calling \"done_writing\".")

    async def _written(self) -> None:
        """Wait until what the call queued has gone to the connection (and the connection's own
        queue is below its high-water mark)."""
        stream, channel = self._stream, self._channel
        channel._kick()
        while stream.pending_size and stream.status is None:
            await self._wait()
        if channel.backlogged():
            await channel.drained()

    async def done_writing(self) -> None:
        if self._stream.status is not None or self._done_writing:
            return
        self._done_writing = True
        self._channel._conn.end_stream(self._stream)
        self._channel._kick()

    def _send_unary(self, request: Any) -> None:
        if self._stream.status is None:
            data = request if self._serialize is None else self._serialize(request)
            self._done_writing = True
            self._channel._conn.send_message(self._stream, data, end_stream=True)
            self._channel._kick()

    def _consume_requests(self, requests: Iterable[Any] | AsyncIterable[Any]) -> None:
        self._request_task = asyncio.ensure_future(self._send_requests(requests))

    async def _send_requests(self, requests: Iterable[Any] | AsyncIterable[Any]) -> None:
        try:
            if isinstance(requests, AsyncIterable):
                async for request in requests:
                    await self.write(request)
            else:
                for request in requests:
                    await self.write(request)
            await self.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the call is over; its status says why
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - like grpc.aio: a failing request iterator ends the call
            if self._stream.status is None:
                self._end(grpc.StatusCode.UNKNOWN, f"the request iterator failed: {exc!r}")


class _MultiCallable:
    def __init__(self, channel: PipeChannel, method: str, request_serializer: Any,
                 response_deserializer: Any, streaming_request: bool, unary_response: bool) -> None:
        self._channel = channel
        self._method = method
        self._serializer = request_serializer
        self._deserializer = response_deserializer
        self._streaming_request = streaming_request
        self._unary_response = unary_response

    def __call__(self, request: Any = None, *, timeout: float | None = None, metadata: Any = None,
                 credentials: Any = None, wait_for_ready: Any = None, compression: Any = None
                 ) -> PipeCall:
        channel = self._channel
        if channel._closed:
            raise grpc.aio.UsageError("Channel is closed.")
        call = PipeCall(channel, self._method, self._serializer, self._deserializer, metadata,
                        timeout, self._unary_response)
        if not self._streaming_request:
            call._send_unary(request)
        elif request is not None:
            call._consume_requests(request)
        return call


class PipeChannel:
    """The client end of a piped HTTP/2 connection (module docstring). Built and run by
    :func:`channel_over_pipe`."""

    def __init__(self, conn: H2Connection) -> None:
        self._conn = conn
        self._calls: weakref.WeakSet[PipeCall] = weakref.WeakSet()
        self._closed = False
        self._output = asyncio.Event()  # the connection has bytes to send: _pump_out sends them
        self._drain_waiters = _Waiters()
        self._outgoing: ChunkSink | None = None
        self._backlog: deque[bytes] = deque()  # chunks taken from the connection, not yet sent
        self._backlog_size = 0
        self._awaiting_room = False  # _pump_out waits to send the chunk ahead of the backlog
        self._pump_out_ended = False
        self._sink_gone = False  # the sink's consumer went away (seen by _send_queued)

    def unary_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                    _registered_method: bool = False) -> _MultiCallable:
        return _MultiCallable(self, method, request_serializer, response_deserializer, False, True)

    def unary_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool = False) -> _MultiCallable:
        return _MultiCallable(self, method, request_serializer, response_deserializer, False, False)

    def stream_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool = False) -> _MultiCallable:
        return _MultiCallable(self, method, request_serializer, response_deserializer, True, True)

    def stream_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                      _registered_method: bool = False) -> _MultiCallable:
        return _MultiCallable(self, method, request_serializer, response_deserializer, True, False)

    async def close(self, grace: float | None = None) -> None:
        """Fail every call in flight with CANCELLED (after up to ``grace`` seconds) and refuse new
        ones."""
        if grace:
            with anyio.move_on_after(grace):
                for call in list(self._calls):
                    await call._status()
        self._closed = True
        self._conn.close(grpc.StatusCode.CANCELLED, _CHANNEL_CLOSED)
        self._wake_changed()
        self._kick()

    async def __aenter__(self) -> PipeChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- the driver ----------------------------------------------------------------------------------

    def _kick(self) -> None:
        if self._conn.outbound_size:
            self._output.set()
        self._wake_changed()

    def _wake_changed(self) -> None:
        for stream in self._conn.take_changed():
            if stream.waker is not None and (call := stream.waker()) is not None:
                call._wake()

    def _orphaned(self, stream: Stream) -> None:
        if stream.status is None:
            self._conn.cancel_stream(stream, grpc.StatusCode.CANCELLED, "the call was garbage collected")
            self._kick()

    def _lost(self, reason: str) -> None:
        self._conn.connection_lost(reason)
        self._wake_changed()
        self._drain_waiters()

    # -- the receiving end (PushTarget) -----------------------------------------------------------

    def push(self, chunk: bytes) -> None:
        """One chunk from the peer: taken, its answers handed to the sink at once (unless
        :meth:`_pump_out` is about to send, then with what the calls wrote meanwhile), the calls it
        changed woken."""
        if chunk:
            self._conn.receive_data(chunk)
            if not self._output.is_set():
                self._send_queued()
            self._wake_changed()

    def backlogged(self) -> bool:
        return self._conn.outbound_size + self._backlog_size > OUTBOUND_HIGH_WATER

    async def drained(self) -> None:
        while self.backlogged() and self._conn.closed is None:
            await self._drain_waiters.wait()

    # -- sending -------------------------------------------------------------------------------------

    def _send_queued(self) -> None:
        """Hand what the connection has queued to the sink without waiting; what does not fit
        stays in the backlog, in order, for :meth:`_pump_out` (which does nothing here while it
        waits for room)."""
        outgoing = self._outgoing
        if self._awaiting_room or outgoing is None or self._sink_gone:
            return
        backlog = self._backlog
        if self._conn.outbound_size:
            for chunk in self._conn.chunks_to_send(MAX_CHUNK):
                backlog.append(chunk)
                self._backlog_size += len(chunk)
        while backlog:
            chunk = backlog[0]
            try:
                outgoing.send_nowait(chunk)
            except anyio.WouldBlock:
                self._output.set()
                return
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._sink_gone = True  # its consumer went away: _pump_out ends the pipe
                self._output.set()
                return
            backlog.popleft()
            self._backlog_size -= len(chunk)
        self._drain_waiters()

    async def _pump_in(self, incoming: AsyncIterable[bytes] | PushSource, pipe: Pipe) -> None:
        conn = self._conn
        reason = "the session's connection ended"
        try:
            if isinstance(incoming, AsyncIterable):
                async for chunk in incoming:
                    self.push(chunk)
                    if self.backlogged():
                        # Answers (PING ACKs, ...) the peer does not read: read no more from it.
                        await self.drained()
            else:
                await incoming.push_into(self)
        except H2ProtocolError as err:
            pipe.error = err
            reason = str(conn.closed)
            # The GOAWAY saying why goes out before the pipe closes (after what is in flight).
            self._output.set()
            with anyio.move_on_after(1):
                while not self._pump_out_ended and (self._backlog or self._awaiting_room
                                                    or self._output.is_set()):
                    await self._drain_waiters.wait()
        except Exception as exc:  # noqa: BLE001 - a failing pipe ends the session, never the process
            pipe.error = exc
            reason = f"the session's connection failed: {exc}"
        finally:
            self._lost(reason)

    async def _pump_out(self, pipe: Pipe) -> None:
        outgoing = self._outgoing
        assert outgoing is not None
        backlog = self._backlog
        try:
            while True:
                await self._output.wait()
                self._output.clear()
                self._send_queued()
                while backlog and not self._sink_gone:
                    chunk = backlog.popleft()
                    self._awaiting_room = True
                    try:
                        await outgoing.send(chunk)
                    finally:
                        self._awaiting_room = False
                    self._backlog_size -= len(chunk)
                    self._send_queued()
                if self._sink_gone:
                    return
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the consumer of `outgoing` went away
        except Exception as exc:  # noqa: BLE001
            pipe.error = pipe.error or exc
        finally:
            self._pump_out_ended = True
            self._lost("the session's connection ended")


def _metadata_tuple(metadata: Any) -> Metadata:
    if not metadata:
        return ()
    return tuple((str(k), v) for k, v in metadata)


@contextlib.asynccontextmanager
async def channel_over_pipe(incoming: AsyncIterable[bytes] | PushSource, outgoing: ChunkSink,
                            ) -> AsyncIterator[tuple[PipeChannel, Pipe]]:
    """A channel whose only connection is the pipe: chunks from the peer from ``incoming``, chunks
    for the peer sent to ``outgoing``. Yields ``(channel, pipe)``; when either direction ends, calls
    in flight fail with UNAVAILABLE, ``outgoing`` is closed and ``pipe.closed`` set. On exit the
    channel is closed too."""
    pipe = Pipe()
    channel = PipeChannel(H2Connection())
    channel._outgoing = outgoing
    channel._kick()  # the preface

    async def pumps() -> None:
        async def run(scope: anyio.CancelScope, pump: Callable[..., Any], *args: Any) -> None:
            try:
                await pump(*args)
            finally:
                scope.cancel()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(run, tg.cancel_scope, channel._pump_in, incoming, pipe)
                tg.start_soon(run, tg.cancel_scope, channel._pump_out, pipe)
        finally:
            channel._lost("the session's connection ended")
            pipe.closed.set()
            outgoing.close()  # ends the consumer of the outgoing chunks

    try:
        async with in_background(pumps):
            yield channel, pipe
    finally:
        pipe.closed.set()
        channel._lost("the session has ended")
        await channel.close()
        outgoing.close()
