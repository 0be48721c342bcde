"""A daemon serving the Engine API (``--docker-addr``), a loopback registry as the docker.io mirror
holding ``library/busybox``, and the real ``docker`` CLI pointed at it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from image.registryfixture import REGISTRY_BIN, Registry, busybox_rootfs, start_registry

from tests.conftest import Daemon, needs_root, start_daemon, stop_daemon

DOCKER = shutil.which("docker") or "/usr/local/bin/docker"

pytestmark = needs_root


@dataclass
class Engine:
    daemon: Daemon
    socket: Path
    env: dict[str, str]

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def docker(self, *args: str, check: bool = True, input: bytes | None = None, timeout: float = 120,
               classic: bool = True) -> subprocess.CompletedProcess:
        env = dict(self.env)
        if classic:
            env["DOCKER_BUILDKIT"] = "0"
        res = subprocess.run([DOCKER, *args], env=env, input=input, capture_output=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({res.returncode}):\n"
                                 f"{res.stdout.decode(errors='replace')}\n{res.stderr.decode(errors='replace')}"
                                 f"\n--- daemon log ---\n{self.daemon.log_text()[-4000:]}")
        return res

    def raw(self, data: bytes, timeout: float = 30) -> bytes:
        """Send raw bytes on a fresh connection and read until the server closes it."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(str(self.socket))
            try:
                s.sendall(data)
            except BrokenPipeError:
                pass  # the server answered early (and closed): read what it said
            chunks = []
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks)


@pytest.fixture(scope="session")
def busybox_registry(tmp_path_factory) -> Iterator[Registry]:
    if not Path(REGISTRY_BIN).exists():
        pytest.fail("tests/dockerapi need docker-registry (apt-get install docker-registry)")
    reg = start_registry(tmp_path_factory.mktemp("dockerapi-registry"))
    reg.push_image("library/busybox", "latest", [(busybox_rootfs(), "gzip")])
    yield reg
    reg.stop()


def start_engine(root: Path, registry: Registry, *extra: str) -> Engine:
    root.mkdir(parents=True, exist_ok=True)
    config = root / "buildkitd.toml"
    config.write_text(f'[registry."docker.io"]\n  mirrors = ["{registry.host}"]\n'
                      f'[registry."{registry.host}"]\n  http = true\n')
    sock = root / "docker.sock"
    daemon = start_daemon(root / "daemon", "--config", str(config), "--docker-addr", f"unix://{sock}", *extra)
    deadline = time.monotonic() + 30
    while not sock.exists() and time.monotonic() < deadline and daemon.alive():
        time.sleep(0.05)
    docker_config = root / "docker-config"
    docker_config.mkdir(exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root),
           "DOCKER_HOST": f"unix://{sock}", "DOCKER_CONFIG": str(docker_config)}
    return Engine(daemon, sock, env)


@pytest.fixture(scope="session")
def engine(tmp_path_factory, busybox_registry) -> Iterator[Engine]:
    e = start_engine(tmp_path_factory.mktemp("engine"), busybox_registry)
    yield e
    stop_daemon(e.daemon)
    assert e.daemon.proc.returncode == 0, f"daemon did not exit cleanly:\n{e.daemon.log_text()[-4000:]}"
