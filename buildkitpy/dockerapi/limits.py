"""Memory and CPU limits of a classic build's RUN containers (``memory``, ``memswap``, ``cpushares``,
``cpuperiod``, ``cpuquota``, ``cpusetcpus``, ``cpusetmems``).

The Docker Engine puts them on each build container's HostConfig. Our RUN containers are made by
the solver from LLB, where the only wire-compatible handle is the ExecOp's ``cgroupParent`` (the
Dockerfile frontend's ``cgroup-parent`` option, as BuildKit's): the build gets a cgroup holding the
limits and every RUN container is created below it (``<parent>/buildkit/<id>``), so the limits apply
to it. The cgroup's name is derived from the limits, so builds with the same limits share a cgroup
(and the solver's cache, where the parent is part of the key); a reference count per name keeps it
while any build uses it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from buildkitpy.errors import InvalidArgument

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PARENT_PREFIX = "buildkitpy-docker"

# The bounds the Engine checks before it creates a container (its verifyPlatformContainerResources).
MIN_MEMORY = 6 * 1024 * 1024
MIN_CPU_PERIOD, MAX_CPU_PERIOD = 1000, 1000000
MIN_CPU_QUOTA = 1000


class LimitError(InvalidArgument):
    """A limit that cannot be applied here (a missing cgroup controller, a value the kernel refused)."""


@dataclass(frozen=True)
class Limits:
    memory: int = 0
    memory_swap: int = 0  # -1: unlimited swap; 0: twice ``memory`` (the Engine's default)
    cpu_shares: int = 0
    cpu_period: int = 0
    cpu_quota: int = 0
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    parent: str = ""  # the ``cgroupparent`` option: the build's cgroup goes below it

    def __bool__(self) -> bool:
        """Whether any limit is asked for (a parent alone needs no cgroup of ours)."""
        return any((self.memory, self.memory_swap, self.cpu_shares, self.cpu_period, self.cpu_quota,
                    self.cpuset_cpus, self.cpuset_mems))

    def check(self) -> None:
        """The Engine's checks, with its words."""
        if self.memory and self.memory < MIN_MEMORY:
            raise InvalidArgument("Minimum memory limit allowed is 6MB")
        if self.memory_swap > 0 and not self.memory:
            raise InvalidArgument("You should always set the Memory limit when using Memoryswap limit, "
                                  "see usage")
        if self.memory_swap > 0 and self.memory_swap < self.memory:
            raise InvalidArgument("Minimum memoryswap limit should be larger than memory limit, see usage")
        if self.cpu_period and not MIN_CPU_PERIOD <= self.cpu_period <= MAX_CPU_PERIOD:
            raise InvalidArgument("CPU cfs period can not be less than 1ms (i.e. 1000) or larger than "
                                  "1 second (i.e. 1000000)")
        if self.cpu_quota and self.cpu_quota < MIN_CPU_QUOTA:
            raise InvalidArgument("CPU cfs quota can not be less than 1ms (i.e. 1000)")
        for name, value, available in (("CPUs", self.cpuset_cpus, _online("cpu")),
                                       ("Memory nodes", self.cpuset_mems, _online("node"))):
            if not value:
                continue
            try:
                wanted = parse_set(value)
            except ValueError:
                raise InvalidArgument(f"Invalid value {value} for cpuset {name.lower()}") from None
            if available is not None and not wanted <= available:
                raise InvalidArgument(f"Requested {name} are not available - requested {value}, available: "
                                      f"{format_set(available)}")

    @property
    def swap_total(self) -> int:
        """memory+swap in bytes, -1 for unlimited, 0 for no swap limit asked."""
        if self.memory_swap == -1:
            return -1
        if self.memory_swap:
            return self.memory_swap
        return 2 * self.memory if self.memory else 0

    def cgroup_name(self) -> str:
        key = repr(sorted(vars(self).items())).encode()
        return f"{self.parent or PARENT_PREFIX}/{hashlib.sha256(key).hexdigest()[:16]}"


def parse_set(value: str) -> set[int]:
    """``0-2,5`` → {0, 1, 2, 5} (the cpuset list format)."""
    out: set[int] = set()
    for part in value.split(","):
        part = part.strip()
        low, sep, high = part.partition("-")
        if not low.isdigit() or (sep and not high.isdigit()):
            raise ValueError(value)
        start, end = int(low), int(high) if sep else int(low)
        if end < start:
            raise ValueError(value)
        out.update(range(start, end + 1))
    return out


def format_set(values: set[int]) -> str:
    parts: list[tuple[int, int]] = []
    for v in sorted(values):
        if parts and parts[-1][1] == v - 1:
            parts[-1] = (parts[-1][0], v)
        else:
            parts.append((v, v))
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in parts)


def _online(kind: str) -> set[int] | None:
    try:
        return parse_set(Path(f"/sys/devices/system/{kind}/online").read_text().strip())
    except (OSError, ValueError):
        return None


def unified() -> bool:
    """Whether /sys/fs/cgroup is cgroup v2 (not the v1 or hybrid layout)."""
    return (CGROUP_ROOT / "cgroup.controllers").exists()


class BuildCgroups:
    """The cgroups of running builds' limits, by name, created on first use and removed when the
    last build using one ends."""

    def __init__(self, root: Path = CGROUP_ROOT) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._users: dict[str, int] = {}

    @contextmanager
    def applied(self, limits: Limits) -> Iterator[str]:
        """The cgroup parent to give the build's RUN steps (blocking)."""
        name = limits.cgroup_name()
        with self._lock:
            if self._users.get(name, 0) == 0:
                try:
                    self._create(name, limits)
                except OSError as exc:
                    self._remove(name)
                    raise LimitError(f"failed to apply the build's resource limits in cgroup {name}: "
                                     f"{exc.strerror or exc}") from None
            self._users[name] = self._users.get(name, 0) + 1
        try:
            yield name
        finally:
            with self._lock:
                self._users[name] -= 1
                if self._users[name] == 0:
                    del self._users[name]
                    self._remove(name)

    # -- v1 / v2 ----------------------------------------------------------------------------------

    def _create(self, name: str, limits: Limits) -> None:
        if (self.root / "cgroup.controllers").exists():
            self._create_v2(name, limits)
        else:
            self._create_v1(name, limits)

    def _v1_dir(self, controller: str, name: str, limits_wanted: bool) -> Path | None:
        base = self.root / controller
        if not (base / "cgroup.procs").exists():
            if limits_wanted:
                raise LimitError(f"the build's resource limits need the {controller} cgroup controller, "
                                 "which is not mounted on this host")
            return None
        path = base / name
        if controller == "cpuset":  # v1 cpusets start empty: each level copies its parent's
            current = base
            for part in Path(name).parts:
                current = current / part
                current.mkdir(exist_ok=True)
                for leaf in ("cpuset.cpus", "cpuset.mems"):
                    if not (current / leaf).read_text().strip():
                        (current / leaf).write_text((current.parent / leaf).read_text())
        else:
            path.mkdir(parents=True, exist_ok=True)
        return path

    def _create_v1(self, name: str, limits: Limits) -> None:
        memory = self._v1_dir("memory", name, bool(limits.memory or limits.memory_swap))
        if memory is not None and limits.memory:
            swap = memory / "memory.memsw.limit_in_bytes"
            # memsw must never be below the memory limit: lift it first, then set both.
            if swap.exists():
                swap.write_text("-1")
            (memory / "memory.limit_in_bytes").write_text(str(limits.memory))
            if swap.exists() and limits.swap_total:
                swap.write_text(str(limits.swap_total))
            elif limits.memory_swap > 0:
                log.warning("swap limit asked for but this kernel has no swap accounting: memory is "
                            "limited without swap")
        cpu = self._v1_dir("cpu", name, bool(limits.cpu_shares or limits.cpu_period or limits.cpu_quota))
        if cpu is not None:
            if limits.cpu_shares:
                (cpu / "cpu.shares").write_text(str(max(limits.cpu_shares, 2)))
            if limits.cpu_period:
                (cpu / "cpu.cfs_period_us").write_text(str(limits.cpu_period))
            if limits.cpu_quota:
                (cpu / "cpu.cfs_quota_us").write_text(str(limits.cpu_quota))
        cpuset = self._v1_dir("cpuset", name, bool(limits.cpuset_cpus or limits.cpuset_mems))
        if cpuset is not None:
            if limits.cpuset_cpus:
                (cpuset / "cpuset.cpus").write_text(limits.cpuset_cpus)
            if limits.cpuset_mems:
                (cpuset / "cpuset.mems").write_text(limits.cpuset_mems)

    def _create_v2(self, name: str, limits: Limits) -> None:
        wanted = set()
        if limits.memory or limits.memory_swap:
            wanted.add("memory")
        if limits.cpu_shares or limits.cpu_period or limits.cpu_quota:
            wanted.add("cpu")
        if limits.cpuset_cpus or limits.cpuset_mems:
            wanted.add("cpuset")
        available = set((self.root / "cgroup.controllers").read_text().split())
        missing = wanted - available
        if missing:
            raise LimitError(f"the build's resource limits need the {', '.join(sorted(missing))} cgroup "
                             "controller(s), which this host does not delegate")
        current = self.root
        for part in Path(name).parts:
            enable = " ".join(f"+{c}" for c in sorted(wanted))
            if enable:
                (current / "cgroup.subtree_control").write_text(enable)
            current = current / part
            current.mkdir(exist_ok=True)
        # Steps are created below <name>/buildkit: it must delegate the controllers too.
        if wanted:
            (current / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in sorted(wanted)))
        if limits.memory:
            (current / "memory.max").write_text(str(limits.memory))
            total = limits.swap_total
            if (current / "memory.swap.max").exists() and total:
                (current / "memory.swap.max").write_text("max" if total == -1 else str(total - limits.memory))
        if limits.cpu_shares:
            # runc's conversion of shares (2..262144) to weight (1..10000)
            weight = 1 + ((max(limits.cpu_shares, 2) - 2) * 9999) // 262142
            (current / "cpu.weight").write_text(str(weight))
        if limits.cpu_quota or limits.cpu_period:
            quota = str(limits.cpu_quota) if limits.cpu_quota > 0 else "max"
            (current / "cpu.max").write_text(f"{quota} {limits.cpu_period or 100000}")
        if limits.cpuset_cpus:
            (current / "cpuset.cpus").write_text(limits.cpuset_cpus)
        if limits.cpuset_mems:
            (current / "cpuset.mems").write_text(limits.cpuset_mems)

    def _remove(self, name: str) -> None:
        """Remove the build's cgroup and the empty ``buildkit`` level runc left below it."""
        bases = [self.root] if (self.root / "cgroup.controllers").exists() else \
            [self.root / c for c in ("memory", "cpu", "cpuset")]
        for base in bases:
            path = base / name
            for leftover in (path / "buildkit", path):
                try:
                    os.rmdir(leftover)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.warning("could not remove the build cgroup %s: %s", leftover, exc.strerror)
