"""What to run: the executor's input, independent of LLB (the solver translates ExecOp into it)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_HOSTNAME = "buildkitsandbox"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class NetworkMode(enum.Enum):
    HOST = "host"
    NONE = "none"  # own network namespace with only loopback up (BuildKit's sandbox default)


class SecurityMode(enum.Enum):
    SANDBOX = "sandbox"
    INSECURE = "insecure"  # privileged: all capabilities, no seccomp, host devices allowed


@dataclass(frozen=True)
class Mount:
    """An extra mount in OCI form. ``type`` "bind" (options "ro"/"rw"), "tmpfs" (e.g.
    "size=65536k"), or any filesystem runc can mount; ``source`` is a host path for binds."""

    source: str
    destination: str
    type: str = "bind"
    options: tuple[str, ...] = ()

    @classmethod
    def bind(cls, source: str | Path, destination: str, *, readonly: bool = False) -> Mount:
        return cls(str(source), destination, "bind", ("rbind", "ro" if readonly else "rw"))

    @classmethod
    def tmpfs(cls, destination: str, *, size: int | None = None) -> Mount:
        opts = ["nosuid", "nodev", "mode=1777"]
        if size:
            opts.append(f"size={size}")
        return cls("tmpfs", destination, "tmpfs", tuple(opts))


@dataclass(frozen=True)
class HostIP:
    host: str
    ip: str


@dataclass(frozen=True)
class Ulimit:
    name: str  # e.g. "nofile" (RLIMIT_ prefix optional)
    soft: int
    hard: int


@dataclass
class ExecSpec:
    """A process to run in ``rootfs`` (a directory already mounted read-write by the caller)."""

    rootfs: Path
    args: list[str]
    env: list[str] = field(default_factory=list)
    cwd: str = "/"
    user: str = ""  # "", "name", "uid", "uid:gid", "name:group" -- resolved in the rootfs
    hostname: str = DEFAULT_HOSTNAME
    network: NetworkMode = NetworkMode.NONE
    security: SecurityMode = SecurityMode.SANDBOX
    mounts: list[Mount] = field(default_factory=list)
    extra_hosts: list[HostIP] = field(default_factory=list)
    ulimits: list[Ulimit] = field(default_factory=list)
    readonly_rootfs: bool = False
    # BuildKit leaves no_new_privileges off (containerd's WithNewPrivileges) so setuid tools such
    # as sudo keep working in RUN steps; set it to harden a step.
    no_new_privileges: bool = False
    # Remove every mount-target directory we had to create, not only the deepest one.
    remove_mount_stubs_recursive: bool = True
    # ExecOp's Meta.cgroupParent: the container's cgroup is <parent>/buildkit/<id>, so limits set
    # on the parent (the Engine API's memory/cpu build options) apply to it.
    cgroup_parent: str = ""
