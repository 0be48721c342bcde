"""The OCI runtime config (``config.json``) for one build step, shaped like BuildKit's: containerd's
default Linux spec, ``/run`` left out, hosts/resolv.conf bound read-only, a read-only cgroup mount,
the default capability set, new privileges allowed, no rlimits unless the step sets ulimits."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from buildkitpy.executor import seccomp
from buildkitpy.executor.spec import DEFAULT_PATH, ExecSpec, NetworkMode, SecurityMode
from buildkitpy.executor.user import ResolvedUser
from buildkitpy.userns import running_in_user_namespace

OCI_VERSION = "1.0.2"

DEFAULT_CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]

MASKED_PATHS = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
    "/sys/devices/virtual/powercap",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

# Extra device nodes a privileged (insecure) step gets, as BuildKit's insecure entitlement does.
INSECURE_DEVICES = [
    ("/dev/kmsg", 1, 11), ("/dev/cuse", 10, 203), ("/dev/fuse", 10, 229), ("/dev/kvm", 10, 232),
    ("/dev/net/tun", 10, 200), ("/dev/loop-control", 10, 237),
]


def _all_capabilities() -> list[str]:
    """Every capability the kernel knows (cap_last_cap) that this process holds, by name."""
    names = [
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
        "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
        "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
        "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
        "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
        "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
        "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
        "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
    ]
    try:
        last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        last = 37
    # Only what we hold ourselves can be granted (runc fails with EPERM otherwise), as BuildKit
    # grants its own current capabilities.
    effective = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            effective = int(line.split()[1], 16)
    return [name for bit, name in enumerate(names[:last + 1]) if effective >> bit & 1]


def _with_default_path(env: list[str]) -> list[str]:
    if any(e.startswith("PATH=") for e in env):
        return list(env)
    return [*env, f"PATH={DEFAULT_PATH}"]


def build_config(spec: ExecSpec, user: ResolvedUser, *, hosts_file: Path, resolv_conf: Path,
                 rootfs: Path, container_id: str = "") -> dict[str, Any]:
    insecure = spec.security is SecurityMode.INSECURE
    caps = _all_capabilities() if insecure else list(DEFAULT_CAPABILITIES)
    process: dict[str, Any] = {
        "terminal": False,
        "user": {"uid": user.uid, "gid": user.gid, "additionalGids": list(user.additional_gids)},
        "args": list(spec.args),
        "env": _with_default_path(spec.env),
        "cwd": spec.cwd or "/",
        "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
        "noNewPrivileges": spec.no_new_privileges,
    }
    if insecure:
        process["capabilities"]["inheritable"] = caps
        process["capabilities"]["ambient"] = caps
    if spec.ulimits:
        process["rlimits"] = [{"type": "RLIMIT_" + u.name.upper().removeprefix("RLIMIT_"),
                               "soft": u.soft, "hard": u.hard} for u in spec.ulimits]

    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev"] + ([] if insecure else ["ro"])},
        {"destination": "/etc/resolv.conf", "type": "bind", "source": str(resolv_conf),
         "options": ["nosuid", "noexec", "nodev", "rbind", "ro"]},
        {"destination": "/etc/hosts", "type": "bind", "source": str(hosts_file),
         "options": ["nosuid", "noexec", "nodev", "rbind", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev"] + ([] if insecure else ["ro"])},
    ]
    for m in spec.mounts:
        mounts.append({"destination": os.path.join("/", m.destination), "type": m.type,
                       "source": m.source, "options": list(m.options)})
    # A later mount on the same destination replaces an earlier one (BuildKit's dedup).
    by_dest: dict[str, int] = {}
    deduped: list[dict[str, Any]] = []
    for entry in mounts:
        if entry["destination"] in by_dest:
            deduped[by_dest[entry["destination"]]] = entry
        else:
            by_dest[entry["destination"]] = len(deduped)
            deduped.append(entry)

    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    if spec.network is NetworkMode.NONE:
        namespaces.append({"type": "network"})
    if Path("/sys/fs/cgroup/cgroup.subtree_control").exists() and Path("/proc/self/ns/cgroup").exists():
        namespaces.append({"type": "cgroup"})

    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "maskedPaths": [] if insecure else MASKED_PATHS,
        "readonlyPaths": [] if insecure else READONLY_PATHS,
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
    }
    if insecure:
        linux["resources"]["devices"] = [{"allow": True, "type": "c", "access": "rwm"},
                                         {"allow": True, "type": "b", "access": "rwm"}]
        devices = [{"path": p, "type": "c", "major": ma, "minor": mi, "fileMode": 0o660, "uid": 0, "gid": 0}
                   for p, ma, mi in INSECURE_DEVICES if os.path.exists(p)]
        devices += [{"path": f"/dev/loop{i}", "type": "b", "major": 7, "minor": i, "fileMode": 0o660,
                     "uid": 0, "gid": 0} for i in range(8) if os.path.exists(f"/dev/loop{i}")]
        linux["devices"] = devices
    else:
        linux["seccomp"] = seccomp.default_profile(caps)
    if spec.cgroup_parent and container_id:
        linux["cgroupsPath"] = cgroups_path(spec.cgroup_parent, container_id)

    config = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": str(rootfs), "readonly": spec.readonly_rootfs},
        "hostname": spec.hostname,
        "mounts": deduped,
        "linux": linux,
    }
    if running_in_user_namespace():
        to_rootless(config)
    return config


def cgroups_path(parent: str, container_id: str) -> str:
    """Where a step's cgroup goes under ``parent``, as BuildKit places it (a systemd slice
    ``name.slice:`` takes the id directly, any other parent gets ``buildkit/<id>`` below it)."""
    if parent.endswith(":") and ".slice" in parent:
        return parent + container_id
    return os.path.normpath(os.path.join("/", parent, "buildkit", container_id))


def to_rootless(config: dict[str, Any]) -> None:
    """Adjust a config for runc inside a user namespace, as BuildKit's rootless worker does: ``/sys``
    is a read-only recursive bind of the daemon's own (a fresh sysfs cannot be mounted for a network
    namespace the user namespace does not own, e.g. under ``rootlesskit --net=host``; the mount
    point stays, so the image's filesystem is the same as with root), no cgroup resources, and bind
    mounts that keep the flags the kernel locks on their source mount (a remount dropping nosuid,
    nodev, noexec or ro is refused in a user namespace)."""
    mounts = [m for m in config["mounts"] if not m["destination"].startswith("/sys/")]
    for i, m in enumerate(mounts):
        if m["destination"] == "/sys":
            mounts[i] = {"destination": "/sys", "type": "bind", "source": "/sys",
                         "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}
    config["mounts"] = mounts
    for m in config["mounts"]:
        if "bind" in m["options"] or "rbind" in m["options"]:
            for flag in locked_mount_flags(m["source"]):
                if flag not in m["options"]:
                    m["options"].append(flag)
    config["linux"].pop("resources", None)
    config["linux"].pop("cgroupsPath", None)


_LOCKED_FLAGS = ((os.ST_NOSUID, "nosuid"), (os.ST_NODEV, "nodev"), (os.ST_NOEXEC, "noexec"),
                 (os.ST_RDONLY, "ro"))


def locked_mount_flags(source: str) -> list[str]:
    """The nosuid/nodev/noexec/ro flags of the mount ``source`` lives on."""
    try:
        flags = os.statvfs(source).f_flag
    except OSError:
        return []
    return [name for bit, name in _LOCKED_FLAGS if flags & bit]
