"""OCI platforms as LLB uses them: normalised like containerd's ``platforms.Normalize``."""

from __future__ import annotations

import platform as _host
import re
from dataclasses import dataclass

from buildkitpy.api import ops_pb2

from .errors import LLBError

_COMPONENT = re.compile(r"[A-Za-z0-9_.-]+")
_OS_COMPONENT = re.compile(r"([A-Za-z0-9_-]+)(?:\(([A-Za-z0-9_.%-]*)((?:\+[A-Za-z0-9_.%-]+)*)\))?")
_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "i386": "386", "i686": "386",
                 "aarch64": "arm64", "armhf": "arm", "armel": "arm"}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""
    os_features: tuple[str, ...] = ()

    @classmethod
    def parse(cls, spec: str) -> Platform:
        """``os[(version[+feature…])]/arch[/variant]`` (e.g. ``linux/arm/v7``), normalised. Components
        are checked as containerd's ``platforms.Parse`` checks them, so no ``..``, NUL or ``/`` gets into
        a platform (it names directories and goes into image indexes)."""
        parts = spec.split("/")
        if len(parts) < 2 or len(parts) > 3 or not all(parts):
            raise LLBError(f"invalid platform {spec!r}: expected os/arch[/variant]")
        os_match = _OS_COMPONENT.fullmatch(parts[0])
        if os_match is None or os_match.group(1) in (".", ".."):
            raise LLBError(f"invalid platform {spec!r}: {parts[0]!r} is not a valid OS component "
                           "(letters, digits, '_' and '-', optionally with a (version))")
        for part in parts[1:]:
            if not _COMPONENT.fullmatch(part) or part in (".", ".."):
                raise LLBError(f"invalid platform {spec!r}: {part!r} is not a valid component "
                               "(letters, digits, '_', '.' and '-')")
        features = tuple(f for f in (os_match.group(3) or "").split("+") if f)
        return cls(os_match.group(1), parts[1], parts[2] if len(parts) == 3 else "",
                   os_match.group(2) or "", features).normalized()

    def normalized(self) -> Platform:
        arch = self.architecture.lower()
        variant = self.variant
        if arch in ("armhf", "armel"):
            variant = "v7" if arch == "armhf" else "v6"
        arch = _ARCH_ALIASES.get(arch, arch)
        if arch == "amd64" and variant == "v1":
            variant = ""
        elif arch == "arm64" and variant in ("8", "v8"):
            variant = ""
        elif arch == "arm":
            variant = {"": "v7", "5": "v5", "6": "v6", "7": "v7", "8": "v8"}.get(variant, variant)
        return Platform(self.os.lower(), arch, variant, self.os_version, self.os_features)

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def to_pb(self) -> ops_pb2.Platform:
        return ops_pb2.Platform(OS=self.os, Architecture=self.architecture, Variant=self.variant,
                                OSVersion=self.os_version, OSFeatures=list(self.os_features))


def default_platform() -> Platform:
    """The host's platform, as BuildKit's ``platforms.DefaultSpec()`` would report it."""
    machine = _host.machine().lower()
    variant = ""
    if machine.startswith("armv") and len(machine) > 4 and machine[4].isdigit():
        machine, variant = "arm", "v" + machine[4]
    return Platform("linux", machine or "amd64", variant).normalized()
