"""The git source against a repository served over git's dumb HTTP transport (plain files from a
real HTTP server), which cannot serve shallow fetches: the source falls back to a full fetch, as
BuildKit's does."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildkitpy import llb
from tests.solver.conftest import Env
from tests.sources.gitfixture import Repo, git


@pytest.fixture
def dumb_http(tmp_path: Path) -> Iterator[tuple[Repo, str]]:
    work = Repo(tmp_path, "work", "")
    work.write("README", "v1\n")
    work.write("bin/tool", "#!/bin/sh\n", mode=0o755)
    work.commit("first")
    served = tmp_path / "served"
    served.mkdir()
    git(tmp_path, "clone", "--quiet", "--bare", str(work.path), str(served / "app.git"))
    git(served / "app.git", "update-server-info")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield work, f"http://127.0.0.1:{server.server_address[1]}/app.git"
    finally:
        server.shutdown()
        server.server_close()


def test_branch_and_commit_over_dumb_http(env: Env, dumb_http: tuple[Repo, str]) -> None:
    work, url = dumb_http
    expected = {"README": b"v1\n", "bin": "dir", "bin/tool": b"#!/bin/sh\n"}
    assert env.tree(llb.marshal(llb.git(url, "main"))) == expected
    sha = work.run("rev-parse", "HEAD")
    assert env.tree(llb.marshal(llb.git(url, sha))) == expected
    assert env.live_handles() == {}
