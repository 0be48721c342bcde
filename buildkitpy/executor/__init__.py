"""Running build steps in containers (runc): OCI spec generation, users, mounts, process I/O."""

from buildkitpy.executor.spec import ExecSpec, HostIP, Mount, NetworkMode, SecurityMode, Ulimit

__all__ = ["ExecSpec", "HostIP", "Mount", "NetworkMode", "SecurityMode", "Ulimit"]
