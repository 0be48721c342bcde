"""SSH agent forwarding end to end: ``--ssh`` on the CLI serves the session's SSH attachable, an
exec's ssh mount is a socket in the container forwarding each connection to the client's agent.
The container runs OpenSSH's own ``ssh-add``/``ssh-keygen`` against a real ``ssh-agent``."""

from __future__ import annotations

import subprocess

import pytest

from buildkitpy import llb
from tests.acceptance.helpers import base, sh
from tests.ssh.conftest import KEY_COMMENT
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
