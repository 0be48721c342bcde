"""The ``dockerfile.v0`` frontend options (``--opt`` keys, as BuildKit's dockerui reads them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from buildkitpy.gocompat import parse_bool, ram_in_bytes
from buildkitpy.llb import Platform
from buildkitpy.llb.source import ResolveMode

from .errors import DockerfileError


class OptionError(DockerfileError):
    """A frontend option with a bad value."""


_RESOLVE_MODES: dict[str, ResolveMode] = {"default": "default", "pull": "pull", "local": "local"}
_ULIMIT_NAMES = (
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
)


@dataclass
class ConvertOptions:
    filename: str = "Dockerfile"
    target: str = ""
    build_args: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    platforms: list[Platform] = field(default_factory=list)
    multi_platform: bool = False
    no_cache: set[str] | None = None  # None: use the cache; empty set: no cache for any stage
    image_resolve_mode: ResolveMode = "default"
    network_mode: str = "sandbox"
    extra_hosts: list[tuple[str, str]] = field(default_factory=list)
    shm_size: int = 0
    ulimits: list[tuple[str, int, int]] = field(default_factory=list)
    hostname: str = ""
    cgroup_parent: str = ""
    named_contexts: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, opts: Mapping[str, str]) -> ConvertOptions:
        o = cls()
        for key, value in opts.items():
            if key.startswith("build-arg:"):
                o.build_args[key[len("build-arg:") :]] = value
            elif key.startswith("label:"):
                o.labels[key[len("label:") :]] = value
            elif key.startswith("context:"):
                o.named_contexts[key[len("context:") :]] = value
        o.filename = opts.get("filename") or "Dockerfile"
        o.target = opts.get("target", "")
        if opts.get("platform"):
            try:
                o.platforms = [Platform.parse(p.strip()) for p in opts["platform"].split(",") if p.strip()]
            except ValueError as e:
                raise OptionError(f"invalid platform option: {e}") from None
        if "multi-platform" in opts:
            o.multi_platform = _bool("multi-platform", opts["multi-platform"])
        if "no-cache" in opts:
            v = opts["no-cache"]
            o.no_cache = set() if v == "" else {s.strip().lower() for s in v.split(",") if s.strip()}
        mode = opts.get("image-resolve-mode", "") or "default"
        if mode not in _RESOLVE_MODES:
            raise OptionError(f"invalid image-resolve-mode: {mode}")
        o.image_resolve_mode = _RESOLVE_MODES[mode]
        net = opts.get("force-network-mode", "") or "sandbox"
        if net not in ("none", "host", "sandbox"):
            raise OptionError(f"invalid force-network-mode: {net}")
        o.network_mode = net
        for entry in _fields(opts.get("add-hosts", "")):
            host, sep, ip = entry.partition("=")
            if not sep:
                host, sep, ip = entry.partition(":")
            if not sep or not host or not ip:
                raise OptionError(f"invalid add-hosts entry {entry!r}: expected host=ip")
            o.extra_hosts.append((host, ip))
        if opts.get("shm-size"):
            try:
                o.shm_size = ram_in_bytes(opts["shm-size"])
            except ValueError:
                raise OptionError(f"invalid shm-size: {opts['shm-size']}") from None
        for entry in _fields(opts.get("ulimit", "")):
            o.ulimits.append(_ulimit(entry))
        o.hostname = opts.get("hostname", "")
        o.cgroup_parent = opts.get("cgroup-parent", "")
        return o

    def stage_no_cache(self, stage_name: str) -> bool:
        if self.no_cache is None:
            return False
        return not self.no_cache or stage_name.lower() in self.no_cache


def _bool(key: str, value: str) -> bool:
    try:
        return parse_bool(value) if value else True
    except ValueError:
        raise OptionError(f"invalid boolean value for {key}: {value}") from None


def _fields(value: str) -> list[str]:
    return [f for f in value.replace(",", " ").split() if f]


def _ulimit(entry: str) -> tuple[str, int, int]:
    name, sep, limits = entry.partition("=")
    if not sep or name not in _ULIMIT_NAMES:
        raise OptionError(f"invalid ulimit {entry!r}: expected name=soft[:hard] with a known name")
    soft_s, _, hard_s = limits.partition(":")
    try:
        soft = int(soft_s)
        hard = int(hard_s) if hard_s else soft
    except ValueError:
        raise OptionError(f"invalid ulimit {entry!r}: limits must be integers") from None
    if soft > hard:
        raise OptionError(f"invalid ulimit {entry!r}: soft limit is above the hard limit")
    return name, soft, hard
