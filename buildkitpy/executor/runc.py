"""Running one build step as a runc container.

One ``runc run`` per step with a freshly written bundle (config.json only: the rootfs stays where
the caller mounted it). Output is streamed chunk by chunk as it arrives. Cancelling the calling
task kills the container, deletes it from runc's state and removes the mount stubs, shielded from
the cancellation so nothing is left behind.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import AsyncIterable, Awaitable, Callable
from pathlib import Path

import anyio
from anyio.abc import ByteReceiveStream, Process

from buildkitpy.errors import BuildkitpyError, InvalidArgument
from buildkitpy.executor import netfiles
from buildkitpy.executor.oci import build_config
from buildkitpy.executor.spec import DEFAULT_HOSTNAME, ExecSpec, NetworkMode
from buildkitpy.executor.stubs import MountStubs
from buildkitpy.executor.user import resolve_user
from buildkitpy.snapshot.fs import mkdir_all_in_root, remove_tree, secure_join

log = logging.getLogger(__name__)

# A callback may be a coroutine function: the pump awaits it (backpressure for streamed output).
OutputCallback = Callable[[bytes], None | Awaitable[None]]
# Input: all of it up front, or a stream (closed, i.e. EOF for the process, when it ends).
StdinSource = bytes | AsyncIterable[bytes]
_CHUNK = 64 * 1024
_KILL_GRACE_SECONDS = 3.0


class ContainerStartError(BuildkitpyError):
    """runc could not create or start the container (bad mount, missing executable, ...)."""


class RuncExecutor:
    def __init__(self, root: Path, runc: str = "runc") -> None:
        self.root = Path(root).absolute()
        # Looked up once (as Go's exec.Command does): a bare name made every step's spawn try each
        # PATH directory in the child, with the event loop blocked in vfork until the exec.
        self.runc = shutil.which(runc) or runc
        self._state_dir = self.root / "runc-state"
        self._bundles_dir = self.root / "bundles"
        for d in (self._state_dir, self._bundles_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o711)
        self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        """Kill and delete the containers of a previous daemon on this root, then its bundles.

        A daemon killed with SIGKILL leaves its steps running: ``runc run`` lives in a session of
        its own and the container's init is not our child. Only the root lock's holder gets here,
        so everything in our runc state dir is ours and orphaned. This runs before the snapshot
        manager unmounts leftover rootfs mounts, so nothing still uses them."""
        for container_id in self._list_containers():
            log.warning("killing container %s left running by a previous daemon", container_id)
            proc = subprocess.run([self.runc, "--root", str(self._state_dir), "delete", "--force",
                                   container_id], capture_output=True, text=True, check=False)
            if proc.returncode != 0 and (self._state_dir / container_id).exists():
                log.error("could not delete leftover container %s: %s", container_id,
                          proc.stderr.strip() or f"runc exited with {proc.returncode}")
        for leftover in self._bundles_dir.iterdir():
            remove_tree(leftover)

    def _list_containers(self) -> list[str]:
        proc = subprocess.run([self.runc, "--root", str(self._state_dir), "list", "--format", "json"],
                              capture_output=True, text=True, check=False)
        try:
            listed = json.loads(proc.stdout or "null") or [] if proc.returncode == 0 else []
        except ValueError:
            listed = []
        ids = {c["id"] for c in listed if isinstance(c, dict) and c.get("id")}
        # A container runc cannot load (state written halfway) still has its directory.
        ids.update(p.name for p in self._state_dir.iterdir() if p.is_dir())
        return sorted(ids)

    async def run(self, spec: ExecSpec, *, stdout: OutputCallback, stderr: OutputCallback,
                  stdin: StdinSource | None = None, container_id: str = "") -> int:
        """Run ``spec`` to completion and return its exit status (128+N if killed by signal N).
        ``container_id`` (default: a random one) is the name :meth:`signal` takes."""
        self._validate(spec)
        container_id = container_id or "buildkitpy-" + secrets.token_hex(8)
        bundle = self._bundles_dir / container_id
        bundle.mkdir(mode=0o711)
        stubs: list[MountStubs] = []
        try:
            # The file work before and after runc (passwd lookup, mount stubs, config.json, the
            # bundle's removal) in a worker thread: on the event loop it was ~4 ms per step that
            # every other build's session and export traffic waited behind.
            await anyio.to_thread.run_sync(self._prepare, spec, container_id, bundle, stubs)
            return await self._run_container(container_id, bundle, stdout, stderr, stdin)
        finally:
            with anyio.CancelScope(shield=True):
                if (self._state_dir / container_id).exists():
                    await self._runc("delete", "--force", container_id)
                await anyio.to_thread.run_sync(_clean_up, bundle, stubs)

    # ------------------------------------------------------------------ preparation

    def _prepare(self, spec: ExecSpec, container_id: str, bundle: Path, stubs: list[MountStubs]) -> None:
        """The bundle of one run; the mount stubs it will leave go into ``stubs`` as soon as they are
        known, for the cleanup."""
        rootfs = Path(os.path.abspath(spec.rootfs))
        user = resolve_user(rootfs, spec.user)
        self._ensure_cwd(rootfs, spec.cwd, user.uid, user.gid)
        hosts_file = self._hosts_file(bundle, spec)
        resolv_conf = self._resolv_conf(spec.network)
        stubs.append(MountStubs.record(rootfs, ["/etc/resolv.conf", "/etc/hosts",
                                                *(m.destination for m in spec.mounts)],
                                       recursive=spec.remove_mount_stubs_recursive))
        config = build_config(spec, user, hosts_file=hosts_file, resolv_conf=resolv_conf, rootfs=rootfs,
                              container_id=container_id)
        (bundle / "config.json").write_text(json.dumps(config))

    @staticmethod
    def _validate(spec: ExecSpec) -> None:
        if not spec.args:
            raise InvalidArgument("exec needs a command (args is empty)")
        if not Path(spec.rootfs).is_dir():
            raise InvalidArgument(f"rootfs {spec.rootfs} is not a directory")
        for env in spec.env:
            if "=" not in env:
                raise InvalidArgument(f"environment entry {env!r} is not NAME=value")
        for m in spec.mounts:
            if not m.destination or not m.type:
                raise InvalidArgument(f"mount {m} needs a destination and a type")
            if m.type == "bind" and not os.path.exists(m.source):
                raise InvalidArgument(f"bind mount source {m.source} does not exist")

    @staticmethod
    def _ensure_cwd(rootfs: Path, cwd: str, uid: int, gid: int) -> None:
        target = secure_join(rootfs, cwd or "/")
        if target.is_dir():
            return
        try:
            mkdir_all_in_root(rootfs, cwd, 0o755, uid, gid)
        except OSError as exc:
            raise InvalidArgument(f"cannot create working directory {cwd}: {exc.strerror or exc}") from None

    def _hosts_file(self, bundle: Path, spec: ExecSpec) -> Path:
        if spec.hostname == DEFAULT_HOSTNAME and not spec.extra_hosts:
            shared = self.root / "hosts"
            if not shared.exists():
                netfiles.write_atomically(shared, netfiles.hosts_content(DEFAULT_HOSTNAME, []))
            return shared
        try:
            content = netfiles.hosts_content(spec.hostname, spec.extra_hosts)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        path = bundle / "hosts"
        netfiles.write_atomically(path, content)
        return path

    def _resolv_conf(self, network: NetworkMode) -> Path:
        """Generated once and again whenever the host's file changes."""
        path = self.root / ("resolv-host.conf" if network is NetworkMode.HOST else "resolv.conf")
        source = netfiles.host_resolv_conf_path(network)
        try:
            source_mtime = source.stat().st_mtime
            text = source.read_text()
        except OSError:
            source_mtime, text = 0.0, ""
        if not path.exists() or path.stat().st_mtime < source_mtime:
            netfiles.write_atomically(path, netfiles.resolv_conf_content(text, network))
        return path

    # ------------------------------------------------------------------ running

    async def _run_container(self, container_id: str, bundle: Path, stdout: OutputCallback,
                             stderr: OutputCallback, stdin: StdinSource | None) -> int:
        log_file = bundle / "runc-log.json"
        process = await anyio.open_process(
            [self.runc, "--root", str(self._state_dir), "--log", str(log_file), "--log-format", "json",
             "run", "--bundle", str(bundle), container_id],
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            async with anyio.create_task_group() as tg:
                assert process.stdout is not None and process.stderr is not None
                tg.start_soon(_pump, process.stdout, stdout)
                tg.start_soon(_pump, process.stderr, stderr)
                feeding = anyio.CancelScope()
                if stdin is not None:
                    tg.start_soon(_feed_within, feeding, process, stdin)
                code = await process.wait()
                feeding.cancel()  # a stream may never end on its own
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._kill(container_id, process)
            raise
        if code != 0:
            failure = _runc_failure(log_file)
            if failure:
                raise ContainerStartError(failure)
        return 128 - code if code < 0 else code

    async def signal(self, container_id: str, signal_name: str) -> None:
        """Send a signal (``INT``, ``SIGTERM``, ``9``, ...) to a running container's process."""
        name = signal_name.upper()
        if not name.isdigit() and not name.startswith("SIG"):
            name = "SIG" + name
        try:
            signal.Signals[name] if not name.isdigit() else signal.Signals(int(name))
        except (KeyError, ValueError):
            raise InvalidArgument(f"unknown signal {signal_name!r}") from None
        await self._runc("kill", container_id, name)

    async def _kill(self, container_id: str, process: Process) -> None:
        """Kill the container (or runc itself if it never got that far) and reap runc."""
        await self._runc("kill", container_id, "KILL")
        with anyio.move_on_after(_KILL_GRACE_SECONDS):
            await process.wait()
            return
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await process.wait()

    async def _runc(self, *args: str) -> int:
        result = await anyio.run_process([self.runc, "--root", str(self._state_dir), *args], check=False)
        return result.returncode


def _clean_up(bundle: Path, stubs: list[MountStubs]) -> None:
    for recorded in stubs:
        recorded.cleanup()
    remove_tree(bundle)


async def _pump(stream: ByteReceiveStream, callback: OutputCallback) -> None:
    async with stream:
        while True:
            try:
                chunk = await stream.receive(_CHUNK)
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                return
            result = callback(chunk)
            if inspect.isawaitable(result):
                await result


async def _feed_within(scope: anyio.CancelScope, process: Process, data: StdinSource) -> None:
    with scope:
        await _feed(process, data)


async def _feed(process: Process, data: StdinSource) -> None:
    assert process.stdin is not None
    try:
        async with process.stdin:
            if isinstance(data, bytes):
                await process.stdin.send(data)
            else:
                async for chunk in data:
                    await process.stdin.send(chunk)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, BrokenPipeError):
        pass  # the process exited (or closed stdin) before reading everything


def _runc_failure(log_file: Path) -> str:
    """The error runc logged when it failed to create or start the container, if any."""
    try:
        lines = log_file.read_text().splitlines()
    except OSError:
        return ""
    errors = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("level") in ("error", "fatal") and entry.get("msg"):
            errors.append(entry["msg"])
    return errors[-1] if errors else ""
