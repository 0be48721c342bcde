"""Fixtures shared by the end-to-end suites: a real ``buildkitpyd`` process on real sockets."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Daemon:
    proc: subprocess.Popen
    root: Path
    unix_addr: str
    tcp_addr: str
    log: Path

    def client(self, *args: str, addr: str | None = None, input: bytes | None = None,
               check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run our ``buildkitpy`` CLI against this daemon."""
        cmd = [str(BIN / "buildkitpy"), "--addr", addr or self.unix_addr, *args]
        res = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}):\n"
                                 f"{res.stdout.decode(errors='replace')}\n{res.stderr.decode(errors='replace')}"
                                 f"\n--- daemon log ---\n{self.log_text()[-4000:]}")
        return res

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None


def start_daemon(root: Path, *extra: str) -> Daemon:
    root.mkdir(parents=True, exist_ok=True)
    sock = root / "buildkitd.sock"
    port = free_port()
    log = root.parent / f"{root.name}.daemon.log"
    logf = open(log, "ab")
    proc = subprocess.Popen([str(BIN / "buildkitpyd"), "--root", str(root / "state"),
                             "--addr", f"unix://{sock}", "--addr", f"tcp://127.0.0.1:{port}",
                             "--debug", *extra], stdout=logf, stderr=subprocess.STDOUT)
    logf.close()
    daemon = Daemon(proc, root, f"unix://{sock}", f"tcp://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"buildkitpyd exited ({proc.returncode}):\n{daemon.log_text()}")
        if sock.exists():
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(sock))
                return daemon
            except OSError:
                pass
        time.sleep(0.05)
    stop_daemon(daemon)
    raise RuntimeError(f"buildkitpyd did not start:\n{daemon.log_text()}")


def stop_daemon(daemon: Daemon) -> None:
    if daemon.proc.poll() is None:
        daemon.proc.send_signal(signal.SIGTERM)
        try:
            daemon.proc.wait(15)
        except subprocess.TimeoutExpired:
            daemon.proc.kill()
            daemon.proc.wait()


@pytest.fixture(scope="session")
def daemon(tmp_path_factory) -> Iterator[Daemon]:
    """One daemon for a whole test session (tests use distinct contexts and outputs)."""
    d = start_daemon(tmp_path_factory.mktemp("buildkitpyd"))
    yield d
    stop_daemon(d)
    assert d.proc.returncode == 0, f"daemon did not exit cleanly:\n{d.log_text()[-4000:]}"


@pytest.fixture
def fresh_daemon(tmp_path) -> Iterator[Daemon]:
    """A daemon of the test's own (for restart and crash tests)."""
    d = start_daemon(tmp_path / "daemon")
    yield d
    stop_daemon(d)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runc, overlayfs)")


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (``@pytest.mark.anyio``) run on asyncio, as the daemon does."""
    return "asyncio"


@pytest.fixture
def make_daemon(tmp_path):
    """Start daemons with extra flags; all are stopped when the test ends."""
    started: list[Daemon] = []

    def make(*extra: str) -> Daemon:
        d = start_daemon(tmp_path / f"daemon{len(started)}", *extra)
        started.append(d)
        return d

    yield make
    for d in started:
        stop_daemon(d)


@pytest.fixture
def short_dir() -> Iterator[str]:
    """A short temp dir (unix socket paths are limited to 107 bytes)."""
    import shutil
    import tempfile
    path = tempfile.mkdtemp(prefix="bkpy-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
