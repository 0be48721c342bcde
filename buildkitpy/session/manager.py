"""Daemon side of client sessions.

A build client opens ``Control.Session`` and serves its attachables (FileSync, Secrets, Auth, ...)
over that stream; the daemon is the gRPC *client* of those services. :class:`SessionManager` turns
each such stream into a :class:`Session` holding a channel to the client (a
:class:`~buildkitpy.session.pipechannel.PipeChannel`, used like a ``grpc.aio.Channel``), keeps it
registered while it lives, health-checks it like BuildKit does, and lets the solver wait for a
session by id (:meth:`SessionManager.get`).

Wire it into the Control servicer like this (grpc.aio needs the method itself to be an async
generator function)::

    async def Session(self, request_iterator, context):
        async for message in self.sessions.serve(request_iterator, context):
            yield message

and register the servicer with :func:`add_control_to_server`: ``serve`` yields the encodings of
its ``BytesMessage`` answers (building and serializing a protobuf message copies each chunk of the
session's bytes twice more, 0.15 s per 200 MB of exporter output).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import anyio
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from buildkitpy import errors
from buildkitpy.api import control_pb2_grpc
from buildkitpy.session.bridge import Pipe, bytes_message_data, encode_bytes_message
from buildkitpy.session.pipechannel import ChunkSink, PipeChannel, PushSource, channel_over_pipe

log = logging.getLogger(__name__)

HEADER_SESSION_ID = "x-docker-expose-session-uuid"
HEADER_SESSION_NAME = "x-docker-expose-session-name"
HEADER_SESSION_SHARED_KEY = "x-docker-expose-session-sharedkey"
HEADER_SESSION_METHOD = "x-docker-expose-session-grpc-method"
HEADER_HEALTH_CUSTOM_TIMEOUT = "x-buildkit-session-health-custom-timeout"

HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"
HEALTH_WATCH_METHOD = "/grpc.health.v1.Health/Watch"

# Chunks queued between the socket and the gRPC response stream (backpressure beyond that).
_OUTGOING_QUEUE = 16


class SessionAlreadyExists(errors.BuildkitpyError):
    grpc_code = grpc.StatusCode.ALREADY_EXISTS


@dataclass(frozen=True)
class HealthCheckConfig:
    """How the daemon probes a session: a ``Health/Check`` every ``interval`` seconds, each allowed
    ``timeout`` seconds (or 1.5x the previous check's duration if longer); ``failure_threshold``
    consecutive failures close the session."""

    interval: float = 5.0
    timeout: float = 15.0
    failure_threshold: int = 2

    def with_custom_timeout(self, header_value: str | None) -> HealthCheckConfig:
        """Apply ``x-buildkit-session-health-custom-timeout`` (milliseconds). As in BuildKit it sets
        both interval and timeout (at least 1 s) and makes one failure fatal; a value that is not
        a positive integer is ignored."""
        try:
            ms = int(header_value or "")
        except ValueError:
            return self
        if ms <= 0:
            return self
        seconds = max(ms / 1000.0, 1.0)
        return HealthCheckConfig(interval=seconds, timeout=seconds, failure_threshold=1)


@dataclass(frozen=True)
class SessionHeader:
    """What the client told us in the ``Control.Session`` call metadata."""

    id: str
    shared_key: str
    name: str
    methods: tuple[str, ...]
    health_custom_timeout: str | None

    @classmethod
    def from_metadata(cls, metadata: Iterable[tuple[str, str | bytes]] | None) -> SessionHeader:
        values: dict[str, list[str]] = {}
        for key, value in metadata or ():
            if isinstance(value, bytes):
                continue  # binary headers carry nothing we use
            values.setdefault(key.lower(), []).append(value)

        def first(key: str) -> str:
            return values.get(key, [""])[0].strip()

        session_id = first(HEADER_SESSION_ID)
        if not session_id:
            raise errors.InvalidArgument(
                f"Control.Session call without a session id: the {HEADER_SESSION_ID!r} metadata is "
                "missing or empty")
        methods: list[str] = []
        for value in values.get(HEADER_SESSION_METHOD, []):
            # Proxies may fold repeated headers into one comma-separated value.
            methods.extend(m.strip() for m in value.split(",") if m.strip())
        return cls(id=session_id, shared_key=first(HEADER_SESSION_SHARED_KEY),
                   name=first(HEADER_SESSION_NAME), methods=tuple(methods),
                   health_custom_timeout=values.get(HEADER_HEALTH_CUSTOM_TIMEOUT, [None])[0])


class Session:
    """One live client session as seen by the daemon.

    ``channel`` reaches the client's attachables. ``closed`` is an ``anyio.Event`` set when the
    session ends for any reason (client gone, failed health checks, :meth:`close`) and
    ``close_reason`` says why. Calls in flight then fail with UNAVAILABLE/CANCELLED, and the channel
    is closed right after (new calls raise grpc's ``UsageError: Channel is closed``), so check
    ``closed`` before calling.
    """

    def __init__(self, header: SessionHeader, channel: PipeChannel) -> None:
        self.id = header.id
        self.shared_key = header.shared_key
        self.name = header.name
        self.methods = header.methods
        self.channel = channel
        self.closed = anyio.Event()
        self.close_reason: str | None = None
        self._supported = frozenset(m.lower() for m in header.methods)
        self._close_requested = anyio.Event()

    def supports(self, method: str) -> bool:
        """Whether the client serves ``method`` (a full name such as
        ``/moby.filesync.v1.FileSync/DiffCopy``), compared case-insensitively like BuildKit."""
        return method.lower() in self._supported

    def close(self, reason: str = "closed by the daemon") -> None:
        """Ask the session to end; ``closed`` is set once it has."""
        if self.close_reason is None:
            self.close_reason = reason
        self._close_requested.set()

    def __repr__(self) -> str:
        state = f"closed: {self.close_reason}" if self.closed.is_set() else "open"
        return f"<Session {self.id} name={self.name!r} {state}>"


class SessionManager:
    """Registry of the sessions clients hold open with this daemon."""

    def __init__(self, *, health: HealthCheckConfig | None = None) -> None:
        self.health = health or HealthCheckConfig()
        self._sessions: dict[str, Session] = {}
        self._changed: anyio.Event | None = None

    # -- Control.Session ---------------------------------------------------------------------------

    async def serve(self, request_iterator: AsyncIterable[Any],
                    context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        """The body of ``Control.Session``: bridge the stream to a channel and keep the session
        registered until the client goes away. Yields encoded ``BytesMessage`` answers (see
        :func:`add_control_to_server`). The client's messages are read with ``context.read()``
        (``_RequestChunks``), never from ``request_iterator``.

        The session's work runs in one task of its own rather than in a task group around the
        ``yield`` below: grpc.aio may abandon this generator at a ``yield`` when the call is
        cancelled and finalize it from another task, which a task group cannot survive. The task
        is cancelled when the call ends and awaited before this generator returns.
        """
        try:
            header = SessionHeader.from_metadata(context.invocation_metadata())
            self._check_not_active(header.id)
        except errors.BuildkitpyError as err:
            await errors.abort_with(context, err)
            return
        send, receive = anyio.create_memory_object_stream[bytes](_OUTGOING_QUEUE)
        runner = asyncio.ensure_future(self._run(header, _RequestChunks(context), send))
        context.add_done_callback(lambda _call: runner.cancel())
        try:
            async with receive:
                async for chunk in receive:
                    yield encode_bytes_message(chunk)
            await asyncio.wait([runner])
        finally:
            if not runner.done():
                runner.cancel()
                await asyncio.wait([runner])
        if not runner.cancelled() and (failure := runner.exception()) is not None:
            if not isinstance(failure, errors.BuildkitpyError):
                log.error("session %s failed", header.id, exc_info=failure)
                failure = errors.BuildkitpyError(f"session {header.id} failed: {failure}")
            await errors.abort_with(context, failure)

    async def attach(self, header: SessionHeader, incoming: AsyncIterable[bytes] | PushSource,
                     outgoing: ChunkSink) -> None:
        """Serve a session whose HTTP/2 bytes arrive some other way than through grpc.aio's
        ``Control.Session`` (the front server's own, pushed; the Engine API's hijacked
        ``POST /session``); returns when the session ends."""
        self._check_not_active(header.id)
        await self._run(header, incoming, outgoing)

    async def _run(self, header: SessionHeader, incoming: AsyncIterable[bytes] | PushSource,
                   outgoing: ChunkSink) -> None:
        async with channel_over_pipe(incoming, outgoing) as (channel, pipe):
            session = Session(header, channel)
            self._register(session)
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_close_when_pipe_ends, session, pipe)
                    tg.start_soon(monitor_health, session,
                                  self.health.with_custom_timeout(header.health_custom_timeout))
                    await session._close_requested.wait()
                    tg.cancel_scope.cancel()
            finally:
                session.close("the session stream ended")  # no-op if a reason is already set
                session.closed.set()
                self._unregister(session)
                log.debug("session %s closed: %s", session.id, session.close_reason)

    # -- lookup ------------------------------------------------------------------------------------

    async def get(self, session_id: str, timeout: float = 5.0) -> Session:
        """The open session ``session_id`` (``name:id`` accepted), waiting up to ``timeout``
        seconds for the client to open it. Raises :class:`errors.SessionNotFound`."""
        wanted = session_id_of(session_id)
        if not wanted:
            raise errors.SessionNotFound("no session id given")
        with anyio.move_on_after(timeout):
            while True:
                session = self.get_nowait(wanted)
                if session is not None:
                    return session
                await self._changed_event().wait()
        raise errors.SessionNotFound(
            f"no active session for {wanted}: the client did not open it within {timeout:g}s "
            "(or it has already closed)")

    def get_nowait(self, session_id: str) -> Session | None:
        """The open session ``session_id`` (``name:id`` accepted), or ``None``."""
        session = self._sessions.get(session_id_of(session_id))
        if session is None or session.closed.is_set():
            return None
        return session

    def active(self) -> list[Session]:
        """All sessions currently open."""
        return [s for s in self._sessions.values() if not s.closed.is_set()]

    async def close_all(self, reason: str = "the daemon is shutting down") -> None:
        """Close every open session and wait until they are closed."""
        sessions = self.active()
        for session in sessions:
            session.close(reason)
        for session in sessions:
            await session.closed.wait()

    # -- internals ---------------------------------------------------------------------------------

    def _check_not_active(self, session_id: str) -> None:
        if self.get_nowait(session_id) is not None:
            raise SessionAlreadyExists(f"session {session_id} already exists")

    def _register(self, session: Session) -> None:
        self._check_not_active(session.id)
        self._sessions[session.id] = session
        self._notify()

    def _unregister(self, session: Session) -> None:
        if self._sessions.get(session.id) is session:
            del self._sessions[session.id]
        self._notify()

    def _changed_event(self) -> anyio.Event:
        if self._changed is None:
            self._changed = anyio.Event()
        return self._changed

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None


def add_control_to_server(servicer: control_pb2_grpc.ControlServicer, server: grpc.aio.Server) -> None:
    """``add_ControlServicer_to_server`` with ``Session`` in raw bytes both ways: the encoded
    ``BytesMessage`` that :meth:`SessionManager.serve` yields go out as they are, and the client's
    are decoded by ``serve`` itself (``_RequestChunks``)."""
    capture = _HandlerCapture()
    control_pb2_grpc.add_ControlServicer_to_server(servicer, capture)  # type: ignore[arg-type]
    if capture.handlers is None:
        raise RuntimeError("the generated Control registration no longer hands its method handlers to "
                           "add_registered_method_handlers (regenerated with an older grpc_tools?)")
    handlers = dict(capture.handlers)
    handlers["Session"] = handlers["Session"]._replace(request_deserializer=None, response_serializer=None)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(capture.service, handlers),))
    server.add_registered_method_handlers(capture.service, handlers)


class _HandlerCapture:
    """Stands in for the server while the generated code registers the Control service."""

    service = ""
    handlers: dict[str, grpc.RpcMethodHandler] | None = None

    def add_generic_rpc_handlers(self, _handlers: object) -> None:
        pass  # the same handlers also come through add_registered_method_handlers

    def add_registered_method_handlers(self, service: str,
                                       handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.service, self.handlers = service, handlers


def session_id_of(reference: str) -> str:
    """``name:id`` → ``id`` (the name only keeps cache keys of different contexts apart)."""
    name, sep, rest = reference.partition(":")
    return rest if sep and rest else reference


async def monitor_health(session: Session, config: HealthCheckConfig) -> None:
    """Probe ``Health/Check`` until the session ends; close it after too many failures in a row."""
    stub = health_pb2_grpc.HealthStub(session.channel)
    failures = 0
    last_duration = 0.0
    while True:
        await anyio.sleep(config.interval)
        timeout = max(config.timeout, last_duration * 1.5)
        started = anyio.current_time()
        problem: str | None = None
        with anyio.move_on_after(timeout + 1.0) as deadline:  # in case grpc ignores its deadline
            try:
                await stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
            except grpc.aio.AioRpcError as err:
                problem = f"{err.code().name}: {err.details()}"
        if deadline.cancelled_caught:
            problem = f"no answer within {timeout:g}s"
        last_duration = anyio.current_time() - started
        if problem is None:
            failures = 0
            continue
        if session.closed.is_set():
            return
        failures += 1
        if failures >= config.failure_threshold:
            session.close(f"health check failed {failures} time(s) in a row ({problem})")
            return
        log.warning("session %s: health check failed (%s)", session.id, problem)


async def _close_when_pipe_ends(session: Session, pipe: Pipe) -> None:
    await pipe.closed.wait()
    reason = "the client closed the session"
    if pipe.error is not None:
        reason = f"the session stream failed: {pipe.error}"
    session.close(reason)


class _RequestChunks:
    """The chunks of the session's connection, read from the call with ``context.read()`` (the
    request iterator wraps each read in an async generator, and our own generator over it added
    another). :func:`add_control_to_server` registers ``Session`` without a request deserializer:
    a BuildKit client sends each inner HTTP/2 frame as one BytesMessage (~10,000 of ~46 bytes for
    an unchanged 10,000-file context), and making a protobuf message of each to take its bytes
    out again cost more than reading the payload behind the two-byte prefix
    (:func:`bytes_message_data`). A servicer registered with the generated code still works:
    its messages are BytesMessages."""

    __slots__ = ("_read",)

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._read = context.read

    def __aiter__(self) -> _RequestChunks:
        return self

    async def __anext__(self) -> bytes:
        message = await self._read()
        if message is grpc.aio.EOF:
            raise StopAsyncIteration
        if type(message) is bytes:
            return bytes_message_data(message)
        return message.data


class SessionCallFailed(errors.BuildkitpyError):
    """A call the daemon made to a client's attachable failed; keeps the call's status code."""

    def __init__(self, message: str, code: grpc.StatusCode) -> None:
        super().__init__(message)
        self.grpc_code = code


def call_failed(what: str, err: grpc.aio.AioRpcError) -> SessionCallFailed:
    """Wrap a failed session call as an error naming what we were doing."""
    return SessionCallFailed(f"{what}: {err.code().name}: {err.details()}", err.code())


def service_method_names(service_descriptor) -> list[str]:
    """Full method names (``/pkg.Service/Method``) of a protobuf service descriptor."""
    return [f"/{service_descriptor.full_name}/{m.name}" for m in service_descriptor.methods]
