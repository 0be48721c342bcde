"""A build context named by URL (``--opt context=<git or http URL>``, what ``docker buildx build
https://…/repo.git`` sends): the Dockerfile and the context come from the checkout or the download,
no client directory is involved. Real daemon, git daemon and HTTP server on loopback."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sources.conftest import FileServer, Resource
from tests.sources.gitfixture import GitServer, Repo


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repo]:
    server = GitServer(tmp_path / "served")
    repo = server.repo("app.git")
    repo.write("Dockerfile", "FROM scratch\nCOPY . /src/\n")
    repo.write(".dockerignore", "secret.txt\n")
    repo.write("secret.txt", "not ignored: a remote context has no .dockerignore\n")
    repo.write("app/Dockerfile", "FROM scratch\nCOPY . /app/\n")
    repo.write("app/main.txt", "main\n")
    repo.commit("first")
    yield repo
    server.close()


def build(daemon, out: Path, *extra: str, check: bool = True):  # noqa: ANN001, ANN201
    return daemon.client("build", "--progress", "plain", "--frontend", "dockerfile.v0", "--output",
                         f"type=local,dest={out}", *extra, check=check)


def test_git_context_gives_dockerfile_and_files(daemon, tmp_path: Path, repo: Repo) -> None:  # noqa: ANN001
    out = tmp_path / "out"
    res = build(daemon, out, "--opt", f"context={repo.url}#main")
    assert (out / "src/app/main.txt").read_text() == "main\n"
    assert (out / "src/secret.txt").exists()  # BuildKit applies no .dockerignore to it
    assert f"[internal] load git source {repo.url}#main" in res.stderr.decode()

    sub = tmp_path / "sub"
    build(daemon, sub, "--opt", f"context={repo.url}#main:app")
    assert sorted(p.name for p in (sub / "app").iterdir()) == ["Dockerfile", "main.txt"]


def test_git_context_with_a_local_dockerfile(daemon, tmp_path: Path, repo: Repo) -> None:  # noqa: ANN001
    local = tmp_path / "df"
    local.mkdir()
    (local / "Dockerfile").write_text("FROM scratch\nCOPY app/main.txt /only.txt\n")
    out = tmp_path / "out"
    build(daemon, out, "--opt", f"context={repo.url}", "--opt", "dockerfilekey=dockerfile",
          "--local", f"dockerfile={local}")
    assert [p.name for p in out.iterdir()] == ["only.txt"]


def test_git_context_subdir_option_and_bad_ref(daemon, tmp_path: Path, repo: Repo) -> None:  # noqa: ANN001
    out = tmp_path / "out"
    build(daemon, out, "--opt", f"context={repo.url}#main", "--opt", "contextsubdir=app")
    assert sorted(p.name for p in (out / "src").iterdir()) == ["Dockerfile", "main.txt"]

    res = build(daemon, tmp_path / "bad", "--opt", f"context={repo.url}#no-such-branch", check=False)
    assert res.returncode != 0
    assert "no-such-branch" in res.stderr.decode()
    assert daemon.alive()


def test_http_context_plain_dockerfile_and_archive(daemon, tmp_path: Path,  # noqa: ANN001
                                                   http_server: FileServer) -> None:
    http_server.resources["/Dockerfile"] = Resource(b"FROM scratch\nCOPY . /ctx/\n")
    out = tmp_path / "plain"
    build(daemon, out, "--opt", f"context={http_server.url('/Dockerfile')}")
    assert (out / "ctx/context").read_bytes() == b"FROM scratch\nCOPY . /ctx/\n"  # the file is both

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("Dockerfile", b"FROM scratch\nCOPY data.txt /got.txt\n"), ("data.txt", b"x\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    http_server.resources["/ctx.tar.gz"] = Resource(gzip.compress(buf.getvalue()))
    out = tmp_path / "archive"
    build(daemon, out, "--opt", f"context={http_server.url('/ctx.tar.gz')}")
    assert (out / "got.txt").read_bytes() == b"x\n"


def test_git_and_http_named_contexts(daemon, tmp_path: Path, repo: Repo,  # noqa: ANN001
                                     http_server: FileServer) -> None:
    http_server.resources["/notes.txt"] = Resource(b"downloaded\n")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY --from=src main.txt /from-git.txt\n"
                                    "COPY --from=notes context /from-http.txt\n")
    out = tmp_path / "out"
    build(daemon, out, "--local", f"context={ctx}", "--local", f"dockerfile={ctx}",
          "--opt", f"context:src={repo.url}#main:app",
          "--opt", f"context:notes={http_server.url('/notes.txt')}")
    assert (out / "from-git.txt").read_text() == "main\n"
    assert (out / "from-http.txt").read_bytes() == b"downloaded\n"
