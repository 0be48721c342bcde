"""SSH agent forwarding end to end: ``--ssh`` on the CLI serves the session's SSH attachable, an
exec's ssh mount is a socket in the container forwarding each connection to the client's agent.
The container runs OpenSSH's own ``ssh-add``/``ssh-keygen`` against a real ``ssh-agent``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from buildkitpy import llb
from tests.acceptance.helpers import base, sh
from tests.conftest import BIN
from tests.ssh.conftest import KEY_COMMENT, generate_key
from tests.ssh.helpers import build

pytestmark = pytest.mark.root


def test_ssh_add_lists_and_signs_through_the_default_socket(daemon, ssh_rootfs, start_agent, tmp_path):
    agent = start_agent()
    run = sh(base(), "mkdir /res; ssh-add -l > /res/list; ssh-add -L > /res/pub; "
                     "echo \"$SSH_AUTH_SOCK\" > /res/env; "
                     "stat -c '%a %u %g %F' \"$SSH_AUTH_SOCK\" > /res/stat; "
                     "ssh-add -L > /res/key.pub; echo data > /res/data; "
                     "ssh-keygen -Y sign -n file -f /res/key.pub /res/data 2> /res/sign.err; "
                     "ssh-add -D 2> /res/delete.err; echo $? > /res/delete.rc",
             mounts=[llb.ssh()])
    out = tmp_path / "out"
    build(daemon, ssh_rootfs, run.root(), out, "--ssh", "default", env={"SSH_AUTH_SOCK": str(agent.sock)})
    res = out / "res"
    assert KEY_COMMENT in (res / "list").read_text()
    assert (res / "pub").read_text().strip() == agent.public_key
    assert (res / "env").read_text().strip() == "/run/buildkit/ssh_agent.0"
    assert (res / "stat").read_text().split() == ["600", "0", "0", "socket"]
    # the signature made by the host agent verifies outside the container
    sig = res / "data.sig"
    assert sig.exists(), (res / "sign.err").read_text()
    allowed = tmp_path / "allowed"
    allowed.write_text(f"tester {agent.public_key}\n")
    check = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", "tester", "-n", "file",
                            "-s", str(sig)], input=(res / "data").read_bytes(), capture_output=True)
    assert check.returncode == 0, check.stderr
    # read-only: removing identities is refused and the host agent keeps its key
    assert (res / "delete.rc").read_text().strip() != "0"
    assert KEY_COMMENT in agent.listing().stdout
    # the socket is gone from the result and from the daemon's root
    assert not (out / "run" / "buildkit" / "ssh_agent.0").exists()
    assert not any((daemon.root / "state" / "ssh-sockets").iterdir())


def test_socket_target_owner_and_mode_for_a_non_root_user(daemon, ssh_rootfs, start_agent, tmp_path):
    agent = start_agent()
    run = sh(base(), "ssh-add -l > /tmp/list; stat -c '%a %u %g' /home/builder/agent > /tmp/stat; "
                     "echo \"$SSH_AUTH_SOCK\" > /tmp/env",
             mounts=[llb.ssh(id="work", target="/home/builder/agent", uid=1000, gid=1000, mode=0o660)],
             user="builder")
    out = tmp_path / "out"
    build(daemon, ssh_rootfs, run.root(), out, "--ssh", f"work={agent.sock}")
    assert KEY_COMMENT in (out / "tmp" / "list").read_text()
    assert (out / "tmp" / "stat").read_text().split() == ["660", "1000", "1000"]
    assert (out / "tmp" / "env").read_text().strip() == "/home/builder/agent"


def _private_agents() -> list[str]:
    """Command lines of running ssh-agents started by our client for key files."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"ssh-agent") and any(b"buildkitpy-ssh-agent-" in a for a in cmd):
            found.append(b" ".join(cmd).decode(errors="replace"))
    return found


def test_key_files_are_served_by_a_private_agent_stopped_after_the_build(daemon, ssh_rootfs, tmp_path):
    key1 = generate_key(tmp_path, "one", comment="first-key")
    key2 = generate_key(tmp_path, "two", comment="second-key")
    before = _private_agents()
    run = sh(base(), "ssh-add -l > /list; ssh-add -L | head -n 1 > /key.pub; echo x > /data; "
                     "ssh-keygen -Y sign -n file -f /key.pub /data",
             mounts=[llb.ssh(id="keys")])
    out = tmp_path / "out"
    build(daemon, ssh_rootfs, run.root(), out, "--ssh", f"keys={key1},{key2}")
    listing = (out / "list").read_text()
    assert "first-key" in listing and "second-key" in listing
    assert (out / "data.sig").exists()
    assert _private_agents() == before


def test_raw_mode_passes_every_request(daemon, ssh_rootfs, start_agent, tmp_path):
    agent = start_agent()
    run = sh(base(), "ssh-add -D && echo removed > /result", mounts=[llb.ssh()])
    out = tmp_path / "out"
    build(daemon, ssh_rootfs, run.root(), out, "--ssh", f"default={agent.sock},raw=true")
    assert (out / "result").read_text() == "removed\n"
    assert KEY_COMMENT not in agent.listing().stdout


def test_dockerfile_run_mount_type_ssh(daemon, ssh_rootfs, start_agent, tmp_path):
    agent = start_agent()
    dockerfile = tmp_path / "df"
    dockerfile.mkdir()
    (dockerfile / "Dockerfile").write_text(
        "FROM scratch\nCOPY . /\n"
        "RUN --mount=type=ssh ssh-add -l > /listing && echo \"$SSH_AUTH_SOCK\" > /sock\n"
        "RUN --mount=type=ssh,id=deploy,target=/deploy.sock,required=true "
        "SSH_AUTH_SOCK=/deploy.sock ssh-add -L > /deploy.pub\n")
    out = tmp_path / "out"
    cmd = [str(BIN / "buildkitpy"), "--addr", daemon.unix_addr, "build", "--progress", "plain",
           "--frontend", "dockerfile.v0", "--local", f"context={ssh_rootfs}",
           "--local", f"dockerfile={dockerfile}", "--output", f"type=local,dest={out}",
           "--ssh", f"default={agent.sock}", "--ssh", f"deploy={agent.sock}"]
    proc = subprocess.run(cmd, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert KEY_COMMENT in (out / "listing").read_text()
    assert (out / "sock").read_text().strip() == "/run/buildkit/ssh_agent.0"
    assert (out / "deploy.pub").read_text().strip() == agent.public_key
