"""git sources through the daemon (LLB on stdin, as buildctl sends it), over smart HTTP with the
build's secrets as credentials."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildkitpy import llb
from tests.sources.gitfixture import GitHTTPServer, Repo

TOKEN = "s3cr3t-token"


@pytest.fixture
def http_git(tmp_path: Path) -> Iterator[tuple[GitHTTPServer, Repo]]:
    base = tmp_path / "repos"
    base.mkdir()
    expected = "basic " + base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
    server = GitHTTPServer(base, auth=expected)
    repo = Repo(base, "private.git", server.url("private.git"))
    repo.write("sub/dir/file.txt", "private content\n")
    repo.write("top.txt", "top\n")
    repo.commit("first")
    yield server, repo
    server.close()


def test_git_over_http_with_token_secret(daemon, tmp_path: Path, http_git) -> None:  # noqa: ANN001
    server, repo = http_git
    defn = llb.marshal(llb.git(repo.url, "main", subdir="sub")).SerializeToString()
    out = tmp_path / "out"
    res = daemon.client("build", "--output", f"type=local,dest={out}", input=defn, check=False)
    assert res.returncode == 1
    assert f"failed to fetch remote {repo.url}" in res.stderr.decode()

    secret = tmp_path / "token"
    secret.write_text(TOKEN)
    daemon.client("build", "--output", f"type=local,dest={out}", "--secret",
                  f"id=GIT_AUTH_TOKEN.127.0.0.1:{server.port},src={secret}", input=defn)
    assert (out / "dir" / "file.txt").read_text() == "private content\n"
    assert not (out / "top.txt").exists()
    assert TOKEN not in daemon.log_text()
