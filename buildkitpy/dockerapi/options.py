"""``POST /build`` query parameters, read and checked before any of the body is."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from buildkitpy.dockerapi.http import HTTPError, Request
from buildkitpy.dockerapi.limits import Limits

BUILDER_CLASSIC = "1"
BUILDER_BUILDKIT = "2"
NETWORK_MODES = ("", "default", "bridge", "host", "none")


def bad(message: str) -> HTTPError:
    return HTTPError(400, message)


def bool_arg(req: Request, name: str) -> bool:
    """Go's ``httputils.BoolValue``: anything but empty, 0, no, false, none is true."""
    value = req.arg(name).strip().lower()
    return value not in ("", "0", "no", "false", "none")


def int_arg(req: Request, name: str) -> int:
    value = req.arg(name)
    if value == "":
        return 0
    try:
        return int(value)
    except ValueError:
        raise bad(f"invalid value for {name}: {value!r} is not an integer") from None


def json_arg(req: Request, name: str, kind: type, what: str) -> Any:
    raw = req.arg(name)
    if raw == "":
        return kind()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise bad(f"error reading {what}: invalid JSON in {name}: {exc.msg}") from None
    if not isinstance(value, kind):
        raise bad(f"error reading {what}: {name} must be a JSON {kind.__name__}")
    return value


@dataclass
class BuildOptions:
    dockerfile: str = "Dockerfile"
    tags: list[str] = field(default_factory=list)
    quiet: bool = False
    no_cache: bool = False
    remove: bool = True
    force_remove: bool = False
    pull: bool = False
    build_args: dict[str, str | None] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    target: str = ""
    cache_from: list[str] = field(default_factory=list)
    platform: str = ""
    network_mode: str = ""
    extra_hosts: list[str] = field(default_factory=list)
    shm_size: int = 0
    memory: int = 0
    memory_swap: int = 0
    cpu_shares: int = 0
    cpu_period: int = 0
    cpu_quota: int = 0
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    cgroup_parent: str = ""
    ulimits: list[dict[str, Any]] = field(default_factory=list)
    remote: str = ""
    version: str = BUILDER_CLASSIC
    session: str = ""
    build_id: str = ""
    squash: bool = False
    outputs: list[dict[str, Any]] = field(default_factory=list)
    registry_auth: dict[str, Any] = field(default_factory=dict)

    @property
    def limits(self) -> Limits:
        return Limits(memory=self.memory, memory_swap=self.memory_swap, cpu_shares=self.cpu_shares,
                      cpu_period=self.cpu_period, cpu_quota=self.cpu_quota, cpuset_cpus=self.cpuset_cpus,
                      cpuset_mems=self.cpuset_mems, parent=self.cgroup_parent)

    @classmethod
    def parse(cls, req: Request) -> BuildOptions:
        o = cls()
        o.dockerfile = req.arg("dockerfile") or "Dockerfile"
        o.tags = [t for t in req.args("t") if t]
        o.quiet = bool_arg(req, "q")
        o.no_cache = bool_arg(req, "nocache")
        o.force_remove = bool_arg(req, "forcerm")
        o.remove = True if o.force_remove or req.arg("rm") == "" else bool_arg(req, "rm")
        o.pull = bool_arg(req, "pull")
        args = json_arg(req, "buildargs", dict, "build args")
        for key, value in args.items():
            if value is not None and not isinstance(value, str):
                raise bad(f"error reading build args: the value of {key!r} must be a string or null")
        o.build_args = args
        labels = json_arg(req, "labels", dict, "labels")
        if not all(isinstance(v, str) for v in labels.values()):
            raise bad("error reading labels: label values must be strings")
        o.labels = labels
        cache_from = json_arg(req, "cachefrom", list, "cache-from")
        if not all(isinstance(v, str) for v in cache_from):
            raise bad("error reading cache-from: entries must be strings")
        o.cache_from = cache_from
        o.target = req.arg("target")
        o.platform = req.arg("platform")
        o.network_mode = req.arg("networkmode")
        if o.network_mode not in NETWORK_MODES:
            raise bad(f"unsupported network mode {o.network_mode!r} for builds (want default, bridge, "
                      "host or none)")
        o.extra_hosts = [h for h in req.args("extrahosts") if h]
        for host in o.extra_hosts:
            if ":" not in host and "=" not in host:
                raise bad(f"invalid extra host {host!r}: want name:address")
        o.shm_size = int_arg(req, "shmsize")
        o.memory = int_arg(req, "memory")
        o.memory_swap = int_arg(req, "memswap")
        o.cpu_shares = int_arg(req, "cpushares")
        o.cpu_period = int_arg(req, "cpuperiod")
        o.cpu_quota = int_arg(req, "cpuquota")
        for name in ("shmsize", "memory", "cpushares", "cpuperiod", "cpuquota"):
            if int_arg(req, name) < 0:
                raise bad(f"invalid value for {name}: must not be negative")
        o.cpuset_cpus = req.arg("cpusetcpus")
        o.cpuset_mems = req.arg("cpusetmems")
        o.cgroup_parent = req.arg("cgroupparent").strip("/")
        if o.cgroup_parent and (".." in o.cgroup_parent.split("/") or "\0" in o.cgroup_parent
                                or o.cgroup_parent.endswith(":")):
            raise bad(f"invalid cgroupparent {req.arg('cgroupparent')!r}: want a cgroup path such as "
                      "'builds/ci'")
        if o.memory_swap < -1:
            raise bad("invalid value for memswap: must be -1 (unlimited swap) or more")
        o.limits.check()
        o.ulimits = json_arg(req, "ulimits", list, "ulimit settings")
        if req.args("securityopt"):
            raise bad("security options are not supported on linux")
        isolation = req.arg("isolation")
        if isolation not in ("", "default"):
            raise bad(f"unsupported isolation: {isolation!r}")
        o.remote = req.arg("remote")
        version = req.arg("version") or BUILDER_CLASSIC
        if version not in (BUILDER_CLASSIC, BUILDER_BUILDKIT):
            raise bad(f"invalid version {version!r}")
        o.version = version
        o.session = req.arg("session")
        o.build_id = req.arg("buildid")
        o.squash = bool_arg(req, "squash")
        o.outputs = json_arg(req, "outputs", list, "outputs")
        o.registry_auth = registry_config(req.header("X-Registry-Config"))
        return o


def registry_config(header: str) -> dict[str, Any]:
    """``X-Registry-Config``: base64url JSON of registry → AuthConfig."""
    if not header:
        return {}
    try:
        padded = header + "=" * (-len(header) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded))
    except (ValueError, json.JSONDecodeError):
        raise bad("invalid X-Registry-Config header: not base64url-encoded JSON") from None
    if not isinstance(value, dict):
        raise bad("invalid X-Registry-Config header: want a JSON object")
    return value


def docker_config_auths(registry_auth: dict[str, Any]) -> dict[str, Any]:
    """The auth configs as a docker config's ``auths`` (what our Auth attachable serves)."""
    auths: dict[str, Any] = {}
    for host, cfg in registry_auth.items():
        if not isinstance(cfg, dict):
            continue
        entry = {k: cfg[k] for k in ("username", "password", "auth", "identitytoken", "registrytoken")
                 if isinstance(cfg.get(k), str) and cfg.get(k)}
        if entry:
            auths[host] = entry
    return auths
