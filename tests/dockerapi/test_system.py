"""The listener: ping, version negotiation, errors as {"message"}, and hostile input that must get a
clear answer while the daemon keeps serving."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest

from .conftest import DOCKER, start_engine


def _status_and_body(raw: bytes) -> tuple[int, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _alive(engine) -> None:
    raw = engine.raw(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
    assert _status_and_body(raw) == (200, b"OK")


def test_docker_version_and_info(engine):
    out = engine.docker("version", "--format", "{{.Server.APIVersion}} {{.Server.Version}}").stdout.decode()
    assert out.split()[0] == "1.50"
    assert "buildkitpy" in out
    full = engine.docker("version").stdout.decode()  # the CLI's own rendering of the Engine component
    assert "Server: buildkitpy Engine API" in full and "Git commit:       buildkitpy" in full, full
    info = json.loads(engine.docker("info", "--format", "{{json .}}").stdout)
    assert info["OSType"] == "linux" and info["Driver"] == "overlayfs"


def test_ping_headers_and_version_prefix(engine):
    raw = engine.raw(b"HEAD /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
    head = raw.decode("latin-1").lower()
    assert head.startswith("http/1.1 200")
    assert "api-version: 1.50" in head and "builder-version: 2" in head
    status, body = _status_and_body(engine.raw(b"GET /v1.41/version HTTP/1.1\r\nHost: d\r\n"
                                               b"Connection: close\r\n\r\n"))
    assert status == 200 and json.loads(body)["ApiVersion"] == "1.50"


@pytest.mark.parametrize("request_line,status,needle", [
    (b"GET /v1.99/version", 400, "client version 1.99 is too new"),
    (b"GET /v1.12/version", 400, "client version 1.12 is too old"),
    (b"GET /nope", 404, "page not found"),
    (b"PUT /version", 405, "method not allowed"),
    (b"GET /images/nosuchimage/json", 404, "No such image: nosuchimage"),
    (b"POST /build?buildargs=%7Bnot-json", 400, "error reading build args"),
    (b"POST /build?version=7", 400, "invalid version"),
    (b"POST /build?networkmode=bogus", 400, "unsupported network mode"),
    (b"POST /build/prune?filters=%7B%22until%22%3A%5B%22soon%22%5D%7D", 400, "until"),
    (b"POST /build?t=Bad%20Tag", 400, "invalid reference format"),
    (b"POST /build?shmsize=-1", 400, "invalid value for shmsize: must not be negative"),
    (b"POST /build?ulimits=%5B1", 400, "error reading ulimit settings"),
    (b"POST /build?isolation=hyperv", 400, "unsupported isolation"),
    (b"POST /build?remote=ftp%3A%2F%2Fexample.invalid%2Fc.tar", 400, "could not be recognized as URL"),
    (b"POST /build?outputs=%5B%7B%22type%22%3A%22local%22%7D%5D", 501, "outputs are only supported"),
    (b"POST /build?cgroupparent=..%2Fx", 400, "invalid cgroupparent"),
    (b"POST /build?memory=1", 400, "Minimum memory limit allowed is 6MB"),
    (b"POST /build?cpusetcpus=0-9999", 400, "Requested CPUs are not available"),
    (b"POST /build?labels=%5B%5D", 400, "error reading labels"),
])
def test_errors_are_json_messages_with_status(engine, request_line, status, needle):
    raw = engine.raw(request_line + b" HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    got, body = _status_and_body(raw)
    assert got == status, raw
    assert needle in json.loads(body)["message"]
    _alive(engine)


def test_huge_header_is_refused(engine):
    raw = engine.raw(b"GET /_ping HTTP/1.1\r\nHost: d\r\nX-Big: " + b"a" * (2 << 20) + b"\r\n\r\n")
    assert _status_and_body(raw)[0] == 431
    _alive(engine)


def test_garbage_request_gets_400(engine):
    raw = engine.raw(b"\x00\x01 this is not http\r\n\r\n")
    assert _status_and_body(raw)[0] == 400
    _alive(engine)


def test_client_hanging_up_mid_upload(engine):
    import time

    builds = engine.daemon.root / "state" / "dockerapi" / "builds"
    before = set(builds.iterdir()) if builds.exists() else set()
    for body in (b"\0" * 5000, b"5000\r\n" + b"\0" * 3000):  # sized, then chunked, both cut short
        framing = b"Content-Length: 1000000" if len(body) == 5000 else b"Transfer-Encoding: chunked"
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(engine.socket))
            s.sendall(b"POST /v1.47/build?t=hangup HTTP/1.1\r\nHost: d\r\nContent-Type: application/x-tar\r\n"
                      + framing + b"\r\n\r\n" + body)
        _alive(engine)
    assert engine.daemon.alive()

    def left() -> set:
        return (set(builds.iterdir()) if builds.exists() else set()) - before

    deadline = time.monotonic() + 30
    while left() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left(), f"the cut-off uploads left files behind: {sorted(p.name for p in left())} " \
                       f"(before: {sorted(p.name for p in before)})\n{engine.daemon.log_text()[-3000:]}"
    assert "hangup" not in engine.docker("images", "--format", "{{.Repository}}").stdout.decode()


def test_tcp_without_tls_is_refused(tmp_path, busybox_registry):
    try:
        e = start_engine(tmp_path / "e", busybox_registry, "--docker-addr", "tcp://127.0.0.1:0")
    except RuntimeError as exc:  # exited before its gRPC socket was up
        assert "needs TLS" in str(exc)
        return
    assert e.daemon.proc.wait(30) != 0
    assert "needs TLS" in e.daemon.log_text()


def test_unix_socket_mode(engine):
    assert engine.socket.stat().st_mode & 0o777 == 0o660
    assert subprocess.run([DOCKER, "--help"], capture_output=True).returncode == 0
