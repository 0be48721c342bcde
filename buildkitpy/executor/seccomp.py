"""The seccomp profile for sandboxed build containers: an allow-list, as BuildKit's.

BuildKit loads the Docker/Moby default profile (an allow-list: default action errno, extra syscalls
unlocked per granted capability and per architecture) and converts it to the OCI ``linux.seccomp``
object for the container's capability set. We do the same with the Docker-format profile Debian
ships at ``/usr/share/containers/seccomp.json`` (package ``golang-github-containers-common``, the
containers/common default used by podman): ``archMap`` gives the host architecture plus its
sub-architectures, and each ``syscalls[]`` rule is kept only if its ``includes``/``excludes``
conditions (capabilities, architecture, ``minKernel``) hold.

That file is looser than BuildKit's profile in one respect, so :data:`_CAPABILITY_GATED` narrows it
back: it allows namespaces (``unshare``, ``setns``, namespace flags of ``clone``), the mount API,
keyrings, ``reboot``, ``syslog``, NUMA policy and ``pidfd_getfd`` to everyone and leaves them to
the capability checks; BuildKit refuses them with EPERM unless the matching capability is granted.
Keyrings are refused to any container without CAP_SYS_ADMIN (BuildKit refuses them always; its
insecure mode has no seccomp at all, so the difference is only seen when CAP_SYS_ADMIN is added to a
sandbox). Other differences, kept as the file has them: syscalls it does not list (newer ones
such as ``fchmodat2``, ``futex_waitv``, ``cachestat``) fail with its ``defaultErrnoRet`` ENOSYS
rather than EPERM, so libcs fall back to the older call; and the file refuses a few calls BuildKit
allows (``vmsplice``, ``io_pgetevents``, the legacy ``nice``). And on a kernel without the x32
ABI the filter has no x32 section (:func:`without_unrunnable_x32`): an x32 call, which fails there
anyway, kills its caller instead of returning ENOSYS, and runc spends ~6 ms less CPU per container.

When the file is missing, :func:`_fallback_profile` (a deny-list of the same rules; unknown syscalls
allowed) is used and a warning logged once. ``security.insecure`` steps get no seccomp at all
(decided by the OCI spec builder, as BuildKit does).
"""

from __future__ import annotations

import copy
import errno
import functools
import json
import logging
import os
import platform
import re
import signal
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PROFILE_PATH = Path("/usr/share/containers/seccomp.json")

_ERRNO_ACTIONS = ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE")

# CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET
_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
_NAMESPACE_MASK = functools.reduce(lambda a, b: a | b, _NAMESPACE_FLAGS)

# Syscalls refused with EPERM unless the capability is granted (BuildKit's rules the file lacks).
# ``clone``/``clone3`` are handled separately: only their namespace-creating forms are refused.
_CAPABILITY_GATED: dict[str, tuple[str, ...]] = {
    "CAP_SYS_ADMIN": (
        "unshare", "setns",  # namespaces
        "mount", "umount", "umount2", "pivot_root", "fsconfig", "fsmount", "fsopen", "fspick",
        "move_mount", "open_tree", "mount_setattr",  # mount API
        "keyctl", "add_key", "request_key",  # keyrings are not namespaced
    ),
    "CAP_SYS_BOOT": ("reboot",),
    "CAP_SYSLOG": ("syslog",),
    "CAP_SYS_NICE": ("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"),
    "CAP_SYS_PTRACE": ("pidfd_getfd",),
}


class SeccompProfileError(ValueError):
    """The Docker-format seccomp profile cannot be converted (names the file and the cause)."""


# uname machine -> (libseccomp native architecture, the arch name used by includes/excludes)
_MACHINES: dict[str, tuple[str, str]] = {
    "x86_64": ("SCMP_ARCH_X86_64", "amd64"),
    "amd64": ("SCMP_ARCH_X86_64", "amd64"),
    "i386": ("SCMP_ARCH_X86", "x86"),
    "i686": ("SCMP_ARCH_X86", "x86"),
    "aarch64": ("SCMP_ARCH_AARCH64", "arm64"),
    "arm64": ("SCMP_ARCH_AARCH64", "arm64"),
    "armv7l": ("SCMP_ARCH_ARM", "arm"),
    "armv6l": ("SCMP_ARCH_ARM", "arm"),
    "ppc64le": ("SCMP_ARCH_PPC64LE", "ppc64le"),
    "ppc64": ("SCMP_ARCH_PPC64", "ppc64"),
    "s390x": ("SCMP_ARCH_S390X", "s390x"),
    "riscv64": ("SCMP_ARCH_RISCV64", "riscv64"),
    "loongarch64": ("SCMP_ARCH_LOONGARCH64", "loong64"),
    "mips64": ("SCMP_ARCH_MIPS64", "mips64"),
}


def default_profile(capabilities: Iterable[str]) -> dict[str, Any]:
    """The OCI ``linux.seccomp`` object for a sandboxed container with ``capabilities``.

    Raises :class:`SeccompProfileError` if the system profile exists but cannot be converted.
    """
    return copy.deepcopy(_cached_default(frozenset(capabilities)))


@functools.lru_cache(maxsize=32)
def _cached_default(capabilities: frozenset[str]) -> dict[str, Any]:
    if not PROFILE_PATH.is_file():
        _warn_fallback()
        return without_unrunnable_x32(_fallback_profile(capabilities))
    profile = convert(load_docker_profile(PROFILE_PATH), capabilities)
    return without_unrunnable_x32(restrict_to_buildkit_rules(profile, capabilities))


def without_unrunnable_x32(profile: dict[str, Any]) -> dict[str, Any]:
    """The profile without its x32 sub-architecture when the kernel runs no x32 system calls.

    runc compiles the filter in every container it starts, and each architecture is a section of
    its own: x86_64, x86 and x32 took 33 ms of runc's CPU for ``/bin/true`` here, 27 ms without
    x32 (medians of 15). On a kernel without the x32 ABI (as this machine's) such a call fails
    anyway: with x32 in the filter the kernel answers ENOSYS, without it the filter kills the
    caller (SIGSYS), which is the only difference a container can see. Where the kernel runs x32
    code the profile keeps it, as BuildKit's does.
    """
    arches = profile.get("architectures") or []
    if "SCMP_ARCH_X32" not in arches or kernel_runs_x32():
        return profile
    return {**profile, "architectures": [a for a in arches if a != "SCMP_ARCH_X32"]}


# getpid (39 in both tables) with the x32 bit; exit 0 when it ran, 3 when it was refused
_X32_PROBE = ("import ctypes, sys\n"
              "libc = ctypes.CDLL(None, use_errno=True)\n"
              "sys.exit(0 if libc.syscall(0x40000000 | 39) > 0 else 3)\n")


@functools.cache
def kernel_runs_x32() -> bool:
    """Whether an x32 system call runs here, asked in a child process: under a seccomp filter
    without x32 (the daemon in a container) the call kills its caller. When the probe cannot
    tell, the answer is yes, which keeps x32 in the profile."""
    if platform.machine() not in ("x86_64", "amd64"):
        return False
    try:
        probe = subprocess.run([sys.executable, "-I", "-S", "-c", _X32_PROBE], stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        log.warning("seccomp: cannot tell whether the kernel runs x32 system calls (%s); keeping x32", err)
        return True
    if probe.returncode in (3, -signal.SIGSYS):
        return False
    if probe.returncode != 0:
        log.warning("seccomp: the x32 probe failed (exit %s: %s); keeping x32", probe.returncode,
                    probe.stderr.decode(errors="replace").strip()[-300:])
    return True


@functools.cache
def _warn_fallback() -> None:
    log.warning("seccomp: %s is missing (install golang-github-containers-common); sandboxed steps "
                "get a deny-list profile instead of the default allow-list", PROFILE_PATH)


def load_docker_profile(path: Path) -> dict[str, Any]:
    """Read a Docker-format profile; a clear error for unreadable or non-object JSON."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SeccompProfileError(f"seccomp profile {path}: {err}") from err
    if not isinstance(data, dict):
        raise SeccompProfileError(
            f"seccomp profile {path}: expected a JSON object, got {type(data).__name__}")
    return data


def host_kernel() -> tuple[int, int]:
    """The running kernel's (major, minor), as ``minKernel`` conditions compare it."""
    return _parse_kernel(os.uname().release)


def _parse_kernel(release: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", release)
    if match is None:
        raise SeccompProfileError(f"kernel version {release!r} is not of the form MAJOR.MINOR")
    return int(match[1]), int(match[2])


def convert(profile: dict[str, Any], capabilities: Iterable[str], *, machine: str | None = None,
            kernel: tuple[int, int] | None = None) -> dict[str, Any]:
    """Convert a Docker-format profile to the OCI ``linux.seccomp`` object for one container.

    A rule is kept when every capability in ``includes.caps`` is granted, the architecture is in
    ``includes.arches`` (if given) and the kernel is at least ``includes.minKernel`` (if given); it
    is dropped when any of ``excludes``' capabilities is granted, the architecture is listed there
    or the kernel is at least ``excludes.minKernel``.
    """
    caps = set(capabilities)
    machine = machine or platform.machine()
    native, arch_name = _MACHINES.get(machine, (None, machine))

    def need(cond: bool, what: str) -> None:
        if not cond:
            raise SeccompProfileError(f"seccomp profile: {what}")

    need(isinstance(profile.get("defaultAction"), str), "defaultAction must be a string")
    if profile.get("architectures") and profile.get("archMap"):
        raise SeccompProfileError("seccomp profile: both 'architectures' and 'archMap' are given; use one")
    out: dict[str, Any] = {"defaultAction": profile["defaultAction"]}
    default_errno = _errno_of(profile, "defaultErrnoRet", "defaultErrno")
    if default_errno is not None and out["defaultAction"] in _ERRNO_ACTIONS:
        out["defaultErrnoRet"] = default_errno
    if profile.get("archMap"):
        need(isinstance(profile["archMap"], list), "archMap must be a list")
        for entry in profile["archMap"]:
            need(isinstance(entry, dict) and isinstance(entry.get("architecture"), str),
                 f"archMap entry {entry!r} has no architecture")
            if entry["architecture"] == native:
                out["architectures"] = [native, *(entry.get("subArchitectures") or [])]
                break
    elif profile.get("architectures"):
        out["architectures"] = list(profile["architectures"])
    for key in ("flags", "listenerPath", "listenerMetadata"):
        if profile.get(key):
            out[key] = profile[key]

    syscalls: list[dict[str, Any]] = []
    rules = profile.get("syscalls") or []
    need(isinstance(rules, list), "syscalls must be a list")
    for i, rule in enumerate(rules):
        need(isinstance(rule, dict), f"syscalls[{i}] must be an object")
        names = rule.get("names") or []
        if rule.get("name"):
            need(not names, f"syscalls[{i}] has both 'name' and 'names'; use one")
            names = [rule["name"]]
        need(isinstance(names, list) and bool(names) and all(isinstance(n, str) for n in names),
             f"syscalls[{i}] needs a non-empty list of syscall names")
        need(isinstance(rule.get("action"), str), f"syscalls[{i}] ({names[0]}, ...) has no action")
        if not _applies(rule, caps, arch_name, kernel, i):
            continue
        converted: dict[str, Any] = {"names": list(names), "action": rule["action"]}
        errno_ret = _errno_of(rule, "errnoRet", "errno")
        if errno_ret is not None and rule["action"] in _ERRNO_ACTIONS:
            converted["errnoRet"] = errno_ret
        if rule.get("args"):
            converted["args"] = [_arg(a, i) for a in rule["args"]]
        syscalls.append(converted)
    out["syscalls"] = syscalls
    return out


def _applies(rule: dict[str, Any], caps: set[str], arch: str, kernel: tuple[int, int] | None,
             index: int) -> bool:
    includes = rule.get("includes") or {}
    excludes = rule.get("excludes") or {}
    if not isinstance(includes, dict) or not isinstance(excludes, dict):
        raise SeccompProfileError(f"seccomp profile: syscalls[{index}] includes/excludes must be objects")
    if includes.get("arches") and arch not in includes["arches"]:
        return False
    if any(c not in caps for c in includes.get("caps") or ()):
        return False
    if includes.get("minKernel") and _kernel_at_least(includes["minKernel"], kernel, index) is False:
        return False
    if excludes.get("arches") and arch in excludes["arches"]:
        return False
    if any(c in caps for c in excludes.get("caps") or ()):
        return False
    if excludes.get("minKernel") and _kernel_at_least(excludes["minKernel"], kernel, index):
        return False
    return True


def _kernel_at_least(minimum: Any, kernel: tuple[int, int] | None, index: int) -> bool:
    if not isinstance(minimum, str):
        raise SeccompProfileError(f"seccomp profile: syscalls[{index}] minKernel must be a string like '4.8'")
    try:
        wanted = _parse_kernel(minimum)
    except SeccompProfileError:
        raise SeccompProfileError(f"seccomp profile: syscalls[{index}] minKernel {minimum!r} "
                                  "is not of the form MAJOR.MINOR") from None
    return (kernel or host_kernel()) >= wanted


def _errno_of(obj: dict[str, Any], number_key: str, name_key: str) -> int | None:
    """An errno given as a number, or failing that by name (``"EPERM"``)."""
    if obj.get(number_key) is not None:
        if not isinstance(obj[number_key], int) or obj[number_key] < 0:
            raise SeccompProfileError(f"seccomp profile: {number_key} {obj[number_key]!r} is not an errno")
        return obj[number_key]
    name = obj.get(name_key)
    if name:
        value = getattr(errno, str(name), None)
        if not isinstance(value, int):
            raise SeccompProfileError(f"seccomp profile: {name_key} {name!r} is not an errno name")
        return value
    return None


def _arg(arg: Any, index: int) -> dict[str, Any]:
    if not (isinstance(arg, dict) and isinstance(arg.get("index"), int) and isinstance(arg.get("op"), str)):
        raise SeccompProfileError(f"seccomp profile: syscalls[{index}] argument {arg!r} needs index and op")
    return {"index": arg["index"], "value": int(arg.get("value") or 0),
            "valueTwo": int(arg.get("valueTwo") or 0), "op": arg["op"]}


def restrict_to_buildkit_rules(profile: dict[str, Any], capabilities: Iterable[str], *,
                               machine: str | None = None) -> dict[str, Any]:
    """Refuse what BuildKit's profile refuses without the matching capability (see module doc)."""
    caps = set(capabilities)
    refused = {name for cap, names in _CAPABILITY_GATED.items() if cap not in caps for name in names}
    no_namespaces = "CAP_SYS_ADMIN" not in caps
    refused_forms = {"clone", "clone3"} if no_namespaces else set()  # re-added below, narrowed
    syscalls: list[dict[str, Any]] = []
    for rule in profile["syscalls"]:
        if rule["action"] == "SCMP_ACT_ALLOW":
            names = [n for n in rule["names"] if n not in refused and n not in refused_forms]
            if not names:
                continue
            rule = {**rule, "names": names}
        syscalls.append(rule)
    if refused:
        syscalls.append({"names": sorted(refused), "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM})
    if no_namespaces:
        syscalls.extend(_clone_without_namespaces(machine or platform.machine()))
    return {**profile, "syscalls": syscalls}


def _clone_without_namespaces(machine: str) -> list[dict[str, Any]]:
    """``clone`` allowed unless it asks for a new namespace (EPERM); ``clone3``, whose flags seccomp
    cannot see, fails with ENOSYS so libcs fall back to ``clone``."""
    flags_arg = 1 if machine.startswith("s390") else 0  # s390 swaps clone's first two arguments
    rules: list[dict[str, Any]] = [
        {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": flags_arg, "value": _NAMESPACE_MASK, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
    ]
    for flag in _NAMESPACE_FLAGS:
        rules.append({"names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM,
                      "args": [{"index": flags_arg, "value": flag, "valueTwo": flag,
                                "op": "SCMP_CMP_MASKED_EQ"}]})
    rules.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS})
    return rules


# --- fallback when no profile file is installed: a deny-list ------------------------------------

_FALLBACK_DENIED = (
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module", "delete_module",
    "finit_module", "fsconfig", "fsmount", "fsopen", "fspick", "get_kernel_syms", "get_mempolicy",
    "init_module", "io_uring_enter", "io_uring_register", "io_uring_setup", "ioperm", "iopl", "kcmp",
    "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie", "mbind", "mount", "mount_setattr",
    "move_mount", "move_pages", "name_to_handle_at", "nfsservctl", "open_by_handle_at", "open_tree",
    "perf_event_open", "pivot_root", "process_madvise", "process_vm_readv", "process_vm_writev",
    "query_module", "quotactl", "quotactl_fd", "reboot", "request_key", "set_mempolicy", "setns",
    "settimeofday", "stime", "swapoff", "swapon", "syslog", "sysfs", "_sysctl", "umount", "umount2",
    "unshare", "uselib", "userfaultfd", "ustat", "vhangup", "vm86", "vm86old",
)

# Unlocked by the matching capability, as in Docker's profile.
_FALLBACK_UNLOCKED: dict[str, tuple[str, ...]] = {
    "CAP_SYS_ADMIN": ("mount", "umount", "umount2", "unshare", "setns", "pivot_root", "fsconfig", "fsmount",
                      "fsopen", "fspick", "move_mount", "open_tree", "mount_setattr", "quotactl",
                      "quotactl_fd", "lookup_dcookie", "perf_event_open", "name_to_handle_at",
                      "open_by_handle_at", "bpf", "keyctl", "add_key", "request_key"),
    "CAP_SYS_TIME": ("settimeofday", "stime", "clock_settime", "clock_adjtime"),
    "CAP_SYS_PTRACE": ("kcmp", "process_vm_readv", "process_vm_writev", "process_madvise"),
    "CAP_SYSLOG": ("syslog",),
    "CAP_SYS_BOOT": ("reboot",),
}


def _fallback_profile(capabilities: Iterable[str]) -> dict[str, Any]:
    """FALLBACK ONLY (no profile file): a deny-list; new or unknown syscalls are allowed."""
    caps = set(capabilities)
    denied = set(_FALLBACK_DENIED)
    for cap, names in _FALLBACK_UNLOCKED.items():
        if cap in caps:
            denied -= set(names)
    syscalls: list[dict[str, Any]] = [
        {"names": sorted(denied), "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM}]
    if "CAP_SYS_ADMIN" not in caps:
        flags_arg = 1 if platform.machine().startswith("s390") else 0
        syscalls.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS})
        for flag in _NAMESPACE_FLAGS:
            syscalls.append({"names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM,
                             "args": [{"index": flags_arg, "value": flag, "valueTwo": flag,
                                       "op": "SCMP_CMP_MASKED_EQ"}]})
    profile: dict[str, Any] = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": syscalls}
    native = _MACHINES.get(platform.machine(), (None, ""))[0]
    subarches = {"SCMP_ARCH_X86_64": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"],
                 "SCMP_ARCH_AARCH64": ["SCMP_ARCH_ARM"], "SCMP_ARCH_S390X": ["SCMP_ARCH_S390"]}
    if native:
        profile["architectures"] = [native, *subarches.get(native, [])]
    return profile
