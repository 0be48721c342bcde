"""SSH forwarding failures: a missing agent (optional vs required, BuildKit's texts), an id the
client does not forward, bad ``--ssh`` values refused by the CLI, and cancelling a build mid-RUN
leaving no listener or socket behind."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from buildkitpy import llb
from tests.acceptance.helpers import ROOTFS, base, sh
from tests.acceptance.test_cancel import runc_containers, wait_for
from tests.conftest import BIN
from tests.ssh.helpers import build

pytestmark = pytest.mark.root


def test_required_mount_without_forwarded_agent_fails(daemon, ssh_rootfs, tmp_path):
    run = sh(base(), "echo ran > /ran", mounts=[llb.ssh()])
    proc = build(daemon, ssh_rootfs, run.root(), tmp_path / "out", check=False)
    assert proc.returncode != 0
    assert 'no SSH key "default" forwarded from the client' in proc.stderr.decode()
    assert daemon.alive()


def test_optional_mount_without_agent_runs_without_the_socket(daemon, ssh_rootfs, tmp_path):
    run = sh(base(), "if [ -e /run/buildkit/ssh_agent.0 ]; then echo yes; else echo no; fi > /present",
             mounts=[llb.ssh(optional=True)])
    out = tmp_path / "out"
    build(daemon, ssh_rootfs, run.root(), out)
    assert (out / "present").read_text() == "no\n"


def test_unknown_id_is_named_and_optional_unknown_id_is_skipped(daemon, ssh_rootfs, start_agent, tmp_path):
    agent = start_agent()
    run = sh(base(), "echo ran > /ran", mounts=[llb.ssh(id="other")])
    proc = build(daemon, ssh_rootfs, run.root(), tmp_path / "out", "--ssh", f"default={agent.sock}",
                 check=False)
    assert proc.returncode != 0
    assert "unset ssh forward key other" in proc.stderr.decode()
    run = sh(base(), "ls /run/buildkit > /listing 2>&1; echo ran > /ran",
             mounts=[llb.ssh(id="other", optional=True), llb.ssh(id="default", target="/agent")])
    out = tmp_path / "out2"
    build(daemon, ssh_rootfs, run.root(), out, "--ssh", f"default={agent.sock}")
    assert (out / "ran").exists() and not (out / "agent").exists()


@pytest.mark.parametrize("value,message", [
    ("default=/nonexistent/agent.sock", "stat /nonexistent/agent.sock: No such file or directory"),
    ("default", "make sure SSH_AUTH_SOCK is set"),
    ("a=KEY,SOCK", "invalid combination of keys and sockets"),
    ("a=KEY,raw=true", "raw mode only supported with socket paths"),
    ("a=GARBAGE", "failed to parse"),
    ("a=SOCK,SOCK", "only single socket allowed"),
    ("a=SOCK --ssh a=SOCK", "duplicate agent ID \"a\""),
])
def test_bad_ssh_values_are_refused_by_the_cli(daemon, ssh_rootfs, start_agent, tmp_path, value, message):
    agent = start_agent()
    garbage = tmp_path / "garbage"
    garbage.write_text("not a key\n")
    value = (value.replace("SOCK", str(agent.sock)).replace("KEY", str(agent.key))
             .replace("GARBAGE", str(garbage)))
    args = [arg for v in value.split(" --ssh ") for arg in ("--ssh", v)]
    proc = build(daemon, ssh_rootfs, sh(base(), "true").root(), None, *args, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr.decode(), proc.stderr.decode()


def _forwarding_sockets(pid: int) -> list[str]:
    """Unix sockets the daemon listens on for ssh forwarding (bound as .../ssh_auth_sock)."""
    lines = Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]
    return [line for line in lines if line.rstrip().endswith("/ssh_auth_sock")]


def test_cancel_mid_run_leaves_no_listener_or_socket(make_daemon, ssh_rootfs, start_agent, tmp_path):
    daemon = make_daemon()
    state = daemon.root / "state"
    agent = start_agent()
    st = sh(base(), "ssh-add -l > /dev/null && echo listed && sleep 100", mounts=[llb.ssh()]).root()
    cmd = [str(BIN / "buildkitpy"), "--addr", daemon.unix_addr, "build", "--progress", "plain",
           "--local", f"{ROOTFS}={ssh_rootfs}", "--ssh", f"default={agent.sock}"]
    client = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    client.stdin.write(st.marshal().SerializeToString())
    client.stdin.close()
    sockets_dir = state / "ssh-sockets"
    try:
        assert wait_for(lambda: runc_containers(state), 30), "the RUN never started a container"
        assert list(sockets_dir.iterdir()), "a running ssh mount should have its socket directory"
        assert _forwarding_sockets(daemon.proc.pid), "a running ssh mount should have a listener"
        time.sleep(0.5)
    finally:
        os.kill(client.pid, signal.SIGKILL)
        client.wait()
    assert wait_for(lambda: not runc_containers(state) and not list(sockets_dir.iterdir())
                    and not _forwarding_sockets(daemon.proc.pid), 5.0), \
        f"left behind: {list(sockets_dir.iterdir())} {_forwarding_sockets(daemon.proc.pid)}"
    assert daemon.alive()


def test_a_key_file_with_a_passphrase_is_refused(daemon, ssh_rootfs, tmp_path):
    key = tmp_path / "locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret-pass", "-f", str(key)], check=True)
    proc = build(daemon, ssh_rootfs, sh(base(), "true").root(), None, "--ssh", f"a={key}", check=False)
    assert proc.returncode != 0
    assert f"failed to parse {key}" in proc.stderr.decode()

