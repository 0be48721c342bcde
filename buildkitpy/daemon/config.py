"""``buildkitd.toml``: the daemon's configuration file, in BuildKit's format.

Only the keys we act on are modelled; any other key is reported with a warning (never fatal), so a
config written for buildkitd keeps working here.
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("/var/lib/buildkitpy")
DEFAULT_ADDRESS = "unix:///run/buildkit/buildkitd.sock"


@dataclass
class RegistryConfig:
    mirrors: list[str] = field(default_factory=list)
    http: bool | None = None  # None: not set (loopback registries then default to plain HTTP)
    insecure: bool = False
    ca: list[str] = field(default_factory=list)


@dataclass
class GCPolicy:
    all: bool = False
    filters: list[str] = field(default_factory=list)
    keep_duration: int = 0  # seconds
    reserved_space: int = 0
    max_used_space: int = 0
    min_free_space: int = 0


@dataclass
class TLSConfig:
    cert: str = ""
    key: str = ""
    ca: str = ""


@dataclass
class HistoryConfig:
    """``[history]``: build records are removed once beyond ``max_entries`` *and* older than
    ``max_age`` (BuildKit's defaults: 48h, 50)."""
    max_age: int = 48 * 3600  # seconds
    max_entries: int = 50


@dataclass
class Config:
    root: Path = DEFAULT_ROOT
    debug: bool = False
    addresses: list[str] = field(default_factory=list)
    tls: TLSConfig = field(default_factory=TLSConfig)
    registries: dict[str, RegistryConfig] = field(default_factory=dict)
    max_parallelism: int = 0  # 0: no limit (BuildKit's default)
    gc: bool = True
    gc_policies: list[GCPolicy] = field(default_factory=list)
    insecure_entitlements: list[str] = field(default_factory=list)
    log_format: str = "text"
    history: HistoryConfig = field(default_factory=HistoryConfig)
    platforms: list[str] = field(default_factory=list)  # [worker.oci] platforms; empty: detect
    warnings: list[str] = field(default_factory=list)



_SIZE_UNITS = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
               "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
               "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(value: Any) -> int:
    """Bytes from an int or a string like ``10GB`` / ``512MiB`` (BuildKit's disk-space values)."""
    if isinstance(value, int):
        return value
    text = str(value).strip().lower().replace(" ", "")
    num = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(num):] or "b"
    if unit not in _SIZE_UNITS or not num:
        raise ValueError(f"invalid size {value!r}")
    return int(float(num) * _SIZE_UNITS[unit])


def parse_duration(value: Any) -> int:
    """Seconds from an int (seconds) or a Go duration string such as ``48h`` or ``1h30m``."""
    if isinstance(value, int):
        return value
    text, total, num = str(value).strip(), 0.0, ""
    i = 0
    while i < len(text):
        c = text[i]
        if c.isdigit() or c == ".":
            num += c
            i += 1
            continue
        unit = text[i:i + 2] if text[i:i + 2] in _DURATION_UNITS else c
        if unit not in _DURATION_UNITS or not num:
            raise ValueError(f"invalid duration {value!r}")
        total += float(num) * _DURATION_UNITS[unit]
        num, i = "", i + len(unit)
    if num:
        raise ValueError(f"invalid duration {value!r}: missing unit")
    return int(total)


class _Reader:
    """Walks a TOML table, remembering which keys were used so the rest can be warned about."""

    def __init__(self, data: dict[str, Any], prefix: str, warnings: list[str]) -> None:
        self.data, self.prefix, self.warnings = data, prefix, warnings
        self.used: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        return self.data.get(key, default)

    def table(self, key: str) -> _Reader:
        value = self.get(key, {})
        if not isinstance(value, dict):
            self.warnings.append(f"{self.prefix}{key}: expected a table, ignored")
            value = {}
        return _Reader(value, f"{self.prefix}{key}.", self.warnings)

    def finish(self, known_but_ignored: tuple[str, ...] = ()) -> None:
        for key in self.data:
            if key not in self.used and key not in known_but_ignored:
                self.warnings.append(f"unknown config key {self.prefix}{key}")


def load_config(path: Path | None) -> Config:
    cfg = Config()
    if path is None:
        return cfg
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SystemExit(f"buildkitpyd: config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise SystemExit(f"buildkitpyd: invalid config file {path}: {exc}") from None
    top = _Reader(data, "", cfg.warnings)
    if (root := top.get("root")) is not None:
        cfg.root = Path(root)
    cfg.debug = bool(top.get("debug", False))
    cfg.insecure_entitlements = list(top.get("insecure-entitlements", []))
    grpc_cfg = top.table("grpc")
    cfg.addresses = list(grpc_cfg.get("address", []))
    tls = grpc_cfg.table("tls")
    cfg.tls = TLSConfig(cert=tls.get("cert", ""), key=tls.get("key", ""), ca=tls.get("ca", ""))
    tls.finish()
    grpc_cfg.finish(("uid", "gid", "debugAddress"))
    log_cfg = top.table("log")
    cfg.log_format = log_cfg.get("format", "text")
    log_cfg.finish()

    registries = top.table("registry")
    for host in list(registries.data):
        reg = registries.table(host)
        http = reg.get("http")
        cfg.registries[host] = RegistryConfig(
            mirrors=list(reg.get("mirrors", [])), http=None if http is None else bool(http),
            insecure=bool(reg.get("insecure", False)), ca=list(reg.get("ca", [])))
        reg.finish(("keypair", "tlsconfigdir"))

    worker = top.table("worker")
    oci = worker.table("oci")
    try:
        cfg.max_parallelism = int(oci.get("max-parallelism", 0))
        cfg.gc = bool(oci.get("gc", True))
        cfg.platforms = [str(p) for p in oci.get("platforms", [])]
        for i, pol in enumerate(oci.get("gcpolicy", [])):
            pr = _Reader(pol, f"worker.oci.gcpolicy[{i}].", cfg.warnings)
            cfg.gc_policies.append(GCPolicy(
                all=bool(pr.get("all", False)), filters=list(pr.get("filters", [])),
                keep_duration=parse_duration(pr.get("keepDuration", 0)),
                reserved_space=parse_size(pr.get("reservedSpace", pr.get("keepBytes", 0))),
                max_used_space=parse_size(pr.get("maxUsedSpace", 0)),
                min_free_space=parse_size(pr.get("minFreeSpace", 0))))
            pr.finish()
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"buildkitpyd: invalid [worker.oci] setting in {path}: {exc}") from None
    oci.finish(("enabled", "snapshotter", "rootless", "noProcessSandbox",
                "gckeepstorage", "reservedSpace", "maxUsedSpace", "minFreeSpace", "binary",
                "apparmor-profile", "selinux", "cniPoolSize", "labels"))
    worker.finish(("containerd",))
    history = top.table("history")
    try:
        if "history" in data:  # as in buildkitd, a key left out of a given [history] table is 0
            cfg.history.max_age = parse_duration(history.get("maxAge", 0) or 0)
            cfg.history.max_entries = int(history.get("maxEntries", 0))
        if cfg.history.max_entries < 0 or cfg.history.max_age < 0:
            raise ValueError("maxAge and maxEntries cannot be negative")
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"buildkitpyd: invalid [history] setting in {path}: {exc}") from None
    history.finish()
    top.finish(("frontend", "otel", "cdi", "dns", "system"))
    return cfg
