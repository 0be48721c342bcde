"""Interactive containers of the gateway API: ``NewContainer``, ``ExecProcess``, ``ReleaseContainer``
(what ``buildx build --invoke``, debugging and frontends that run tools need).

``NewContainer`` mounts result refs (bind mounts by ``resultID``; the root and any writable mount get
a private writable snapshot on top, thrown away on release) and tmpfs mounts, and starts nothing.
Each ``ExecProcess`` runs one process in it with ``runc run`` on those mounts: stdin from the
client's ``File`` messages (fd 0), stdout/stderr back as ``File`` messages, ``Signal`` forwarded,
then ``Exit`` and ``Done``. Processes of one container share its filesystem but not namespaces
(BuildKit execs further processes in the first one's namespaces). ``Tty`` is not supported.
Releasing a container (or ending the build) kills its processes and drops its mounts.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from buildkitpy.api import gateway_pb2, ops_pb2
from buildkitpy.errors import BuildkitpyError, InvalidArgument, NotFound, Unimplemented, to_rpc_status

log = logging.getLogger(__name__)


class InteractiveContainer:
    def __init__(self, container_id: str, bridge: Any, request: gateway_pb2.NewContainerRequest) -> None:
        self.id = container_id
        self._bridge = bridge
        self._request = request
        self._worker = bridge.solver.worker
        self._stack = contextlib.ExitStack()  # mounts and writable snapshots, closed on release
        self.rootfs: Path | None = None
        self.mounts: list[Any] = []  # executor Mounts
        self._running: dict[str, anyio.CancelScope] = {}  # runc id -> its process's scope
        self._released = False

    async def start(self) -> None:
        from buildkitpy.executor.spec import Mount
        from buildkitpy.solver.asyncutil import blocking

        if self._worker.executor is None:
            raise Unimplemented("containers need runc, which this daemon does not have")
        try:
            for m in self._request.Mounts:
                if m.mountType == ops_pb2.TMPFS:
                    self.mounts.append(Mount.tmpfs(m.dest, size=m.TmpfsOpt.size or None))
                    continue
                if m.mountType != ops_pb2.BIND:
                    raise Unimplemented(f"container mount {m.dest}: only bind (result) and tmpfs mounts "
                                        "are supported")
                ref = self._bridge.ref(m.resultID) if m.resultID else None
                snapshot = await self._bridge.evaluate(ref) if ref is not None else None
                writable = m.dest == "/" or not m.readonly
                if writable:
                    mutable = await blocking(self._worker.snapshots.new_mutable, snapshot,
                                             f"container {self.id} {m.dest}")
                    self._stack.callback(mutable.release)
                    cm = mutable.mount()
                elif snapshot is not None:
                    cm = snapshot.mount()
                else:
                    raise InvalidArgument(f"container mount {m.dest}: a read-only mount needs a result")
                path = Path(await blocking(self._stack.enter_context, cm))
                if m.dest == "/":
                    self.rootfs = path
                    continue
                if m.selector:
                    from buildkitpy.solver.pathutil import secure_join

                    path = secure_join(path, m.selector)
                self.mounts.append(Mount.bind(path, m.dest, readonly=m.readonly))
            if self.rootfs is None:
                raise InvalidArgument("a container needs a root mount (dest \"/\")")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await blocking(self._stack.close)
            raise

    async def exec(self, process_id: str, init: gateway_pb2.InitMessage, stdin: AsyncIterator[bytes] | None,
                   send: Callable[[gateway_pb2.ExecMessage], Awaitable[None]],
                   signals: anyio.abc.ObjectReceiveStream[str]) -> int:
        from buildkitpy.executor.spec import DEFAULT_PATH, ExecSpec, HostIP, NetworkMode, SecurityMode

        if self._released:
            raise NotFound(f"container {self.id} has been released")
        if init.Tty:
            raise Unimplemented("tty processes are not supported yet")
        if not init.Meta.args:
            raise InvalidArgument("exec needs a command (args is empty)")
        if init.Security == ops_pb2.INSECURE and "security.insecure" not in self._bridge.job.entitlements:
            raise InvalidArgument("security.insecure is not allowed for this build")
        env = list(init.Meta.env)
        if not any(e.startswith("PATH=") for e in env):
            env.append(f"PATH={DEFAULT_PATH}")
        assert self.rootfs is not None
        spec = ExecSpec(
            rootfs=self.rootfs, args=list(init.Meta.args), env=env, cwd=init.Meta.cwd or "/",
            user=init.Meta.user,
            network=NetworkMode.HOST if self._request.Network == ops_pb2.HOST else NetworkMode.NONE,
            security=SecurityMode.INSECURE if init.Security == ops_pb2.INSECURE else SecurityMode.SANDBOX,
            mounts=list(self.mounts),
            extra_hosts=[HostIP(h.Host, h.IP) for h in self._request.extraHosts])
        if self._request.hostname:
            spec.hostname = self._request.hostname
        fds = set(init.Fds) or {0, 1, 2}
        runc_id = f"buildkitpy-exec-{secrets.token_hex(6)}"

        async def out(fd: int, chunk: bytes) -> None:
            if fd in fds:
                await send(gateway_pb2.ExecMessage(ProcessID=process_id,
                                                   File=gateway_pb2.FdMessage(Fd=fd, Data=chunk)))

        executor = self._worker.executor
        code = -1
        scope = anyio.CancelScope()
        with scope:
            async with anyio.create_task_group() as tg:
                async def forward_signals() -> None:
                    async for name in signals:
                        await executor.signal(runc_id, name)

                tg.start_soon(forward_signals)
                await send(gateway_pb2.ExecMessage(ProcessID=process_id,
                                                   Started=gateway_pb2.StartedMessage()))
                self._running[runc_id] = scope
                try:
                    code = await executor.run(
                        spec, stdout=lambda c: out(1, c), stderr=lambda c: out(2, c),
                        stdin=stdin if 0 in fds and stdin is not None else b"", container_id=runc_id)
                finally:
                    self._running.pop(runc_id, None)
                tg.cancel_scope.cancel()
        return code

    async def release(self) -> None:
        from buildkitpy.solver.asyncutil import blocking

        self._released = True
        for scope in list(self._running.values()):
            scope.cancel()  # kills the process (the executor cleans up on cancellation)
        with anyio.CancelScope(shield=True):
            while self._running:
                await anyio.sleep(0.05)
            await blocking(self._stack.close)


async def new_container(bridge: Any, request: gateway_pb2.NewContainerRequest) -> None:
    container_id = request.ContainerID or secrets.token_hex(8)
    if container_id in bridge.containers:
        raise InvalidArgument(f"container {container_id} already exists")
    container = InteractiveContainer(container_id, bridge, request)
    bridge.containers[container_id] = None  # reserved while mounting
    try:
        await container.start()
    except BaseException:
        bridge.containers.pop(container_id, None)
        raise
    bridge.containers[container_id] = container


async def release_container(bridge: Any, container_id: str) -> None:
    container = bridge.containers.pop(container_id, None)
    if container is None:
        raise NotFound(f"container {container_id} not found")
    await container.release()


async def exec_process(bridge: Any, request_iterator: AsyncIterator[gateway_pb2.ExecMessage],
                       send: Callable[[gateway_pb2.ExecMessage], Awaitable[None]]) -> None:
    """The body of an ``ExecProcess`` stream: one or more processes (by ProcessID), each started by
    an ``Init`` message, fed by ``File`` fd 0 messages and ended with ``Exit`` then ``Done``."""
    processes: dict[str, tuple[MemoryObjectSendStream[bytes], MemoryObjectSendStream[str]]] = {}

    async def run_process(pid: str, init: gateway_pb2.InitMessage,
                          stdin_rx: anyio.abc.ObjectReceiveStream[bytes],
                          signal_rx: anyio.abc.ObjectReceiveStream[str]) -> None:
        async def stdin() -> AsyncIterator[bytes]:
            async with stdin_rx:
                async for chunk in stdin_rx:
                    yield chunk

        exit_msg = gateway_pb2.ExitMessage()
        try:
            container = bridge.containers.get(init.ContainerID)
            if container is None:
                raise NotFound(f"container {init.ContainerID} not found")
            code = await container.exec(pid, init, stdin(), send, signal_rx)
            exit_msg.Code = code if code >= 0 else 255
        except BuildkitpyError as exc:
            exit_msg.Code = 255
            exit_msg.Error.CopyFrom(to_rpc_status(exc))
        except Exception as exc:  # noqa: BLE001 - reported to the client, logged here
            log.error("ExecProcess %s failed", pid, exc_info=exc)
            exit_msg.Code = 255
            exit_msg.Error.CopyFrom(to_rpc_status(exc))
        finally:
            processes.pop(pid, None)
        await send(gateway_pb2.ExecMessage(ProcessID=pid, Exit=exit_msg))
        await send(gateway_pb2.ExecMessage(ProcessID=pid, Done=gateway_pb2.DoneMessage()))

    async with anyio.create_task_group() as tg:
        async for msg in request_iterator:
            kind = msg.WhichOneof("Input")
            pid = msg.ProcessID
            if kind == "Init":
                if pid in processes:
                    raise InvalidArgument(f"process {pid} already exists")
                stdin_tx, stdin_rx = anyio.create_memory_object_stream[bytes](64)
                signal_tx, signal_rx = anyio.create_memory_object_stream[str](8)
                processes[pid] = (stdin_tx, signal_tx)
                tg.start_soon(run_process, pid, msg.Init, stdin_rx, signal_rx)
            elif kind == "File":
                if pid not in processes:
                    continue  # the process ended already
                stdin_tx = processes[pid][0]
                if msg.File.Data:
                    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                        await stdin_tx.send(msg.File.Data)
                if msg.File.EOF:
                    await stdin_tx.aclose()
            elif kind == "Signal":
                if pid in processes:
                    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError,
                                             anyio.WouldBlock):
                        processes[pid][1].send_nowait(msg.Signal.Name)
            elif kind == "Resize":
                continue  # no tty, nothing to resize
        # the client closed its side: processes still running keep running until they exit
