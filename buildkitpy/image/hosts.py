"""Which endpoints serve a registry domain, from the daemon's ``[registry."host"]`` config.

Like BuildKit: the configured mirrors are tried first (each with its own ``[registry."mirror"]``
settings), then the registry itself. ``http = true`` means plain HTTP; ``insecure = true`` means
HTTPS without certificate verification, falling back to plain HTTP when the server does not speak
TLS; ``ca`` adds trusted CA files. Loopback registries (``localhost``, ``127.x``, ``::1``) default
to plain HTTP when ``http`` is not set, as containerd's ``MatchLocalhost`` does.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from buildkitpy.image.reference import DOCKER_HUB_REGISTRY
from buildkitpy.llb.reference import DEFAULT_DOMAIN


@dataclass(frozen=True)
class Endpoint:
    host: str  # host[:port] to connect to
    scheme: str = "https"  # "https" or "http"
    path: str = "/v2"  # API root (a mirror may live below a path)
    insecure: bool = False  # skip TLS verification; fall back to plain HTTP
    ca: tuple[str, ...] = ()
    mirror: bool = False

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        for ca_file in self.ca:
            ctx.load_verify_locations(cafile=ca_file)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}{self.path}"


@dataclass
class HostSettings:
    """The subset of ``buildkitpy.daemon.config.RegistryConfig`` used here (duck-typed)."""

    mirrors: list[str] = field(default_factory=list)
    http: bool | None = None
    insecure: bool = False
    ca: list[str] = field(default_factory=list)


def is_localhost(host: str) -> bool:
    name = host
    if name.startswith("["):
        name = name[1:name.find("]")]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _settings(registries: Mapping[str, Any],
              host: str) -> tuple[bool | None, bool, tuple[str, ...], list[str]]:
    cfg = registries.get(host)
    if cfg is None and host == DOCKER_HUB_REGISTRY:
        cfg = registries.get(DEFAULT_DOMAIN)
    if cfg is None:
        return None, False, (), []
    http = getattr(cfg, "http", None)
    return (http, bool(getattr(cfg, "insecure", False)), tuple(getattr(cfg, "ca", ()) or ()),
            list(getattr(cfg, "mirrors", ()) or ()))


def _endpoint(host: str, path: str, registries: Mapping[str, Any], mirror: bool) -> Endpoint:
    http, insecure, ca, _ = _settings(registries, host)
    if http is None:
        http = is_localhost(host)
    if insecure:
        # Try TLS first (unverified); a plain-HTTP server is detected and used instead.
        return Endpoint(host, "https", path, True, ca, mirror)
    return Endpoint(host, "http" if http else "https", path, False, ca, mirror)


def endpoints_for(domain: str, registries: Mapping[str, Any] | None = None) -> list[Endpoint]:
    """Endpoints to try for images under ``domain`` (``docker.io`` is Docker Hub), in order."""
    registries = registries or {}
    host = DOCKER_HUB_REGISTRY if domain == DEFAULT_DOMAIN else domain
    _, _, _, mirrors = _settings(registries, domain if domain in registries else host)
    out: list[Endpoint] = []
    for raw in mirrors:
        rest = raw.split("://", 1)[1] if "://" in raw else raw
        mirror_host, _, mirror_path = rest.strip("/").partition("/")
        if not mirror_host:
            continue
        path = "/v2" + (f"/{mirror_path.strip('/')}" if mirror_path.strip("/") else "")
        out.append(_endpoint(mirror_host, path, registries, mirror=True))
    out.append(_endpoint(host, "/v2", registries, mirror=False))
    return out
