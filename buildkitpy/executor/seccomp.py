"""The seccomp profile for sandboxed build containers.

BuildKit applies containerd's default profile: an allow-list of ~400 syscalls with extra
syscalls unlocked per granted capability. Debian ships no copy of that profile for us to load, and
a hand-written allow-list that misses one syscall breaks ordinary programs with EPERM. So this is
the *deny* side of that profile instead: everything Docker's default refuses to a container with
BuildKit's default capability set (kernel modules, keyrings, mount API, namespaces, clock and swap
control, kexec, bpf/perf, io_uring, userfaultfd, cross-process memory access, ...) returns EPERM;
``clone3`` returns ENOSYS so libcs fall back to ``clone``, whose namespace flags are refused.
New or unknown syscalls are allowed -- the one way this is weaker than an allow-list.
"""

from __future__ import annotations

import errno
import platform
from typing import Any

_DENIED = (
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

# CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET
_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)

_ARCHITECTURES = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
    "ppc64le": ["SCMP_ARCH_PPC64LE"],
    "s390x": ["SCMP_ARCH_S390X", "SCMP_ARCH_S390"],
    "riscv64": ["SCMP_ARCH_RISCV64"],
}


def default_profile(capabilities: list[str]) -> dict[str, Any]:
    """The OCI ``linux.seccomp`` object for a sandboxed container with ``capabilities``."""
    caps = set(capabilities)
    denied = set(_DENIED)
    # Docker unlocks these with the matching capability; keep that rule if a cap is added.
    if "CAP_SYS_ADMIN" in caps:
        denied -= {"mount", "umount", "umount2", "unshare", "setns", "pivot_root", "fsconfig", "fsmount",
                   "fsopen", "fspick", "move_mount", "open_tree", "mount_setattr", "quotactl",
                   "quotactl_fd", "lookup_dcookie", "perf_event_open", "name_to_handle_at",
                   "open_by_handle_at", "bpf"}
    if "CAP_SYS_TIME" in caps:
        denied -= {"settimeofday", "stime", "clock_settime", "clock_adjtime"}
    if "CAP_SYS_PTRACE" in caps:
        denied -= {"kcmp", "process_vm_readv", "process_vm_writev", "process_madvise"}
    if "CAP_SYSLOG" in caps:
        denied.discard("syslog")
    syscalls: list[dict[str, Any]] = [
        {"names": sorted(denied), "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS},
    ]
    if "CAP_SYS_ADMIN" not in caps:
        clone_flags_arg = 1 if platform.machine() == "s390x" else 0
        for flag in _NAMESPACE_FLAGS:
            syscalls.append({"names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM,
                             "args": [{"index": clone_flags_arg, "value": flag, "valueTwo": flag,
                                       "op": "SCMP_CMP_MASKED_EQ"}]})
    profile: dict[str, Any] = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": syscalls}
    arches = _ARCHITECTURES.get(platform.machine())
    if arches:
        profile["architectures"] = arches
    return profile
