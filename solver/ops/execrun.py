"""Preparing an ExecOp's mounts, running it on the worker's executor, committing its outputs.

Mount kinds: bind mounts of an input (read-only views of the committed snapshot, or a writable
snapshot on top of it that becomes an output or is discarded), persistent cache mounts, tmpfs, and
secrets fetched from the client's session into a private tmpfs-backed file, and SSH agent sockets
forwarding to the client's agent (:mod:`buildkitpy.session.sshforward`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from opentelemetry import trace

from buildkitpy.api import ops_pb2
from buildkitpy.errors import NotFound, SessionNotFound, SolveError
from buildkitpy.executor import secretdirs
from buildkitpy.executor.spec import DEFAULT_PATH, ExecSpec, HostIP, Mount, NetworkMode, SecurityMode, Ulimit
from buildkitpy.progress import ProgressBus
from buildkitpy.snapshot.api import ImmutableSnapshot, MutableSnapshot
from buildkitpy.snapshot.fs import mkdir_all_in_root
from buildkitpy.solver.asyncutil import blocking, release_all
from buildkitpy.solver.loader import SCRATCH, SKIP_OUTPUT
from buildkitpy.solver.ops.base import OpContext
from buildkitpy.solver.pathutil import secure_join
from buildkitpy.solver.steplog import StepLog, log_path


async def _session(ctx: OpContext):  # noqa: ANN202
    sessions = ctx.worker.sessions
    if sessions is None:
        raise SessionNotFound("secrets need a client session and this worker has none")
    last: Exception | None = None
    for sid in ctx.job.session_ids:
        try:
            return await sessions.get(sid, timeout=5.0)
        except SessionNotFound as exc:
            last = exc
    raise SessionNotFound(f"no active session to fetch secrets from ({last or 'the build has no session'})")


async def _secret(ctx: OpContext, secret_id: str, optional: bool) -> bytes | None:
    from buildkitpy.session.secrets import SecretNotFound, get_secret

    try:
        return await get_secret(await _session(ctx), secret_id)
    except (SecretNotFound, SessionNotFound, NotFound) as exc:
        if optional:
            return None
        # BuildKit's wording ("secret <id>: not found"); our cause follows for the daemon log reader
        raise SolveError(f"secret {secret_id}: not found ({exc})") from exc


async def _ssh_agent_socket(ctx: OpContext, astack: contextlib.AsyncExitStack,
                            opt: ops_pb2.SSHOpt) -> Path | None:
    """A socket forwarding to the client's agent ``opt.ID``, open until the exec's mounts close;
    None for an optional mount the client does not forward."""
    from buildkitpy.session import sshforward

    try:
        session = await _session(ctx)
    except SessionNotFound:
        session = None
    try:
        await sshforward.check_agent(session, opt.ID)
    except sshforward.SSHAgentNotForwarded as exc:
        if opt.optional:
            return None
        raise SolveError(str(exc)) from exc
    assert session is not None
    return await astack.enter_async_context(sshforward.agent_socket(
        session, opt.ID, ctx.worker.root / "ssh-sockets", uid=opt.uid, gid=opt.gid, mode=opt.mode))


async def run_exec(ctx: OpContext, op: ops_pb2.ExecOp,
                   inputs: list[ImmutableSnapshot | None]) -> list[ImmutableSnapshot]:
    from buildkitpy.solver.ops.exec import check_entitlements

    check_entitlements(op, ctx.job.entitlements)
    snapshots = ctx.worker.snapshots
    vertex = ctx.vertex
    mutables: dict[int, MutableSnapshot] = {}  # mount index -> writable snapshot
    outputs: dict[int, ImmutableSnapshot] = {}
    exits: list = []  # mount context managers to exit (blocking), innermost last
    try:
        async with contextlib.AsyncExitStack() as astack:
            # File work (this dir, the step log below) in worker threads, not on the event loop
            # every build's session and export traffic runs on
            secret_dir = await blocking(secretdirs.create, ctx.worker.root)
            astack.callback(_remove_tree, secret_dir)
            rootfs: Path | None = None
            extra: list[tuple[str, Mount]] = []
            for i, m in enumerate(op.mounts):
                if m.mountType == ops_pb2.BIND:
                    base = None if m.input == SCRATCH else inputs[m.input]
                    writable = not m.readonly or m.dest == "/"
                    if writable:
                        mutable = await blocking(snapshots.new_mutable, base, f"{vertex.name} {m.dest}")
                        mutables[i] = mutable
                        cm = mutable.mount()
                    elif base is not None:
                        cm = base.mount()
                    else:
                        cm = contextlib.nullcontext(Path(tempfile.mkdtemp(dir=secret_dir)))
                    path = Path(await blocking(cm.__enter__))
                    exits.append(cm)
                    if m.dest == "/":
                        rootfs = path
                        continue
                    source = secure_join(path, m.selector) if m.selector else path
                    if not source.exists():
                        raise SolveError(f"mount {m.dest}: selector {m.selector} does not exist in the input")
                    extra.append((m.dest, Mount.bind(source, m.dest, readonly=m.readonly)))
                elif m.mountType == ops_pb2.CACHE:
                    cache_id = m.cacheOpt.ID or m.dest
                    seed = None if m.input == SCRATCH else inputs[m.input]
                    path = await astack.enter_async_context(
                        ctx.shared.cache_mounts.acquire(cache_id, m.cacheOpt.sharing, seed))
                    if m.selector:  # resolved inside the cache dir: never escapes it (CVE-2024-23651)
                        path = await blocking(_cache_subdir, path, m.selector)
                    extra.append((m.dest, Mount.bind(path, m.dest, readonly=m.readonly)))
                elif m.mountType == ops_pb2.TMPFS:
                    extra.append((m.dest, Mount.tmpfs(m.dest, size=m.TmpfsOpt.size or None)))
                elif m.mountType == ops_pb2.SECRET:
                    data = await _secret(ctx, m.secretOpt.ID, m.secretOpt.optional)
                    if data is None:
                        continue
                    f = secret_dir / f"secret-{i}"
                    f.write_bytes(data)
                    os.chown(f, m.secretOpt.uid, m.secretOpt.gid)
                    os.chmod(f, m.secretOpt.mode or 0o400)
                    extra.append((m.dest, Mount.bind(f, m.dest, readonly=True)))
                elif m.mountType == ops_pb2.SSH:
                    sock = await _ssh_agent_socket(ctx, astack, m.SSHOpt)
                    if sock is not None:
                        extra.append((m.dest, Mount.bind(sock, m.dest)))
            if rootfs is None:
                raise SolveError("exec op has no root mount")
            env = list(op.meta.env) + proxy_env_list(op.meta.proxy_env)
            for se in op.secretenv:
                data = await _secret(ctx, se.ID, se.optional)
                if data is not None:
                    env.append(f"{se.name}={data.decode(errors='replace')}")
            if not any(e.startswith("PATH=") for e in env):
                env.append(f"PATH={DEFAULT_PATH}")
            extra.sort(key=lambda item: item[0].rstrip("/").count("/"))
            spec = ExecSpec(
                rootfs=rootfs, args=list(op.meta.args), env=env, cwd=op.meta.cwd or "/", user=op.meta.user,
                network=NetworkMode.NONE if op.network == ops_pb2.NONE else NetworkMode.HOST,
                security=SecurityMode.INSECURE if op.security == ops_pb2.INSECURE else SecurityMode.SANDBOX,
                mounts=[mnt for _, mnt in extra],
                extra_hosts=[HostIP(h.Host, h.IP) for h in op.meta.extraHosts],
                ulimits=[Ulimit(u.Name, u.Soft, u.Hard) for u in op.meta.ulimit],
                remove_mount_stubs_recursive=op.meta.removeMountStubsRecursive,
                cgroup_parent=op.meta.cgroupParent)
            if op.meta.hostname:
                spec.hostname = op.meta.hostname
            progress = ctx.job.progress
            step_log = await blocking(_open_step_log, ctx, progress, vertex.digest)
            try:
                with trace.get_tracer("buildkitpy").start_as_current_span(
                        "exec " + " ".join(spec.args)[:200], attributes={"cwd": spec.cwd}):
                    code = await ctx.worker.executor.run(spec, stdout=step_log.writer(1),
                                                         stderr=step_log.writer(2))
            finally:
                step_log.close()
            valid = list(op.meta.validExitCodes) or [0]
            if code not in valid:
                raise SolveError(f"process \"{' '.join(op.meta.args)}\" did not complete successfully: "
                                 f"exit code: {code}", exit_code=code)
        # all mounts are still open here; unmount before committing
        while exits:
            await blocking(exits.pop().__exit__, None, None, None)
        for i, m in enumerate(op.mounts):
            if m.mountType == ops_pb2.BIND and m.output != SKIP_OUTPUT and i in mutables:
                mutable = mutables.pop(i)
                outputs[m.output] = await blocking(mutable.commit)
        return [outputs.pop(k) for k in sorted(outputs)]
    finally:
        while exits:
            with contextlib.suppress(Exception):
                await blocking(exits.pop().__exit__, None, None, None)
        await release_all([*mutables.values(), *outputs.values()])


def _open_step_log(ctx: OpContext, progress: ProgressBus, digest: str) -> StepLog:
    """The step's log, its file opened; a build's first step also trims the oldest build log
    folders (with 200 kept: a scandir, 200 stats and removing one folder, 4 ms a build)."""
    return StepLog(lambda stream, data: progress.log(digest, stream, data),
                   log_path(ctx.worker.root, ctx.job.id, digest))


def _cache_subdir(cache_dir: Path, selector: str) -> Path:
    """The directory at ``selector`` inside a cache dir, symlinks resolved within it, created if
    missing."""
    try:
        mkdir_all_in_root(cache_dir, selector)
        path = secure_join(cache_dir, selector)
    except OSError as exc:
        raise SolveError(f"cache mount selector {selector}: {exc.strerror or exc}") from exc
    if path.is_symlink() or not path.is_dir():
        raise SolveError(f"cache mount selector {selector} is not a directory in the cache")
    return path


def _remove_tree(path: Path) -> None:
    import shutil
    shutil.rmtree(path, ignore_errors=True)


def proxy_env_list(proxy: ops_pb2.ProxyEnv) -> list[str]:
    """The proxy settings a step gets in both spellings, as BuildKit's executor adds them (they are
    left out of the cache key, so a proxy change does not rebuild)."""
    out = []
    for upper, value in (("HTTP_PROXY", proxy.http_proxy), ("HTTPS_PROXY", proxy.https_proxy),
                         ("FTP_PROXY", proxy.ftp_proxy), ("NO_PROXY", proxy.no_proxy),
                         ("ALL_PROXY", proxy.all_proxy)):
        if value:
            out += [f"{upper}={value}", f"{upper.lower()}={value}"]
    return out
