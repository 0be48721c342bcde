"""Dockerfile ``ADD http://…`` through the daemon and our CLI, as buildctl runs it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tests.sources.conftest import FileServer, Resource


def build(daemon, ctx: Path, out: Path, *extra: str, check: bool = True):  # noqa: ANN001, ANN201
    return daemon.client("build", "--progress", "plain", "--frontend", "dockerfile.v0", "--local",
                         f"context={ctx}", "--local", f"dockerfile={ctx}", "--output",
                         f"type=local,dest={out}", *extra, check=check)


def test_add_http_url(daemon, tmp_path: Path, http_server: FileServer) -> None:  # noqa: ANN001
    http_server.resources["/remote.txt"] = Resource(b"served over http\n")
    http_server.resources["/payload.txt"] = Resource(b"checksummed payload\n")
    digest = "sha256:" + hashlib.sha256(b"checksummed payload\n").hexdigest()
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        "FROM scratch\n"
        f"ADD {http_server.url('/remote.txt')} /downloaded/\n"
        f"ADD {http_server.url('/remote.txt')} /renamed.txt\n"
        f"ADD --checksum={digest} {http_server.url('/payload.txt')} /verified.txt\n")
    out = tmp_path / "out"
    build(daemon, ctx, out)
    assert (out / "downloaded" / "remote.txt").read_bytes() == b"served over http\n"
    assert (out / "renamed.txt").read_bytes() == b"served over http\n"
    assert (out / "verified.txt").read_bytes() == b"checksummed payload\n"
    assert os.stat(out / "renamed.txt").st_mode & 0o777 == 0o600  # BuildKit's default for downloads

    # a second build revalidates by ETag and downloads nothing
    gets = http_server.gets("/remote.txt")
    res = build(daemon, ctx, tmp_path / "out2")
    assert http_server.gets("/remote.txt") == gets
    assert http_server.gets("/payload.txt") == 1
    assert "CACHED" in res.stderr.decode()


def test_add_checksum_mismatch_fails_with_buildkits_message(daemon, tmp_path: Path,  # noqa: ANN001
                                                            http_server: FileServer) -> None:
    http_server.resources["/p.txt"] = Resource(b"tampered\n")
    wrong = "sha256:" + "ab" * 32
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM scratch\nADD --checksum={wrong} {http_server.url('/p.txt')} /p\n")
    res = build(daemon, ctx, tmp_path / "out", check=False)
    err = res.stderr.decode()
    assert res.returncode == 1, err
    actual = "sha256:" + hashlib.sha256(b"tampered\n").hexdigest()
    assert f"digest mismatch {actual}: {wrong}" in err, err
    # the failing vertex is the ADD's download, named after the instruction (BuildKit gives the
    # http source no source range, so there is no Dockerfile snippet either)
    assert f" > [1/1] ADD --checksum={wrong} {http_server.url('/p.txt')} /p:" in err, err
    assert daemon.alive()


def test_add_http_with_auth_header_secret(daemon, tmp_path: Path, http_server: FileServer) -> None:  # noqa: ANN001
    http_server.resources["/private.txt"] = Resource(b"secret stuff\n", auth="Bearer letmein")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM scratch\nADD {http_server.url('/private.txt')} /private.txt\n")
    res = build(daemon, ctx, tmp_path / "out", check=False)
    assert res.returncode == 1
    assert f"invalid response status 401 for {http_server.url('/private.txt')}" in res.stderr.decode()

    secret = tmp_path / "auth"
    secret.write_text("Bearer letmein")
    out = tmp_path / "out"
    build(daemon, ctx, out, "--secret", f"id=HTTP_AUTH_HEADER_127.0.0.1,src={secret}")
    assert (out / "private.txt").read_bytes() == b"secret stuff\n"
