"""SSH agent forwarding over a session (``moby.sshforward.v1.SSH``).

Client side, :class:`SSHAttachable` serves ``CheckAgent`` and ``ForwardAgent`` for a set of agent
ids (``--ssh default``, ``--ssh id=/path/to/agent.sock``, ``--ssh id=key1,key2``). A
``ForwardAgent`` stream is one connection to the agent; the id travels in the ``buildkit.ssh.id``
metadata. Unless ``raw`` is asked for, requests pass a read-only filter as in BuildKit: listing keys
and signing reach the agent, adding, removing, locking and extensions are refused. Key files are
loaded into a private ``ssh-agent`` process the attachable starts (and stops in :meth:`close`).

Daemon side, :func:`check_agent` asks whether the client forwards an id, and :func:`agent_socket`
listens on a unix socket (for an exec to bind-mount) whose every connection becomes a
``ForwardAgent`` stream to the client.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc
import grpc
from anyio.streams.buffered import BufferedByteReceiveStream

from buildkitpy import errors
from buildkitpy.api import ssh_pb2, ssh_pb2_grpc
from buildkitpy.session.manager import Session, service_method_names

log = logging.getLogger(__name__)

SERVICE = ssh_pb2.DESCRIPTOR.services_by_name["SSH"]
CHECK_AGENT_METHOD = f"/{SERVICE.full_name}/CheckAgent"
FORWARD_AGENT_METHOD = f"/{SERVICE.full_name}/ForwardAgent"
DEFAULT_ID = "default"
KEY_SSH_ID = "buildkit.ssh.id"
SOCKET_NAME = "ssh_auth_sock"
# OpenSSH's own limit on an agent message.
MAX_AGENT_MESSAGE = 256 * 1024
_CHUNK = 32 * 1024

# Agent protocol message types (draft-miller-ssh-agent).
_FAILURE = 5
_SUCCESS = 6
_REQUEST_V1_IDENTITIES = 1
_V1_IDENTITIES_ANSWER = 2
_REMOVE_ALL_V1_IDENTITIES = 9
_REQUEST_IDENTITIES = 11
_SIGN_REQUEST = 13
_UNLOCK = 23
# What a read-only agent lets through; everything else is answered with SSH_AGENT_FAILURE.
_FORWARDED_REQUESTS = frozenset({_REQUEST_IDENTITIES, _SIGN_REQUEST, _UNLOCK})


class SSHConfigError(errors.InvalidArgument):
    """An ``--ssh`` entry names no usable agent socket or key."""


class SSHAgentNotForwarded(errors.NotFound):
    """The client does not forward the requested agent id (optional ssh mounts skip on this)."""


@dataclass
class AgentConfig:
    """One exposed agent: ``paths`` is one socket, or key files; empty means ``$SSH_AUTH_SOCK``."""

    id: str = DEFAULT_ID
    paths: list[str] = field(default_factory=list)
    raw: bool = False


def _frame(*payload: int) -> bytes:
    body = bytes(payload)
    return len(body).to_bytes(4, "big") + body


class _AgentSource:
    """Where one id's connections go: an agent socket, filtered read-only unless ``raw``."""

    def __init__(self, socket_path: str, *, raw: bool, private_agent: _PrivateAgent | None = None) -> None:
        self.socket_path = socket_path
        self.raw = raw
        self.private_agent = private_agent

    async def connect(self) -> anyio.abc.SocketStream:
        try:
            with anyio.fail_after(2):
                return await anyio.connect_unix(self.socket_path)
        except (OSError, TimeoutError) as exc:
            raise OSError(f"failed to connect to {self.socket_path}: {exc}") from None

    def close(self) -> None:
        if self.private_agent is not None:
            self.private_agent.close()


class _PrivateAgent:
    """An ``ssh-agent`` of our own holding key files, listening in a private directory."""

    def __init__(self, keys: list[str]) -> None:
        agent, add = shutil.which("ssh-agent"), shutil.which("ssh-add")
        if agent is None or add is None:
            raise SSHConfigError("forwarding key files needs OpenSSH's ssh-agent and ssh-add on PATH "
                                 "(apt-get install openssh-client)")
        self.dir = Path(tempfile.mkdtemp(prefix="buildkitpy-ssh-agent-"))
        self.socket_path = str(self.dir / "agent.sock")
        self.process = subprocess.Popen([agent, "-D", "-a", self.socket_path], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        start_new_session=True)
        try:
            self._wait_listening()
            env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "SSH_ASKPASS")}
            env.update(SSH_AUTH_SOCK=self.socket_path, SSH_ASKPASS_REQUIRE="never")
            for key in keys:
                done = subprocess.run([add, "-q", key], env=env, stdin=subprocess.DEVNULL,
                                      capture_output=True, start_new_session=True, timeout=30)
                if done.returncode != 0:
                    why = done.stderr.decode(errors="replace").strip() or f"ssh-add exit {done.returncode}"
                    raise SSHConfigError(f"failed to parse {key}: {why}")
        except BaseException:
            self.close()
            raise

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 5
        while not os.path.exists(self.socket_path):
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace").strip() \
                    if self.process.stderr else ""
                raise SSHConfigError(f"ssh-agent exited with {self.process.returncode}: {err}")
            if time.monotonic() > deadline:
                raise SSHConfigError("ssh-agent did not create its socket within 5s")
            time.sleep(0.01)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _source_for(conf: AgentConfig) -> _AgentSource:
    """Resolve one config as BuildKit's agent provider does: one socket, or key files, never both."""
    paths = list(conf.paths)
    if conf.raw and len(paths) != 1:
        raise SSHConfigError("raw mode must supply exactly one path")
    if not paths or paths == [""]:
        paths = [os.environ.get("SSH_AUTH_SOCK", "")]
    if paths[0] == "":
        raise SSHConfigError("invalid empty ssh agent socket: make sure SSH_AUTH_SOCK is set")
    sockets: list[str] = []
    keys: list[str] = []
    for p in paths:
        if sockets:
            raise SSHConfigError("only single socket allowed")
        try:
            st = os.stat(p)
        except OSError as exc:
            raise SSHConfigError(f"stat {p}: {exc.strerror or exc}") from None
        if stat.S_ISSOCK(st.st_mode):
            sockets.append(p)
            continue
        if conf.raw:
            raise SSHConfigError("raw mode only supported with socket paths")
        keys.append(p)
    if sockets and keys:
        raise SSHConfigError("invalid combination of keys and sockets")
    if sockets:
        return _AgentSource(sockets[0], raw=conf.raw)
    agent = _PrivateAgent(keys)
    return _AgentSource(agent.socket_path, raw=False, private_agent=agent)


class SSHAttachable(ssh_pb2_grpc.SSHServicer):
    """Client side: forward local agents (sockets or key files) by id. Call :meth:`close` after use."""

    def __init__(self, configs: Iterable[AgentConfig]) -> None:
        self._sources: dict[str, _AgentSource] = {}
        try:
            for conf in configs:
                agent_id = conf.id or DEFAULT_ID
                if agent_id in self._sources:
                    raise SSHConfigError(f'duplicate agent ID "{agent_id}"')
                try:
                    self._sources[agent_id] = _source_for(conf)
                except SSHConfigError as exc:
                    raise SSHConfigError(f'failed to convert agent config for ID: "{agent_id}": {exc}') \
                        from None
        except BaseException:
            self.close()
            raise

    @property
    def ids(self) -> list[str]:
        return list(self._sources)

    def close(self) -> None:
        """Stop the private agents started for key files."""
        for source in self._sources.values():
            source.close()

    def add_to_server(self, server: grpc.aio.Server) -> None:
        ssh_pb2_grpc.add_SSHServicer_to_server(self, server)

    def method_names(self) -> list[str]:
        return service_method_names(SERVICE)

    async def CheckAgent(self, request: ssh_pb2.CheckAgentRequest,
                         context: grpc.aio.ServicerContext) -> ssh_pb2.CheckAgentResponse:
        agent_id = request.ID or DEFAULT_ID
        if agent_id not in self._sources:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unset ssh forward key {agent_id}")
        return ssh_pb2.CheckAgentResponse()

    async def ForwardAgent(self, request_iterator: AsyncIterator[ssh_pb2.BytesMessage],
                           context: grpc.aio.ServicerContext) -> None:
        md = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        agent_id = md.get(KEY_SSH_ID) or DEFAULT_ID
        source = self._sources.get(agent_id)
        if source is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unset ssh forward key {agent_id}")
            return  # abort raises; grpc has no type stubs to say so
        try:
            conn = await source.connect()
        except OSError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"failed to dial agent {agent_id}: {exc}")
            return  # abort raises; grpc has no type stubs to say so
        async with conn:
            if source.raw:
                await _pump_raw(conn, request_iterator, context)
            else:
                await _serve_read_only(conn, request_iterator, context)


async def _pump_raw(conn: anyio.abc.SocketStream, requests: AsyncIterator[ssh_pb2.BytesMessage],
                    context: grpc.aio.ServicerContext) -> None:
    async with anyio.create_task_group() as tg:
        async def upstream() -> None:
            async for msg in requests:
                await conn.send(msg.data)
            with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                await conn.send_eof()

        tg.start_soon(upstream)
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
            while True:
                await context.write(ssh_pb2.BytesMessage(data=await conn.receive(_CHUNK)))
        tg.cancel_scope.cancel()


async def _serve_read_only(conn: anyio.abc.SocketStream, requests: AsyncIterator[ssh_pb2.BytesMessage],
                           context: grpc.aio.ServicerContext) -> None:
    """Answer one framed request at a time, passing only the read-only ones to the agent."""
    agent = BufferedByteReceiveStream(conn)
    pending = bytearray()
    async for msg in requests:
        pending += msg.data
        while len(pending) >= 4:
            size = int.from_bytes(pending[:4], "big")
            if size == 0 or size > MAX_AGENT_MESSAGE:
                log.warning("ssh forward: dropping a connection that sent a %d-byte agent message", size)
                return
            if len(pending) < 4 + size:
                break
            request = bytes(pending[:4 + size])
            del pending[:4 + size]
            await context.write(ssh_pb2.BytesMessage(data=await _answer(conn, agent, request)))


async def _answer(conn: anyio.abc.SocketStream, agent: BufferedByteReceiveStream, request: bytes) -> bytes:
    kind = request[4]
    if kind == _REQUEST_V1_IDENTITIES:
        return _frame(_V1_IDENTITIES_ANSWER, 0, 0, 0, 0)
    if kind == _REMOVE_ALL_V1_IDENTITIES:
        return _frame(_SUCCESS)
    if kind not in _FORWARDED_REQUESTS:
        return _frame(_FAILURE)
    await conn.send(request)
    header = await agent.receive_exactly(4)
    size = int.from_bytes(header, "big")
    if size > MAX_AGENT_MESSAGE:
        raise OSError(f"the agent answered with a {size}-byte message")
    return header + await agent.receive_exactly(size)


# -- daemon side ---------------------------------------------------------------------------------

async def check_agent(session: Session | None, agent_id: str, *, timeout: float = 60.0) -> None:
    """Raise :class:`SSHAgentNotForwarded` unless the session's client forwards ``agent_id``."""
    shown = agent_id or DEFAULT_ID
    if session is None or session.closed.is_set() or not session.supports(CHECK_AGENT_METHOD):
        raise SSHAgentNotForwarded(f'no SSH key "{shown}" forwarded from the client')
    stub = ssh_pb2_grpc.SSHStub(session.channel)
    try:
        await stub.CheckAgent(ssh_pb2.CheckAgentRequest(ID=agent_id), timeout=timeout)
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.UNIMPLEMENTED:
            raise SSHAgentNotForwarded(f'no SSH key "{shown}" forwarded from the client') from None
        raise SSHAgentNotForwarded(err.details() or f"checking ssh agent {shown}: {err.code().name}") \
            from None


@contextlib.asynccontextmanager
async def agent_socket(session: Session, agent_id: str, parent: Path, *, uid: int = 0, gid: int = 0,
                       mode: int = 0o600) -> AsyncIterator[Path]:
    """A unix socket in a new 0700 directory under ``parent`` forwarding to the client's agent.

    Each connection opens a ``ForwardAgent`` stream. The listener and its connections live in a
    task group that ends with the block, and the directory is removed then.
    """
    parent.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix=secrets.token_hex(4), dir=parent))
    try:
        os.chmod(directory, 0o700)
        listener = await _listen(directory)
        path = directory / SOCKET_NAME
        async with listener, anyio.create_task_group() as tg:
            os.chown(path, uid, gid)
            os.chmod(path, mode & 0o777)
            tg.start_soon(_accept_loop, listener, session, agent_id or DEFAULT_ID, tg)
            try:
                yield path
            finally:
                tg.cancel_scope.cancel()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def _listen(directory: Path) -> anyio.abc.SocketListener:
    # Bound through /proc/self/fd so a long daemon root never hits the 108-byte sun_path limit.
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(f"/proc/self/fd/{dir_fd}/{SOCKET_NAME}")
        sock.listen(64)
        sock.setblocking(False)
        return await anyio.abc.SocketListener.from_socket(sock)
    except BaseException:
        sock.close()
        raise
    finally:
        os.close(dir_fd)


async def _accept_loop(listener: anyio.abc.SocketListener, session: Session, agent_id: str,
                       tg: anyio.abc.TaskGroup) -> None:
    while True:
        try:
            conn = await listener.accept()
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return
        tg.start_soon(_forward_connection, conn, session, agent_id)


async def _forward_connection(conn: anyio.abc.SocketStream, session: Session, agent_id: str) -> None:
    """Pump one container connection over a ``ForwardAgent`` stream; failures end this one only."""
    call = None
    try:
        async with conn:
            call = ssh_pb2_grpc.SSHStub(session.channel).ForwardAgent(metadata=((KEY_SSH_ID, agent_id),))
            async with anyio.create_task_group() as tg:
                tg.start_soon(_container_to_client, conn, call)
                while True:
                    msg = await call.read()
                    if msg is grpc.aio.EOF:
                        break
                    await conn.send(msg.data)
                tg.cancel_scope.cancel()
    except Exception as exc:  # noqa: BLE001 - one broken connection never ends the exec
        detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else repr(exc)
        log.info("ssh forward %s: connection ended: %s", agent_id, detail)
    finally:
        if call is not None:
            call.cancel()


async def _container_to_client(conn: anyio.abc.SocketStream, call: grpc.aio.StreamStreamCall) -> None:
    with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
        while True:
            await call.write(ssh_pb2.BytesMessage(data=await conn.receive(_CHUNK)))
    with contextlib.suppress(Exception):
        await call.done_writing()


def configs_from(entries: Iterable[object]) -> list[AgentConfig]:
    """AgentConfig from objects with ``id``/``paths``/``raw`` (e.g. the CLI's parsed ``--ssh``)."""
    return [AgentConfig(id=getattr(e, "id", "") or DEFAULT_ID, paths=list(getattr(e, "paths", ())),
                        raw=bool(getattr(e, "raw", False))) for e in entries]

