"""Exec ops: ``State.run(...)`` and its mounts (client/llb ``exec.go``)."""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Unpack

from buildkitpy.api import ops_pb2

from . import caps
from .constraints import Constraints, OpOptions, marshal_constraints
from .errors import LLBError
from .state import (
    ARGS,
    CGROUP_PARENT,
    EXTRA_HOSTS,
    NETWORK_MODES,
    SECURITY_MODES,
    ULIMITS,
    VALID_EXIT_CODES,
    NetworkMode,
    SecurityMode,
    State,
)
from .vertex import MarshalContext, MarshalledOp, Output, Vertex

DEFAULT_PATH_UNIX = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_PATH_WINDOWS = "c:\\Windows\\System32;c:\\Windows;C:\\Windows\\System32\\WindowsPowerShell\\v1.0"

CacheSharing = Literal["shared", "private", "locked"]
ContentCache = Literal["default", "on", "off"]
_SHARING = {"shared": ops_pb2.SHARED, "private": ops_pb2.PRIVATE, "locked": ops_pb2.LOCKED}
_CONTENT_CACHE = {"default": ops_pb2.DEFAULT, "on": ops_pb2.ON, "off": ops_pb2.OFF}


@dataclass(frozen=True)
class Mount:
    """A filesystem mount (bind, cache or tmpfs); build with :func:`bind`, :func:`cache`, :func:`tmpfs`."""

    target: str
    source: State
    selector: str = ""
    readonly: bool = False
    output: bool = True
    cache_id: str = ""
    cache_sharing: CacheSharing = "shared"
    tmpfs: bool = False
    tmpfs_size: int = 0
    content_cache: ContentCache = "default"


@dataclass(frozen=True)
class Secret:
    """A secret as a file (``target``) and/or an environment variable (``env``)."""

    id: str
    target: str | None = None
    env: str | None = None
    mode: int = 0o400
    uid: int = 0
    gid: int = 0
    optional: bool = False


@dataclass(frozen=True)
class SSH:
    """An SSH agent socket; ``target`` defaults to ``/run/buildkit/ssh_agent.<n>``."""

    id: str = ""
    target: str = ""
    mode: int = 0o600
    uid: int = 0
    gid: int = 0
    optional: bool = False


RunMount = Mount | Secret | SSH


def bind(target: str, source: State, *, selector: str = "", readonly: bool = False, output: bool = True,
         content_cache: ContentCache = "default") -> Mount:
    """Mount ``source`` (at its path ``selector``) on ``target``; ``output=False`` discards writes."""
    return Mount(target, source, selector=selector, readonly=readonly, output=output,
                 content_cache=content_cache)


def cache(target: str, id: str, *, sharing: CacheSharing = "shared", source: State | None = None) -> Mount:
    """A persistent cache directory shared between builds (``RUN --mount=type=cache``)."""
    if not id:
        raise LLBError(f"cache mount {target}: id can't be empty")
    if sharing not in _SHARING:
        raise LLBError(f"cache mount {target}: invalid sharing {sharing!r}: "
                       f"expected one of {sorted(_SHARING)}")
    return Mount(target, source if source is not None else State(), cache_id=id, cache_sharing=sharing)


def tmpfs(target: str, *, size: int = 0) -> Mount:
    return Mount(target, State(), tmpfs=True, tmpfs_size=size)


def secret(id: str, *, target: str | None = None, env: str | None = None, mode: int = 0o400,
           uid: int = 0, gid: int = 0, optional: bool = False) -> Secret:
    if not id:
        raise LLBError("secret id can't be empty")
    if target is None and env is None:
        raise LLBError(f"secret {id}: give a target path, an env name, or both")
    return Secret(id, target, env, mode, uid, gid, optional)


def ssh(*, id: str = "", target: str = "", mode: int = 0o600, uid: int = 0, gid: int = 0,
        optional: bool = False) -> SSH:
    return SSH(id, target, mode, uid, gid, optional)


class RunOptions(OpOptions, total=False):
    """``State.run`` options; settings here apply to this command only, not to the result state."""

    env: Mapping[str, str]
    cwd: str
    user: str
    network: NetworkMode
    security: SecurityMode
    hostname: str
    valid_exit_codes: Sequence[int]
    readonly_rootfs: bool
    proxy_env: ops_pb2.ProxyEnv
    extra_hosts: Mapping[str, str]
    ulimits: Sequence[tuple[str, int, int]]
    cgroup_parent: str
    cdi_devices: Sequence[tuple[str, bool]]  # (name, optional)


@dataclass(eq=False)
class _MountSlot:
    target: str
    source: Output | None
    spec: Mount
    output: Output | None = None

    @property
    def has_output(self) -> bool:
        m = self.spec
        return m.output and not m.readonly and not m.tmpfs and not m.cache_id


class ExecOp(Vertex):
    def __init__(self, base: State, mounts: Iterable[Mount], secrets: Sequence[Secret], ssh: Sequence[SSH],
                 constraints: Constraints, *, readonly_rootfs: bool = False,
                 proxy_env: ops_pb2.ProxyEnv | None = None, cdi_devices: Sequence[tuple[str, bool]] = ()):
        self.base = base
        self.constraints = constraints
        self.secrets = list(secrets)
        self.ssh = list(ssh)
        self.proxy_env = proxy_env
        self.cdi_devices = list(cdi_devices)
        root = _MountSlot("/", base.output, Mount("/", base, readonly=readonly_rootfs))
        self._mounts = [root]
        root.output = base.output if readonly_rootfs else self._new_output(root)
        self.root = root.output
        for m in mounts:
            self._add_mount(m)
        self._mounts.sort(key=lambda slot: slot.target)  # stable, so equal targets keep their order

    def _new_output(self, slot: _MountSlot) -> Output:
        return Output(self, lambda: self._output_index(slot), platform=self.constraints.platform)

    def _add_mount(self, m: Mount) -> None:
        slot = _MountSlot(m.target, m.source.output, m)
        if m.tmpfs and m.source.output is not None:
            raise LLBError(f"tmpfs mount {m.target}: tmpfs mounts must use scratch")
        if m.readonly:
            slot.output = m.source.output
        elif m.tmpfs:
            slot.output = Output(self, error=f"tmpfs mount for {m.target} can't be used as a parent")
        elif not m.output:
            slot.output = Output(self, error=f"mount marked no-output and {m.target} "
                                             "can't be used as a parent")
        else:
            slot.output = self._new_output(slot)
        self._mounts.append(slot)

    def _output_index(self, slot: _MountSlot) -> int:
        outputs = [s for s in self._mounts if s.has_output]
        if slot not in outputs:
            raise LLBError(f"invalid mount: {slot.target} has no output")
        return outputs.index(slot)

    def get_mount(self, target: str) -> Output | None:
        for slot in self._mounts:
            if slot.target == target:
                return slot.output
        raise LLBError(f"no mount at {target}")

    def inputs(self) -> list[Output]:
        seen: list[Output] = []
        for slot in self._mounts:
            if slot.source is not None and all(slot.source is not s for s in seen):
                seen.append(slot.source)
        return seen

    def _marshal(self, ctx: MarshalContext) -> MarshalledOp:
        base, c = self.base, self.constraints
        args = base.value(ARGS) or []
        if not args:
            raise LLBError("exec: arguments are required")
        cwd = base.get_dir()
        if not cwd:
            raise LLBError("exec: working directory is required")
        added: list[str] = []
        env = base.env()
        ssh = [s if s.target else SSH(s.id, f"/run/buildkit/ssh_agent.{i}", s.mode, s.uid, s.gid, s.optional)
               for i, s in enumerate(self.ssh)]
        if ssh and base.get_env("SSH_AUTH_SOCK") is None:
            env.append(("SSH_AUTH_SOCK", ssh[0].target))
        if ctx.caps is not None:
            if caps.EXEC_META_SETS_DEFAULT_PATH in ctx.caps:
                added.append(caps.EXEC_META_SETS_DEFAULT_PATH)
            else:
                target_os = (ctx.constraints.platform or ctx.default_platform).os
                if target_os != "windows" and all(k != "PATH" for k, _ in env):
                    env.append(("PATH", DEFAULT_PATH_UNIX))

        meta = ops_pb2.Meta(args=args, env=[f"{k}={v}" for k, v in env], cwd=cwd, user=base.get_user(),
                            hostname=base.get_hostname(), cgroupParent=base.value(CGROUP_PARENT, ""),
                            removeMountStubsRecursive=True)
        codes = base.value(VALID_EXIT_CODES)
        if codes is not None:
            meta.validExitCodes.extend(codes)
            added.append(caps.EXEC_VALID_EXIT_CODE)
        for host, ip in base.value(EXTRA_HOSTS, ()):
            meta.extraHosts.add(Host=host, IP=ip)
        ulimits = base.value(ULIMITS, ())
        if ulimits:
            added.append(caps.EXEC_META_ULIMIT)
            for name, soft, hard in ulimits:
                meta.ulimit.add(Name=name, Soft=soft, Hard=hard)
        if c.metadata.linux_resources is not None:
            added.append(caps.EXEC_META_LINUX_RESOURCES)

        network, security = base.get_network(), base.get_security()
        exec_pb = ops_pb2.ExecOp(meta=meta, network=NETWORK_MODES[network], security=SECURITY_MODES[security])
        if network != "sandbox":
            added.append(caps.EXEC_META_NETWORK)
        if security == "insecure":
            added.append(caps.EXEC_META_SECURITY)
        if self.proxy_env is not None:
            exec_pb.meta.proxy_env.CopyFrom(self.proxy_env)
            added.append(caps.EXEC_META_PROXY)
        added.append(caps.EXEC_META_BASE)

        for slot in self._mounts:
            m = slot.spec
            if m.selector:
                added.append(caps.EXEC_MOUNT_SELECTOR)
            if m.cache_id:
                added += [caps.EXEC_MOUNT_CACHE, caps.EXEC_MOUNT_CACHE_SHARING]
            elif m.tmpfs:
                added.append(caps.EXEC_MOUNT_TMPFS)
                if m.tmpfs_size > 0:
                    added.append(caps.EXEC_MOUNT_TMPFS_SIZE)
            elif slot.source is not None:
                added.append(caps.EXEC_MOUNT_BIND)
            if m.content_cache != "default":
                added.append(caps.EXEC_MOUNT_CONTENT_CACHE)
        if self.secrets:
            added.append(caps.EXEC_MOUNT_SECRET)
            if any(s.env is not None for s in self.secrets):
                added.append(caps.EXEC_SECRET_ENV)
        if ssh:
            added.append(caps.EXEC_MOUNT_SSH)
        if self.cdi_devices:
            added.append(caps.EXEC_META_CDI)
            for name, optional in self.cdi_devices:
                exec_pb.cdiDevices.add(name=name, optional=optional)

        if c.platform is None and base.get_platform() is not None:
            c = Constraints(base.get_platform(), c.worker_constraints, c.metadata, c.locations)
        c = c.with_cap(*added)
        op, md = marshal_constraints(ctx.constraints, c, ctx.default_platform)

        out_index = 0
        for slot in self._mounts:
            m = slot.spec
            input_index = -1
            if slot.source is not None:
                inp = slot.source.to_input(ctx)
                for i, existing in enumerate(op.inputs):
                    if existing == inp:
                        input_index = i
                        break
                else:
                    input_index = len(op.inputs)
                    op.inputs.append(inp)
            output_index = -1
            if slot.has_output:
                output_index, out_index = out_index, out_index + 1
            pm = exec_pb.mounts.add(input=input_index, dest=m.target, readonly=m.readonly,
                                    output=output_index, selector=m.selector,
                                    contentCache=_CONTENT_CACHE[m.content_cache])
            if m.cache_id:
                pm.mountType = ops_pb2.CACHE
                pm.cacheOpt.SetInParent()
                pm.cacheOpt.ID, pm.cacheOpt.sharing = m.cache_id, _SHARING[m.cache_sharing]
            if m.tmpfs:
                pm.mountType = ops_pb2.TMPFS
                pm.TmpfsOpt.SetInParent()
                pm.TmpfsOpt.size = m.tmpfs_size
        for s in self.secrets:
            if s.env is not None:
                exec_pb.secretenv.add(ID=s.id, name=s.env, optional=s.optional)
            if s.target is not None:
                exec_pb.mounts.add(input=-1, dest=s.target, mountType=ops_pb2.SECRET,
                                   secretOpt=ops_pb2.SecretOpt(ID=s.id, uid=s.uid, gid=s.gid,
                                                               optional=s.optional, mode=s.mode))
        for sock in ssh:
            exec_pb.mounts.add(input=-1, dest=sock.target, mountType=ops_pb2.SSH,
                               SSHOpt=ops_pb2.SSHOpt(ID=sock.id, uid=sock.uid, gid=sock.gid, mode=sock.mode,
                                                     optional=sock.optional))
        op.exec.CopyFrom(exec_pb)
        return MarshalledOp.of(op, md, c.locations)


class ExecState(State):
    """The state after ``run``: the new root filesystem, plus access to the other mounts' outputs."""

    __slots__ = ("exec_op",)

    def __init__(self, state: State, exec_op: ExecOp) -> None:
        super().__init__(state.output, state._values)
        self.exec_op = exec_op

    def root(self) -> State:
        return State(self.output, self._values)

    def get_mount(self, target: str) -> State:
        """A fresh state for what the command left in the mount at ``target``."""
        return State.from_output(self.exec_op.get_mount(target))


def run(state: State, args: Sequence[str] | str, *, mounts: Iterable[RunMount] = (),
        **options: Unpack[RunOptions]) -> ExecState:
    """Run ``args`` (a list, or a string split like a shell would) on top of ``state``."""
    run_keys = set(RunOptions.__annotations__) - set(OpOptions.__annotations__)
    run_opts: RunOptions = {k: v for k, v in options.items() if k in run_keys}  # type: ignore[assignment]
    op_opts: OpOptions = {k: v for k, v in options.items() if k not in run_keys}  # type: ignore[assignment]
    argv = shlex.split(args) if isinstance(args, str) else list(args)
    base = state.with_value(ARGS, argv)
    for key, value in (run_opts.get("env") or {}).items():
        base = base.add_env(key, value)
    if "cwd" in run_opts:
        base = base.dir(run_opts["cwd"])
    if "user" in run_opts:
        base = base.user(run_opts["user"])
    if "network" in run_opts:
        base = base.network(run_opts["network"])
    if "security" in run_opts:
        base = base.security(run_opts["security"])
    if "hostname" in run_opts:
        base = base.hostname(run_opts["hostname"])
    if "valid_exit_codes" in run_opts:
        base = base.with_value(VALID_EXIT_CODES, [int(c) for c in run_opts["valid_exit_codes"]])
    for host, ip in (run_opts.get("extra_hosts") or {}).items():
        base = base.add_extra_host(host, ip)
    for name, soft, hard in run_opts.get("ulimits") or ():
        base = base.add_ulimit(name, soft, hard)
    if "cgroup_parent" in run_opts:
        base = base.with_cgroup_parent(run_opts["cgroup_parent"])

    fs_mounts: list[Mount] = []
    secrets: list[Secret] = []
    ssh_sockets: list[SSH] = []
    for m in mounts:
        if isinstance(m, Mount):
            fs_mounts.append(m)
        elif isinstance(m, Secret):
            secrets.append(m)
        elif isinstance(m, SSH):
            ssh_sockets.append(m)
        else:
            raise LLBError(f"run: not a mount: {m!r} (use llb.bind/cache/tmpfs/secret/ssh)")
    op = ExecOp(base, fs_mounts, secrets, ssh_sockets, Constraints.from_options(op_opts),
                readonly_rootfs=bool(run_opts.get("readonly_rootfs")), proxy_env=run_opts.get("proxy_env"),
                cdi_devices=run_opts.get("cdi_devices") or ())
    return ExecState(state.with_output(op.root), op)
