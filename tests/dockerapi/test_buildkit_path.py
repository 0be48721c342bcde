"""The BuildKit path of the Engine API, over real sockets, driven by our own client code.

buildx's docker driver talks BuildKit's Control API over ``POST /grpc`` and serves its session over
``POST /session`` (both upgraded to h2c); ``buildkitpy.client.engine`` does the same here. Older docker
CLIs send ``POST /build?version=2`` instead, with the context in their session or in the body, and
read BuildKit's progress back as ``moby.buildkit.trace`` messages. Results land in the Engine API's
image store through the ``moby`` exporter, where the real ``docker`` CLI finds them.
"""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import tarfile
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio
import pytest

from buildkitpy.api import control_pb2
from buildkitpy.client import engine as engine_client
from buildkitpy.client.options import ExportEntry
from buildkitpy.client.rpc_errors import BuildkitError
from buildkitpy.client.solve import SolveOpt
from buildkitpy.session.client import ClientSession
from buildkitpy.session.filesync import FileSyncAttachable
from buildkitpy.session.secrets import SecretsAttachable

from .test_build import _write

SESSION_REQUEST = re.compile(r"Engine API POST (?:/v[0-9.]+)?/session")
SECRET_AND_CACHE = ("FROM busybox\n"
                    "RUN --mount=type=secret,id=tok cat /run/secrets/tok > /tok.txt # {word}\n"
                    "RUN --mount=type=cache,target=/cache echo {word} >> /cache/log && cat /cache/log\n"
                    "LABEL path=buildkit\n")


def _image_files(engine, name: str) -> dict[str, bytes]:
    saved = engine.docker("save", name).stdout
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(saved)) as t:
        manifest = json.loads(t.extractfile("manifest.json").read())[0]
        for layer in manifest["Layers"]:
            with tarfile.open(fileobj=io.BytesIO(t.extractfile(layer).read())) as lt:
                for m in lt.getmembers():
                    if m.isfile():
                        files[m.name] = lt.extractfile(m).read()
    return files


def _logs(statuses: list[control_pb2.StatusResponse]) -> str:
    return "".join(log.msg.decode(errors="replace") for s in statuses for log in s.logs)


def test_solve_over_grpc_with_session_over_session_endpoint(engine, tmp_path):
    """What buildx's docker driver does: Control.Solve through /grpc, the session on /session."""
    ctx = tmp_path / "ctx"
    _write(ctx, {"Dockerfile": SECRET_AND_CACHE.format(word="py-grpc")})
    before = len(SESSION_REQUEST.findall(engine.daemon.log_text()))

    async def build() -> tuple[dict[str, str], list[control_pb2.StatusResponse]]:
        statuses: list[control_pb2.StatusResponse] = []
        opt = SolveOpt(frontend="dockerfile.v0", local_dirs={"context": ctx, "dockerfile": ctx},
                       secrets={"tok": b"s3cret-token"},
                       exports=[ExportEntry(type="moby", attrs={"name": "py-engine:latest"})])
        with anyio.fail_after(120):
            async with engine_client.connect(engine.host, api_version="1.47") as client:
                workers = await client.list_workers()
                assert workers and workers[0].platforms
                result = await client.solve(opt, on_status=statuses.append)
        return result.exporter_response, statuses

    response, statuses = anyio.run(build)
    names = {v.name for s in statuses for v in s.vertexes}
    assert "[internal] load build definition from Dockerfile" in names
    assert any("RUN --mount=type=cache,target=/cache" in n for n in names)
    assert "py-grpc" in _logs(statuses)
    assert any(v.name == "naming to docker.io/library/py-engine:latest" for s in statuses for v in s.statuses)
    inspect = json.loads(engine.docker("image", "inspect", "py-engine").stdout)[0]
    assert inspect["Id"] == response["containerimage.config.digest"] == response["containerimage.digest"]
    manifest = json.loads(base64.b64decode(response["containerimage.descriptor"]))["digest"]
    by_manifest = json.loads(engine.docker("image", "inspect", manifest).stdout)[0]
    assert by_manifest["Id"] == inspect["Id"]
    assert inspect["Config"]["Labels"] == {"path": "buildkit"}
    files = _image_files(engine, "py-engine")
    assert files["tok.txt"] == b"s3cret-token"
    assert not any(name.startswith("run/secrets") for name in files)
    # the session went over the Engine's /session endpoint, not Control.Session
    assert len(SESSION_REQUEST.findall(engine.daemon.log_text())) > before

    _, again = anyio.run(build)
    cached = {v.name for s in again for v in s.vertexes if v.cached}
    assert any("RUN --mount=type=secret" in n for n in cached), cached


def test_multi_platform_build_keeps_the_host_image(engine, tmp_path):
    """buildx allows several platforms with the docker driver here (our worker names its snapshotter):
    the store keeps this machine's image of the index, the one `docker run` would use."""
    from buildkitpy.worker import host_platform

    ctx = tmp_path / "ctx"
    _write(ctx, {"Dockerfile": "FROM scratch\nCOPY a.txt /a.txt\n", "a.txt": "multi\n"})
    host = host_platform()["architecture"]
    other = "arm64" if host != "arm64" else "amd64"

    async def build(platforms: str) -> dict[str, str]:
        opt = SolveOpt(frontend="dockerfile.v0", local_dirs={"context": ctx, "dockerfile": ctx},
                       frontend_attrs={"platform": platforms},
                       exports=[ExportEntry(type="moby", attrs={"name": "py-multi:latest"})])
        with anyio.fail_after(120):
            async with engine_client.connect(engine.host) as client:
                return (await client.solve(opt)).exporter_response

    response = anyio.run(build, f"linux/{host},linux/{other}")
    assert "containerimage.config.digest" not in response  # an index
    inspect = json.loads(engine.docker("image", "inspect", "py-multi").stdout)[0]
    assert inspect["Architecture"] == host
    assert _image_files(engine, "py-multi")["a.txt"] == b"multi\n"
    with pytest.raises(BuildkitError, match="keeps one platform of an image, this machine's"):
        anyio.run(build, f"linux/{other},linux/s390x")


async def _session_dialer(engine) -> Any:
    async def dial(headers: list[tuple[str, str]]) -> Any:
        return await engine_client.dial_hijack(engine.host, "/v1.47/session", "h2c", headers)
    return dial


def _post_build(engine, query: dict[str, str], body: bytes = b"", timeout: float = 180) -> list[dict]:
    """``POST /build`` on a fresh connection; the streamed JSON messages."""
    import http.client

    class Conn(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.settimeout(timeout)
            self.sock.connect(str(engine.socket))

    conn = Conn("docker")
    conn.request("POST", "/v1.47/build?" + urlencode(query), body=body,
                 headers={"Content-Type": "application/x-tar"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    if resp.status != 200:
        return [{"status": resp.status, "message": json.loads(data)["message"]}]
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def _traces(messages: list[dict]) -> list[control_pb2.StatusResponse]:
    out = []
    for m in messages:
        if m.get("id") == "moby.buildkit.trace":
            status = control_pb2.StatusResponse()
            status.ParseFromString(base64.b64decode(m["aux"]))
            out.append(status)
    return out


def _image_id(messages: list[dict]) -> str:
    ids = [m["aux"]["ID"] for m in messages if m.get("id") == "moby.image.id"]
    assert len(ids) == 1, messages
    return ids[0]


def test_build_version2_with_client_session(engine, tmp_path):
    """The older CLI's BuildKit path: context and secrets in the client's session (/session),
    ``POST /build?version=2&remote=client-session``, progress as moby.buildkit.trace."""
    ctx = tmp_path / "ctx"
    _write(ctx, {"Dockerfile": SECRET_AND_CACHE.format(word="v2-session"), "extra.txt": "x"})

    async def build() -> list[dict]:
        session = ClientSession([FileSyncAttachable({"context": ctx, "dockerfile": ctx}),
                                 SecretsAttachable({"tok": b"from-the-session"})])
        with anyio.fail_after(180):
            async with session.run_dialed(await _session_dialer(engine)):
                return await anyio.to_thread.run_sync(_post_build, engine, {
                    "version": "2", "remote": "client-session", "session": session.session_id,
                    "t": "v2-session", "dockerfile": "Dockerfile", "buildargs": json.dumps({"A": "1"})})

    messages = anyio.run(build)
    assert not any("error" in m for m in messages), messages
    traces = _traces(messages)
    names = {v.name for s in traces for v in s.vertexes}
    assert "[internal] load build definition from Dockerfile" in names, names
    assert "v2-session" in _logs(traces)
    image_id = _image_id(messages)
    inspect = json.loads(engine.docker("image", "inspect", "v2-session").stdout)[0]
    assert inspect["Id"] == image_id
    assert _image_files(engine, "v2-session")["tok.txt"] == b"from-the-session"


def test_build_version2_with_tar_body(engine, tmp_path):
    """The context as the request body (no session): the daemon serves the unpacked tar itself."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, text in {"Dockerfile": "FROM busybox\nCOPY a.txt /a.txt\nRUN --mount=type=cache,target=/c"
                                         " cat /a.txt && echo body >> /c/log && cat /c/log\n",
                           "a.txt": "from the body\n"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(text)
            t.addfile(info, io.BytesIO(text.encode()))
    messages = _post_build(engine, {"version": "2", "t": "v2-body"}, buf.getvalue())
    assert not any("error" in m for m in messages), messages
    logs = _logs(_traces(messages))
    assert "from the body" in logs and "body" in logs
    image_id = _image_id(messages)
    assert json.loads(engine.docker("image", "inspect", "v2-body").stdout)[0]["Id"] == image_id
    assert _image_files(engine, "v2-body")["a.txt"] == b"from the body\n"


@pytest.mark.parametrize("upload_first", [False, True])
def test_build_version2_with_upload_request(engine, upload_first):
    """moby's two requests: the build (remote=upload-request) and the context's upload, either first."""
    import threading
    import time

    body = _tar({"Dockerfile": "FROM busybox\nCOPY u.txt /u.txt\n", "u.txt": f"uploaded {upload_first}\n"})
    build_id = f"up-{int(upload_first)}"
    results: dict[str, list[dict]] = {}

    def build() -> None:
        results["build"] = _post_build(engine, {"version": "2", "remote": "upload-request",
                                                "buildid": build_id, "t": f"v2-upload-{int(upload_first)}"})

    def upload() -> None:
        results["upload"] = _post_build(engine, {"version": "2", "buildid": f"upload-request:{build_id}"},
                                        body)

    first, second = (upload, build) if upload_first else (build, upload)
    threads = [threading.Thread(target=first)]
    threads[0].start()
    time.sleep(0.5)
    threads.append(threading.Thread(target=second))
    threads[1].start()
    for t in threads:
        t.join(120)
    assert results["upload"] == [], results
    image_id = _image_id(results["build"])
    name = f"v2-upload-{int(upload_first)}"
    assert json.loads(engine.docker("image", "inspect", name).stdout)[0]["Id"] == image_id
    assert _image_files(engine, name)["u.txt"] == f"uploaded {upload_first}\n".encode()


def test_build_version2_body_context_with_client_session(engine, tmp_path):
    """The context as the body, secrets and the local exporter's files through the client's session
    (what an older CLI sends for `docker build --secret … -o type=local,dest=… - < ctx.tar`)."""
    from buildkitpy.session.filesync import FileSendAttachable, LocalDirTarget

    body = _tar({"Dockerfile": "FROM busybox\nRUN --mount=type=secret,id=tok cat /run/secrets/tok > /s.txt"
                               " # body+session\nCOPY b.txt /b.txt\n", "b.txt": "from the body\n"})
    out = tmp_path / "out"

    async def build(outputs: list[dict], tag: str) -> list[dict]:
        session = ClientSession([SecretsAttachable({"tok": b"forwarded-secret"}),
                                 FileSendAttachable({"0": LocalDirTarget(out)})])
        with anyio.fail_after(180):
            async with session.run_dialed(await _session_dialer(engine)):
                query = {"version": "2", "session": session.session_id, "t": tag}
                if outputs:
                    query["outputs"] = json.dumps(outputs)
                return await anyio.to_thread.run_sync(_post_build, engine, query, body)

    messages = anyio.run(build, [], "v2-body-session")
    assert not any("error" in m for m in messages), messages
    assert _image_files(engine, "v2-body-session")["s.txt"] == b"forwarded-secret"
    messages = anyio.run(build, [{"Type": "local", "Attrs": {}}], "")
    assert not any("error" in m for m in messages), messages
    assert (out / "s.txt").read_bytes() == b"forwarded-secret"
    assert (out / "b.txt").read_text() == "from the body\n"


def _tar(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            t.addfile(info, io.BytesIO(text.encode()))
    return buf.getvalue()


def test_build_version2_failure_is_streamed(engine, tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        text = b"FROM busybox\nRUN echo about to fail && exit 3\n"
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(text)
        t.addfile(info, io.BytesIO(text))
    messages = _post_build(engine, {"version": "2", "t": "v2-fail"}, buf.getvalue())
    errors = [m for m in messages if "error" in m]
    assert errors and "exit code: 3" in errors[-1]["error"], messages
    assert errors[-1]["errorDetail"]["message"] == errors[-1]["error"]
    assert "about to fail" in _logs(_traces(messages))


@pytest.mark.parametrize("query,needle", [
    ({"remote": "client-session"}, "needs the session parameter"),
    ({"remote": "client-session", "session": "nosuchsession000000000000"}, "no active session"),
    ({"outputs": json.dumps([{"Type": "local"}, {"Type": "tar"}])}, "multiple outputs not supported"),
    ({"outputs": json.dumps([{"Type": "bogus"}])}, "unsupported output type 'bogus'"),
    ({"outputs": json.dumps(["local"])}, "error reading outputs"),
    ({"outputs": json.dumps([{"Type": "local"}])}, "sends its result to the client's session"),
    ({"session": "nosuchsession000000000001"}, "no active session"),
    ({"networkmode": "bridge"}, "not supported by buildkit"),
    ({"extrahosts": "nohost:"}, "invalid host"),
    ({"ulimits": json.dumps([{"Name": "nofile", "Soft": "x", "Hard": 1}])}, "invalid ulimit"),
    ({"remote": "upload-request"}, "remote=upload-request needs a buildid"),
    ({"remote": "upload-request", "buildid": "never-uploaded"}, "was not uploaded within 5s"),
    ({"buildid": "upload-request:nobody-waits"}, "no build nobody-waits took the uploaded context"),
])
def test_build_version2_bad_requests(engine, query, needle):
    messages = _post_build(engine, {"version": "2", **query}, timeout=60)
    text = json.dumps(messages)
    assert needle in text, messages
    assert messages[0].get("status", 200) in (200, 400, 404, 500, 501)
    _alive(engine)


def _alive(engine) -> None:
    raw = engine.raw(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200") and raw.endswith(b"OK"), raw


def _send_once(engine, data: bytes) -> bytes:
    """Send a request, close our side and read the answer until the daemon closes the connection."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(str(engine.socket))
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _status_and_message(raw: bytes) -> tuple[int, str]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)["message"]


@pytest.mark.parametrize("path,headers,status,needle", [
    (b"/grpc", b"", 400, "no upgrade proto in request"),
    (b"/grpc", b"Connection: Upgrade\r\nUpgrade: websocket\r\n", 400, "protocol websocket not supported"),
    (b"/session", b"Connection: Upgrade\r\nUpgrade: h2c\r\n", 400, "POST /session without a session id"),
    (b"/session", b"Upgrade: h2c\r\nX-Docker-Expose-Session-Uuid: abc\r\n", 400, "needs Connection: Upgrade"),
    (b"/v1.47/session", b"X-Docker-Expose-Session-Uuid: abc\r\n", 400, "no upgrade proto"),
])
def test_malformed_upgrades_get_clear_errors(engine, path, headers, status, needle):
    raw = _send_once(engine, b"POST " + path + b" HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\n" + headers
                     + b"\r\n")
    got, message = _status_and_message(raw)
    assert got == status and needle in message, raw
    _alive(engine)


def test_get_on_upgrade_endpoints_is_refused(engine):
    raw = engine.raw(b"GET /grpc HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n")
    assert _status_and_message(raw) == (405, "method not allowed")


@pytest.mark.parametrize("path,extra", [(b"/grpc", b""),
                                        (b"/session", b"X-Docker-Expose-Session-Uuid: garbage1\r\n")])
def test_garbage_after_upgrade_leaves_the_daemon_serving(engine, path, extra):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(str(engine.socket))
        s.sendall(b"POST " + path + b" HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n" + extra
                  + b"\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            assert chunk, head
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
        s.sendall(b"\x00\xff this is not HTTP/2 at all \r\n\r\n" * 100)
        s.shutdown(socket.SHUT_WR)
        while s.recv(65536):  # the daemon ends the connection
            pass
    _alive(engine)
    assert engine.daemon.alive()


def test_duplicate_session_is_refused(engine, tmp_path):
    async def run() -> str:
        session = ClientSession([])
        async with session.run_dialed(await _session_dialer(engine)):
            await anyio.sleep(0.5)
            try:
                await engine_client.dial_hijack(engine.host, "/session", "h2c", session.metadata())
            except engine_client.EngineAPIError as exc:
                return f"{exc.status} {exc}"
        return "accepted"

    answer = anyio.run(run)
    assert answer.startswith("409 ") and "already exists" in answer, answer


def test_engine_client_reports_refusals(tmp_path):
    async def dial(host: str) -> str:
        try:
            async with engine_client.connect(host):
                return "connected"
        except engine_client.EngineAPIError as exc:
            return str(exc)

    missing = Path(tmp_path) / "nothing.sock"
    assert "cannot connect to the Docker Engine API" in anyio.run(dial, f"unix://{missing}")
