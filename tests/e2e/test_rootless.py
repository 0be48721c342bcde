"""Rootless: buildkitpyd as an unprivileged user inside rootlesskit's user namespace (what
``hack/rootless-env`` sets up), RUN steps through runc's rootless mode, with the same results and
network semantics as with root. The whole conformance corpus in rootless mode is the slow test at
the end (``hack/conformance --rootless``)."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import BIN, REPO, free_port, needs_root
from tests.image.conftest import _need_registry
from tests.image.registryfixture import Registry, busybox_rootfs, start_registry

pytestmark = needs_root


@dataclass
class RootlessDaemon:
    proc: subprocess.Popen
    addr: str
    work: Path
    user: str

    def log(self) -> str:
        path = self.work / "daemon.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def daemon_pid(self) -> int:
        """The buildkitpyd process (below runuser and rootlesskit)."""
        out = subprocess.run(["pgrep", "-f", f"buildkitpyd --root {self.work}/root "],
                             capture_output=True, text=True).stdout.split()
        for pid in out:  # runuser and rootlesskit carry the same arguments
            try:
                argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if b"python" in argv0:
                return int(pid)
        raise AssertionError(f"no buildkitpyd process for {self.work}:\n{self.log()}")

    def build(self, dockerfile: str, out: Path, *args: str) -> subprocess.CompletedProcess:
        ctx = out.parent / f"{out.name}-ctx"
        ctx.mkdir(parents=True)
        (ctx / "Dockerfile").write_text(dockerfile)
        cmd = [str(BIN / "buildkitpy"), "--addr", self.addr, "build", "--frontend", "dockerfile.v0",
               "--local", f"context={ctx}", "--local", f"dockerfile={ctx}",
               "--output", f"type=local,dest={out}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def rootless_env() -> dict[str, str]:
    res = subprocess.run([str(REPO / "hack" / "rootless-env")], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"hack/rootless-env failed:\n{res.stderr[-4000:]}"
    return dict(line.split("=", 1) for line in res.stdout.split())


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    _need_registry()
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    reg.push_image("rootless/busybox", "latest", [(busybox_rootfs(), "gzip")])
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def rootless_daemon(rootless_env: dict[str, str]) -> Iterator[RootlessDaemon]:
    user, venv = rootless_env["ROOTLESS_USER"], rootless_env["ROOTLESS_VENV"]
    # pytest's own temporary directories are private to root: the daemon's user could not enter them
    work = Path(tempfile.mkdtemp(prefix="buildkitpy-rootless-test."))
    work.chmod(0o755)
    for sub in ("root", "state"):
        (work / sub).mkdir()
        shutil.chown(work / sub, user)
    port = free_port()
    log = open(work / "daemon.log", "wb")
    proc = subprocess.Popen(
        ["runuser", "-u", user, "--", "env", f"HOME={work}/state", f"XDG_RUNTIME_DIR={work}/state",
         "rootlesskit", "--net=host", "--copy-up=/etc", f"--state-dir={work}/state/rootlesskit",
         f"{venv}/bin/buildkitpyd", "--root", f"{work}/root", "--addr", f"tcp://127.0.0.1:{port}",
         "--allow-insecure-entitlement", "network.host"],
        stdout=log, stderr=subprocess.STDOUT)
    log.close()
    daemon = RootlessDaemon(proc, f"tcp://127.0.0.1:{port}", work, user)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            pytest.fail(f"rootless buildkitpyd exited ({proc.returncode}):\n{daemon.log()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"rootless buildkitpyd did not start:\n{daemon.log()}")
            time.sleep(0.2)
    yield daemon
    try:
        os.kill(daemon.daemon_pid(), signal.SIGTERM)
    except (AssertionError, ProcessLookupError):
        pass
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    shutil.rmtree(work, ignore_errors=True)


def test_daemon_runs_unprivileged_in_a_user_namespace(rootless_daemon: RootlessDaemon) -> None:
    status = Path(f"/proc/{rootless_daemon.daemon_pid()}/status").read_text()
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    # seen from the initial namespace the daemon is the unprivileged user, root only in its own
    assert set(uids) == {str(pwd.getpwnam(rootless_daemon.user).pw_uid)}
    uid_map = Path(f"/proc/{rootless_daemon.daemon_pid()}/uid_map").read_text().split()
    assert uid_map[:2] == ["0", str(pwd.getpwnam(rootless_daemon.user).pw_uid)]


def test_run_steps_build_as_with_root(rootless_daemon: RootlessDaemon, registry: Registry,
                                      tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = rootless_daemon.build(
        f"FROM {registry.host}/rootless/busybox:latest\n"
        "RUN echo hello > /greeting && cat /proc/self/uid_map > /uid_map\n"
        "RUN echo second >> /greeting\n"
        "WORKDIR /work\n"
        "RUN echo in-workdir > here\n", out)
    assert res.returncode == 0, f"{res.stderr}\n--- daemon log ---\n{rootless_daemon.log()[-4000:]}"
    assert (out / "greeting").read_text() == "hello\nsecond\n"
    assert (out / "work" / "here").read_text() == "in-workdir\n"
    # the step ran in a user namespace that maps only part of the id range (root's maps it all)
    assert (out / "uid_map").read_text().split()[2] != "4294967295"
    # the image's filesystem keeps the mount points a root daemon's steps leave (as BuildKit's)
    assert (out / "sys").is_dir() and (out / "proc").is_dir() and (out / "dev").is_dir()


def test_network_none_and_host_keep_their_meaning(rootless_daemon: RootlessDaemon, registry: Registry,
                                                  tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = rootless_daemon.build(
        f"FROM {registry.host}/rootless/busybox:latest\n"
        "RUN --network=none cat /proc/net/dev > /none.txt\n"
        "RUN --network=host cat /proc/net/dev > /host.txt\n", out, "--allow", "network.host")
    assert res.returncode == 0, f"{res.stderr}\n--- daemon log ---\n{rootless_daemon.log()[-4000:]}"

    def interfaces(text: str) -> set[str]:
        return {line.split(":")[0].strip() for line in text.splitlines()[2:]}

    assert interfaces((out / "none.txt").read_text()) == {"lo"}
    host = {line.split(":")[0].strip() for line in Path("/proc/net/dev").read_text().splitlines()[2:]}
    assert interfaces((out / "host.txt").read_text()) == host


def test_a_failing_step_reports_its_exit_code(rootless_daemon: RootlessDaemon, registry: Registry,
                                              tmp_path: Path) -> None:
    res = rootless_daemon.build(f"FROM {registry.host}/rootless/busybox:latest\nRUN exit 3\n",
                                tmp_path / "out")
    assert res.returncode != 0
    assert "exit code: 3" in res.stderr, res.stderr


@pytest.mark.slow
def test_conformance_corpus_passes_rootless() -> None:
    res = subprocess.run([str(REPO / "hack" / "conformance"), "--rootless", "--jobs", "2"],
                         cwd=REPO, capture_output=True, text=True, timeout=3600)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
    assert "rootless" in res.stdout and "conformance:" in res.stdout, res.stdout[-2000:]
