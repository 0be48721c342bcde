"""Remote build contexts: ``docker build git://…#ref:subdir`` from a loopback ``git daemon``, and
``docker build http://…`` of a tar archive or a plain Dockerfile from a loopback HTTP server."""

from __future__ import annotations

import functools
import http.server
import io
import json
import shutil
import subprocess
import tarfile
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from tests.conftest import free_port

from .test_build import _write


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@e", *args], cwd=cwd, check=True,
                   capture_output=True)


@pytest.fixture(scope="module")
def git_server(tmp_path_factory):
    if not shutil.which("git"):
        pytest.fail("git is needed for remote git contexts")
    base = tmp_path_factory.mktemp("git-served")
    work = tmp_path_factory.mktemp("git-work")
    _write(work, {"Dockerfile": "FROM busybox\nRUN echo top-level\n",
                  "app/Dockerfile": "FROM busybox\nCOPY hello.txt /hello.txt\nRUN cat /hello.txt\n",
                  "app/hello.txt": "hello from the main branch\n"})
    _git(work, "init", "-q", "-b", "main")
    _git(work, "add", ".")
    _git(work, "commit", "-q", "-m", "main")
    _git(work, "checkout", "-q", "-b", "feature")
    (work / "app" / "hello.txt").write_text("hello from the feature branch\n")
    _git(work, "commit", "-q", "-am", "feature")
    _git(work, "checkout", "-q", "main")
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(base / "repo.git")], check=True)
    port = free_port()
    proc = subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={base}",
                             "--listen=127.0.0.1", f"--port={port}", str(base)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while subprocess.run(["git", "ls-remote", f"git://127.0.0.1:{port}/repo.git"],
                         capture_output=True).returncode != 0:
        assert time.monotonic() < deadline and proc.poll() is None, "git daemon did not start"
        time.sleep(0.1)
    yield f"git://127.0.0.1:{port}/repo.git"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def http_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("http-served")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in {"Dockerfile": b"FROM busybox\nCOPY data.txt /data.txt\nRUN cat /data.txt\n",
                           "data.txt": b"from a remote tarball\n"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    (root / "context.tar.gz").write_bytes(buf.getvalue())
    (root / "Dockerfile.txt").write_text("FROM busybox\nRUN echo from-a-remote-dockerfile\n")
    (root / "binary.bin").write_bytes(b"\0\1\2 not a context" * 10)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _sdk_build(engine, remote: str, **kwargs) -> tuple[str, str]:
    """A build of ``remote`` through the Python SDK, which sends it as ``remote=`` (the docker CLI
    fetches git and http contexts itself and uploads a tar); returns (output, error)."""
    docker = pytest.importorskip("docker", reason="the dev dependency `docker` (Python SDK)")
    client = docker.APIClient(base_url=engine.host, version="1.47")
    try:
        messages = list(client.build(path=remote, decode=True, **kwargs))
    finally:
        client.close()
    out = "".join(m.get("stream", "") for m in messages)
    return out, "".join(m.get("error", "") for m in messages)


def _sdk_error(engine, remote: str) -> str:
    docker = pytest.importorskip("docker", reason="the dev dependency `docker` (Python SDK)")
    with pytest.raises(docker.errors.APIError) as err:
        _sdk_build(engine, remote)
    return str(err.value)


def test_git_context_with_ref_and_subdir(engine, git_server):
    out, err = _sdk_build(engine, f"{git_server}#main:app", tag="from-git")
    assert not err and "hello from the main branch" in out.splitlines(), out + err
    out, err = _sdk_build(engine, f"{git_server}#feature:app", tag="from-git-feature")
    assert "hello from the feature branch" in out.splitlines(), out + err
    out, err = _sdk_build(engine, git_server)  # default branch, repository root
    assert "top-level" in out.splitlines(), out + err
    message = _sdk_error(engine, f"{git_server}#no-such-branch")
    assert "unable to prepare context" in message and "no-such-branch" in message, message
    marker = Path("/tmp/h12-remote-injection-marker")
    message = _sdk_error(engine, f"{git_server}#--upload-pack=touch {marker}")
    assert "unable to prepare context" in message and not marker.exists(), message
    assert json.loads(engine.docker("image", "inspect", "from-git-feature").stdout)[0]["Id"] != \
        json.loads(engine.docker("image", "inspect", "from-git").stdout)[0]["Id"]


def test_http_tarball_and_plain_dockerfile(engine, http_server):
    out, err = _sdk_build(engine, f"{http_server}/context.tar.gz", tag="from-tarball")
    assert "from a remote tarball" in out.splitlines(), out + err
    inspect = json.loads(engine.docker("image", "inspect", "from-tarball").stdout)[0]
    assert inspect["Id"].startswith("sha256:")
    out, err = _sdk_build(engine, f"{http_server}/Dockerfile.txt")
    assert "from-a-remote-dockerfile" in out.splitlines(), out + err
    assert "neither a tar archive nor a text Dockerfile" in _sdk_error(engine, f"{http_server}/binary.bin")
    assert "failed to download" in _sdk_error(engine, f"{http_server}/missing.tar")
    # The docker CLI downloads http contexts itself and uploads them: the same context, so the
    # classic cache gives the same image.
    out = engine.docker("build", f"{http_server}/context.tar.gz").stdout.decode()
    assert out.count(" ---> Using cache") == 2, out
    assert out.splitlines()[-1] == f"Successfully built {inspect['Id'][7:19]}"


@pytest.mark.parametrize("remote,needle", [
    ("ftp://example.invalid/ctx.tar", "could not be recognized as URL"),
    ("git://127.0.0.1:1/x.git#main:../../etc", "must stay in the repository"),
])
def test_bad_remotes(engine, remote, needle):
    query = urllib.parse.urlencode({"remote": remote})
    raw = engine.raw(f"POST /v1.47/build?{query} HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\n"
                     "Connection: close\r\n\r\n".encode())
    assert raw.startswith(b"HTTP/1.1 400"), raw[:300]
    assert needle in json.loads(raw.partition(b"\r\n\r\n")[2])["message"]
