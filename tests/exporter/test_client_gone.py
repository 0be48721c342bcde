"""A client that stops reading a tar or OCI export and is then killed: the export fails, its
writing thread stops (no thread left waiting for a session that is gone), the next build works and
the daemon still shuts down at once."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.conftest import BIN


@pytest.mark.parametrize("kind", ["tar", "oci"])
def test_export_to_a_client_that_stops_reading_and_dies(fresh_daemon, tmp_path, kind):
    daemon = fresh_daemon
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    # More than the session's windows, the socket buffers and the hand-off queue hold together.
    (ctx / "big").write_bytes(os.urandom(48 << 20))
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY big /big\n")
    cmd = [str(BIN / "buildkitpy"), "--addr", daemon.unix_addr, "build", "--frontend", "dockerfile.v0",
           "--local", f"context={ctx}", "--local", f"dockerfile={ctx}", "--output", f"type={kind},dest=-"]
    # The first MiB of the archive shows the export is under way; then nobody reads the pipe: the
    # client blocks once it is full and stops reading the session.
    client = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert len(client.stdout.read(1 << 20)) == 1 << 20
        time.sleep(2)  # the export is now waiting on the client
        assert client.poll() is None, "the client should still be blocked on its full stdout"
        client.kill()
    finally:
        client.kill()
        client.wait()

    out = tmp_path / "after.tar"
    daemon.client("build", "--frontend", "dockerfile.v0", "--local", f"context={ctx}",
                  "--local", f"dockerfile={ctx}", "--output", f"type=tar,dest={out}", timeout=120)
    assert out.stat().st_size > 48 << 20

    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    rc = daemon.proc.wait(30)
    assert rc == 0, daemon.log_text()[-4000:]
    assert time.monotonic() - started < 10, "a writing thread kept the daemon from stopping"
    assert "Traceback" not in daemon.log_text()
