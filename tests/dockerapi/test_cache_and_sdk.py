"""Build-cache prune and cancellation through the Engine API, and the Python Docker SDK as a client."""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import threading
import time

import pytest

from buildkitpy.api import control_pb2

from .test_build import _write


def test_builder_prune_with_until_keeps_tagged_images(engine, tmp_path):
    ctx = tmp_path / "prune"
    _write(ctx, {"Dockerfile": "FROM busybox\nRUN echo prune-me > /p.txt\n"})
    engine.docker("build", "-t", "prune-kept", str(ctx))
    out = engine.docker("builder", "prune", "-f", "--filter", "until=1h").stdout.decode()
    assert "Total reclaimed space" in out  # nothing is older than an hour: nothing goes
    out = engine.docker("builder", "prune", "-af").stdout.decode()
    assert re.search(r"Total reclaimed space: [1-9]", out), out
    # The tagged image's content survives and it still works as a base.
    child = tmp_path / "after-prune"
    _write(child, {"Dockerfile": "FROM prune-kept\nRUN cat /p.txt\n"})
    assert "prune-me" in engine.docker("build", str(child)).stdout.decode()
    res = engine.raw(b"POST /build/prune?keep-storage=lots HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\n"
                     b"Connection: close\r\n\r\n")
    assert res.startswith(b"HTTP/1.1 400") and b"expects an integer" in res


def _tar_of(files: dict[str, bytes]) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _runc_containers(engine) -> list[str]:
    root = engine.daemon.root / "state" / "executor"
    res = subprocess.run(["runc", "--root", str(root / "runc"), "list", "-q"], capture_output=True)
    return res.stdout.decode().split() if res.returncode == 0 else []


@pytest.mark.parametrize("version", ["1", "2"])  # the classic builder and BuildKit
@pytest.mark.parametrize("stop", ["cancel", "hangup"])  # POST /build/cancel, the client closing
def test_stop_mid_run(engine, version, stop):
    body = _tar_of({"Dockerfile": b"FROM busybox\nRUN echo started && /bin/busybox sleep 120\n"})
    received = bytearray()
    done = threading.Event()
    sock = socket.socket(socket.AF_UNIX)
    build_id = f"stop-{stop}-{version}"

    def run_build() -> None:
        with sock:
            sock.settimeout(90)
            sock.connect(str(engine.socket))
            sock.sendall((f"POST /v1.47/build?buildid={build_id}&t=never&version={version} HTTP/1.1\r\n"
                          f"Host: d\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body)
            try:
                while b"0\r\n\r\n" not in received:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    received.extend(chunk)
            except OSError:
                pass  # we hung up
        done.set()

    thread = threading.Thread(target=run_build, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60

    def running() -> bool:
        if version == "1":
            return b"started" in received
        for aux in re.findall(rb'"moby.buildkit.trace", "aux": "([^"]+)"', bytes(received)):
            status = control_pb2.StatusResponse()
            status.ParseFromString(base64.b64decode(aux))
            if any(b"started" in log.msg for log in status.logs):
                return True
        return False

    while not running() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running(), received.decode(errors="replace")
    cancel = (f"POST /build/cancel?id={build_id} HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\n"
              "Connection: close\r\n\r\n").encode()
    if stop == "cancel":
        res = engine.raw(cancel)
        assert res.startswith(b"HTTP/1.1 200"), res
    else:
        sock.shutdown(socket.SHUT_RDWR)
    stopped = time.monotonic()
    assert done.wait(10), "the build stream did not end"
    if stop == "cancel":
        assert b'"error": "Build cancelled"' in received
    while _runc_containers(engine) and time.monotonic() - stopped < 5:
        time.sleep(0.1)
    assert _runc_containers(engine) == []
    builds = engine.daemon.root / "state" / "dockerapi" / "builds"
    while builds.exists() and any(builds.iterdir()) and time.monotonic() - stopped < 5:
        time.sleep(0.1)
    assert not builds.exists() or not any(builds.iterdir()), "the stopped build's context is left"
    assert time.monotonic() - stopped < 5
    assert engine.raw(cancel).startswith(b"HTTP/1.1 404")  # it is not running any more
    assert "never" not in engine.docker("images", "--format", "{{.Repository}}").stdout.decode()


def test_python_docker_sdk(engine, tmp_path):
    docker = pytest.importorskip("docker", reason="the dev dependency `docker` (Python SDK)")
    ctx = tmp_path / "sdk"
    _write(ctx, {"Dockerfile": "FROM busybox\nARG WHO=nobody\nRUN echo hello $WHO\nLABEL via=sdk\n"})
    client = docker.DockerClient(base_url=engine.host, version="1.47")
    try:
        image, stream = client.images.build(path=str(ctx), tag="sdk-image", buildargs={"WHO": "sdk"},
                                            rm=True)
        logs = list(stream)
        text = "".join(entry.get("stream", "") for entry in logs)
        assert "hello sdk" in text and "Successfully tagged sdk-image:latest" in text
        assert any("aux" in entry for entry in logs)
        assert image.labels == {"via": "sdk"}
        assert "sdk-image:latest" in [t for i in client.images.list() for t in i.tags]
        with pytest.raises(docker.errors.APIError) as err:
            client.images.build(path=str(ctx), buildargs={"WHO": "x"}, dockerfile="Missing.Dockerfile")
        assert "Cannot locate specified Dockerfile" in str(err.value)
        pruned = client.api.prune_builds()
        assert set(pruned) >= {"CachesDeleted", "SpaceReclaimed"}
    finally:
        client.close()
    assert json.loads(engine.docker("image", "inspect", "sdk-image").stdout)[0]["Config"]["Labels"] == \
        {"via": "sdk"}


@pytest.mark.parametrize("filters", ['{"inuse":["true"]}', '{"private":[]}', '{"shared":["true"]}',
                                     '{"parent":["nosuchparent"]}', '{"type":["regular"]}',
                                     '{"id":["nosuchid"]}', '{"until":["2001-01-01T00:00:00Z"]}'])
def test_build_prune_filters_and_sizes(engine, filters):
    import urllib.parse

    query = urllib.parse.urlencode({"filters": filters, "reserved-space": "1000000000",
                                    "max-used-space": "0", "min-free-space": "0"})
    raw = engine.raw(f"POST /v1.48/build/prune?{query} HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\n"
                     "Connection: close\r\n\r\n".encode())
    assert raw.startswith(b"HTTP/1.1 200"), raw
    report = json.loads(raw.partition(b"\r\n\r\n")[2])
    assert isinstance(report["CachesDeleted"], list) and isinstance(report["SpaceReclaimed"], int)
