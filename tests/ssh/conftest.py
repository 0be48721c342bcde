"""Fixtures for SSH forwarding: a real ``ssh-agent`` holding a generated key, and a busybox rootfs
that also carries OpenSSH's ``ssh-add`` and ``ssh-keygen`` (with their shared libraries) so the
container talks the agent protocol with the real client."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.executor.conftest import build_busybox_rootfs

KEY_COMMENT = "buildkitpy-test"


def _need_tools(*, root: bool = True) -> None:
    if root and os.geteuid() != 0:
        pytest.skip("needs root (runc, overlayfs)")
    for tool in ("runc", "ssh-agent", "ssh-add", "ssh-keygen")[0 if root else 1:]:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install runc openssh-client)")


def _copy_with_libs(binary: str, root: Path) -> None:
    """Copy a dynamically linked host binary and the libraries ``ldd`` names into ``root``."""
    path = Path(shutil.which(binary) or binary)
    files = [path]
    ldd = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=True).stdout
    files += [Path(word) for line in ldd.splitlines() for word in line.split() if word.startswith("/")]
    for f in files:
        dest = root / str(f).lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f.resolve(), dest)


@pytest.fixture(scope="session")
def ssh_rootfs(tmp_path_factory) -> Path:
    """busybox + ssh-add + ssh-keygen, sent to the daemon as the local source ``rootfs``."""
    _need_tools()
    root = build_busybox_rootfs(tmp_path_factory.mktemp("ssh-rootfs") / "rootfs")
    for tool in ("ssh-add", "ssh-keygen"):
        _copy_with_libs(tool, root)
    return root


@dataclass
class Agent:
    proc: subprocess.Popen
    sock: Path
    key: Path  # private key file (no passphrase)

    @property
    def public_key(self) -> str:
        return self.key.with_suffix(".pub").read_text().strip()

    def listing(self) -> subprocess.CompletedProcess:
        return subprocess.run(["ssh-add", "-L"], env={**os.environ, "SSH_AUTH_SOCK": str(self.sock)},
                              capture_output=True, text=True)


def generate_key(directory: Path, name: str = "id_ed25519", comment: str = KEY_COMMENT) -> Path:
    key = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)],
                   check=True, capture_output=True)
    return key


@pytest.fixture
def start_agent(tmp_path) -> Iterator:
    """Start real ``ssh-agent``s (each with a fresh key added); all are stopped after the test."""
    _need_tools(root=False)
    started: list[Agent] = []

    def start() -> Agent:
        d = tmp_path / f"agent{len(started)}"
        d.mkdir()
        key = generate_key(d, "key")
        sock = d / "agent.sock"
        proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 5
        while not sock.exists():
            assert time.monotonic() < deadline and proc.poll() is None, "ssh-agent did not start"
            time.sleep(0.01)
        subprocess.run(["ssh-add", "-q", str(key)], env={**os.environ, "SSH_AUTH_SOCK": str(sock)},
                       check=True, capture_output=True)
        agent = Agent(proc, sock, key)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.proc.send_signal(signal.SIGTERM)
        agent.proc.wait(5)
