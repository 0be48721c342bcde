"""The /etc/hosts and /etc/resolv.conf files bind-mounted (read-only) into every container."""

from __future__ import annotations

import ipaddress
import os
import threading
from pathlib import Path

from buildkitpy.executor.spec import DEFAULT_HOSTNAME, HostIP, NetworkMode

HOST_RESOLV_CONF = Path("/etc/resolv.conf")
SYSTEMD_RESOLV_CONF = Path("/run/systemd/resolve/resolv.conf")
# Used when filtering leaves no nameserver (as Docker/BuildKit do for sandboxed networking).
FALLBACK_NAMESERVERS = ("8.8.8.8", "8.8.4.4", "2001:4860:4860::8888", "2001:4860:4860::8844")


def hosts_content(hostname: str, extra_hosts: list[HostIP]) -> str:
    lines = [f"127.0.0.1\tlocalhost {hostname or DEFAULT_HOSTNAME}",
             "::1\tlocalhost ip6-localhost ip6-loopback"]
    for entry in extra_hosts:
        try:
            ipaddress.ip_address(entry.ip)
        except ValueError:
            raise ValueError(f"invalid IP address {entry.ip!r} for extra host {entry.host!r}") from None
        lines.append(f"{entry.ip}\t{entry.host}")
    return "\n".join(lines) + "\n"


def _is_local_nameserver(value: str) -> bool:
    try:
        return ipaddress.ip_address(value.split("%")[0]).is_loopback
    except ValueError:
        return False


def resolv_conf_content(host_conf: str, network: NetworkMode) -> str:
    """The container's resolv.conf from the host's. In its own network namespace the container
    cannot reach a resolver on the host's loopback (127.0.0.53 etc.), so those are dropped."""
    out: list[str] = []
    nameservers = 0
    for line in host_conf.splitlines():
        fields = line.split()
        if fields and fields[0] == "nameserver" and len(fields) > 1:
            if network is not NetworkMode.HOST and _is_local_nameserver(fields[1]):
                continue
            nameservers += 1
        out.append(line)
    if nameservers == 0:
        out.extend(f"nameserver {ns}" for ns in FALLBACK_NAMESERVERS)
    return "\n".join(out).strip("\n") + "\n"


def host_resolv_conf_path(network: NetworkMode) -> Path:
    """Where the host keeps the resolver list we derive from (systemd-resolved's real upstream
    list when /etc/resolv.conf only names its 127.0.0.53 stub)."""
    if network is NetworkMode.HOST:
        return HOST_RESOLV_CONF
    try:
        text = HOST_RESOLV_CONF.read_text()
    except OSError:
        return HOST_RESOLV_CONF
    servers = [line.split()[1] for line in text.splitlines()
               if line.startswith("nameserver") and len(line.split()) > 1]
    if servers == ["127.0.0.53"] and SYSTEMD_RESOLV_CONF.exists():
        return SYSTEMD_RESOLV_CONF
    return HOST_RESOLV_CONF


def write_atomically(path: Path, content: str) -> None:
    # unique per thread too: steps are prepared in worker threads, several at once
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(content)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
