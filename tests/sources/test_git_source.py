"""The git:// source through the real solver against a real ``git daemon`` on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildkitpy import llb
from buildkitpy.errors import BuildkitpyError
from tests.solver.conftest import Env, describe
from tests.sources.gitfixture import GitServer, Repo, source_definition


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    s = GitServer(tmp_path_factory.mktemp("served"))
    yield s
    s.close()


@pytest.fixture
def repo(server: GitServer, request: pytest.FixtureRequest) -> Repo:
    r = server.repo(f"{request.node.name}.git")
    r.write("README", "v1\n")
    r.write("src/app/main.py", "print('hi')\n", mode=0o755)
    r.write("docs/index.md", "# docs\n")
    r.symlink("link-to-src", "src")
    r.symlink("escape", "../../..")
    r.commit("first")
    r.run("tag", "light")
    r.run("tag", "-a", "v1.0", "-m", "release 1.0")
    r.run("branch", "stable")
    return r


def tree(env: Env, state: llb.State) -> dict[str, object]:
    return env.tree(llb.marshal(state))


def test_default_branch_branch_tags_and_sha(env: Env, repo: Repo) -> None:
    first = repo.run("rev-parse", "HEAD")
    repo.write("README", "v2\n")
    second = repo.commit("second")
    expected_v1 = {"README": b"v1\n", "src": "dir", "src/app": "dir", "src/app/main.py": b"print('hi')\n",
                   "docs": "dir", "docs/index.md": b"# docs\n", "link-to-src": ("link", "src"),
                   "escape": ("link", "../../..")}
    expected_v2 = {**expected_v1, "README": b"v2\n"}
    assert tree(env, llb.git(repo.url)) == expected_v2  # default branch (HEAD -> main)
    assert tree(env, llb.git(repo.url, "main")) == expected_v2
    assert tree(env, llb.git(repo.url, "stable")) == expected_v1
    assert tree(env, llb.git(repo.url, "light")) == expected_v1
    assert tree(env, llb.git(repo.url, "v1.0")) == expected_v1
    assert tree(env, llb.git(repo.url, "refs/tags/v1.0")) == expected_v1
    assert tree(env, llb.git(repo.url, first)) == expected_v1
    assert tree(env, llb.git(repo.url, second)) == expected_v2
    assert env.live_handles() == {}


def test_checkout_keeps_modes_and_has_no_git_dir(env: Env, repo: Repo) -> None:
    res = env.solve(llb.marshal(llb.git(repo.url, "main")))
    try:
        with res.ref.mount() as root:
            assert os.stat(os.path.join(root, "src/app/main.py")).st_mode & 0o777 == 0o755
            assert os.stat(os.path.join(root, "README")).st_mode & 0o777 == 0o644
            assert not os.path.exists(os.path.join(root, ".git"))
    finally:
        res.ref.release()


def test_cache_key_is_the_commit(env: Env, repo: Repo) -> None:
    first = repo.run("rev-parse", "HEAD")
    assert tree(env, llb.git(repo.url, "main"))["README"] == b"v1\n"
    assert len(env.executed()) == 1
    # another ref naming the same commit: same key, no checkout
    assert tree(env, llb.git(repo.url, "stable"))["README"] == b"v1\n"
    assert env.executed() == []
    assert tree(env, llb.git(repo.url, first))["README"] == b"v1\n"
    assert env.executed() == []
    # an annotated tag is keyed by the commit it points at
    assert tree(env, llb.git(repo.url, "v1.0"))["README"] == b"v1\n"
    assert env.executed() == []
    # the branch moves: new commit, new key, new checkout
    repo.write("README", "v2\n")
    repo.commit("second")
    assert tree(env, llb.git(repo.url, "main"))["README"] == b"v2\n"
    assert len(env.executed()) == 1
    assert tree(env, llb.git(repo.url, "main"))["README"] == b"v2\n"
    assert env.executed() == []
    # a restarted daemon keeps the cache (and the shared repository)
    env.restart()
    assert tree(env, llb.git(repo.url, "main"))["README"] == b"v2\n"
    assert env.executed() == []


def test_subdir(env: Env, repo: Repo) -> None:
    assert tree(env, llb.git(repo.url, "main", subdir="src")) == {"app": "dir",
                                                                  "app/main.py": b"print('hi')\n"}
    assert tree(env, llb.git(repo.url, "main", subdir="/src/app/")) == {"main.py": b"print('hi')\n"}
    # subdir is part of the key: the whole tree is not served from the subdir's cache entry
    assert "README" in tree(env, llb.git(repo.url, "main"))


def test_subdir_with_dotdot_is_refused(env: Env, repo: Repo) -> None:
    for subdir in ("..", "../..", "src/../../etc", "../other.git"):
        defn = source_definition(f"git://127.0.0.1/project.git#main:{subdir}", {"git.fullurl": repo.url})
        with pytest.raises(BuildkitpyError, match="'..' would leave the repository"):
            env.solve(defn)


def test_subdir_through_symlink_or_file_is_refused(env: Env, repo: Repo) -> None:
    for subdir, what in (("escape", "symlink 'escape'"), ("link-to-src/app", "symlink 'link-to-src'"),
                         ("README", "non-directory 'README'"), ("nope", "'nope' does not exist")):
        with pytest.raises(BuildkitpyError, match=what):
            env.solve(llb.marshal(llb.git(repo.url, "main", subdir=subdir)))
    assert env.live_handles() == {}
    assert env.mutables() == []


def test_keep_git_dir(env: Env, repo: Repo, tmp_path: Path) -> None:
    sha = repo.run("rev-parse", "HEAD")
    res = env.solve(llb.marshal(llb.git(repo.url, "main", keep_git_dir=True)))
    try:
        with res.ref.mount() as root:
            files = describe(Path(root))
            assert files["README"] == b"v1\n"
            head = subprocess.run(["git", "--git-dir", f"{root}/.git", "rev-parse", "HEAD"],
                                  capture_output=True, text=True, check=True).stdout.strip()
            assert head == sha
            url = subprocess.run(["git", "--git-dir", f"{root}/.git", "remote", "get-url", "origin"],
                                 capture_output=True, text=True, check=True).stdout.strip()
            assert url == repo.url
            status = subprocess.run(["git", "--git-dir", f"{root}/.git", "--work-tree", root, "status",
                                     "--porcelain"], capture_output=True, text=True, check=True).stdout
            assert status == ""
            assert not os.path.exists(f"{root}/.git/FETCH_HEAD")
    finally:
        res.ref.release()
    # keep-git-dir is a different result than the plain checkout of the same commit
    assert ".git" not in tree(env, llb.git(repo.url, "main"))


def test_keep_git_dir_with_annotated_tag_and_sha(env: Env, repo: Repo) -> None:
    sha = repo.run("rev-parse", "HEAD")
    for ref in ("v1.0", sha):
        res = env.solve(llb.marshal(llb.git(repo.url, ref, keep_git_dir=True)))
        try:
            with res.ref.mount() as root:
                head = subprocess.run(["git", "--git-dir", f"{root}/.git", "rev-parse", "HEAD"],
                                      capture_output=True, text=True, check=True).stdout.strip()
                assert head == sha
        finally:
            res.ref.release()


def test_commit_sha_ref_on_a_fresh_worker(env: Env, repo: Repo) -> None:
    first = repo.run("rev-parse", "HEAD")
    repo.write("README", "v2\n")
    repo.commit("second")
    # nothing fetched yet: the commit (not the tip of any branch) is fetched by its sha
    assert tree(env, llb.git(repo.url, first))["README"] == b"v1\n"
    assert tree(env, llb.git(repo.url, first, keep_git_dir=True))["README"] == b"v1\n"


def test_checksum(env: Env, repo: Repo) -> None:
    sha = repo.run("rev-parse", "HEAD")
    assert tree(env, llb.git(repo.url, "main", checksum=sha[:12]))["README"] == b"v1\n"
    with pytest.raises(BuildkitpyError, match=f"expected checksum to match {'0' * 40}, got {sha}"):
        env.solve(llb.marshal(llb.git(repo.url, "main", checksum="0" * 40)))


def test_missing_ref_and_repository(env: Env, repo: Repo, server: GitServer) -> None:
    with pytest.raises(BuildkitpyError, match="repository does not contain ref nosuchbranch"):
        env.solve(llb.marshal(llb.git(repo.url, "nosuchbranch")))
    missing = f"git://127.0.0.1:{server.port}/missing.git"
    with pytest.raises(BuildkitpyError, match=f"failed to fetch remote {missing}: git ls-remote failed"):
        env.solve(llb.marshal(llb.git(missing, "main")))


def test_option_like_ref_is_refused(env: Env, repo: Repo) -> None:
    defn = source_definition("git://127.0.0.1/project.git#--upload-pack=touch /tmp/pwned",
                             {"git.fullurl": repo.url})
    with pytest.raises(BuildkitpyError, match="invalid git ref"):
        env.solve(defn)


def test_unsupported_attrs_and_transports_are_refused(env: Env, repo: Repo) -> None:
    with pytest.raises(BuildkitpyError, match="git.bundle is not supported"):
        env.solve(source_definition("git://127.0.0.1/project.git#main", {"git.fullurl": repo.url,
                                                                         "git.bundle": "x"}))
    with pytest.raises(BuildkitpyError, match="ssh remotes need SSH forwarding"):
        env.solve(llb.marshal(llb.git("git@example.com:org/repo.git", "main")))


def test_submodules(env: Env, server: GitServer) -> None:
    lib = server.repo("submodule-lib.git")
    lib.write("lib.txt", "library\n")
    lib.commit("lib")
    app = server.repo("submodule-app.git")
    app.write("app.txt", "app\n")
    app.run("-c", "protocol.allow=always", "submodule", "add", "--quiet", lib.url, "vendor/lib")
    app.commit("with submodule")
    t = tree(env, llb.git(app.url, "main"))
    assert t["vendor/lib/lib.txt"] == b"library\n"
    assert t["app.txt"] == b"app\n"
    t = tree(env, llb.git(app.url, "main", skip_submodules=True))
    assert t["vendor/lib"] == "dir"
    assert "vendor/lib/lib.txt" not in t


def test_mtime_commit(env: Env, repo: Repo) -> None:
    defn = source_definition("git://127.0.0.1/project.git#main",
                             {"git.fullurl": repo.url, "git.mtime": "commit"})
    res = env.solve(defn)
    try:
        with res.ref.mount() as root:
            assert os.stat(os.path.join(root, "README")).st_mtime == 1577836800  # GIT_COMMITTER_DATE
            assert os.lstat(os.path.join(root, "escape")).st_mtime == 1577836800
            assert os.stat(os.path.join(root, "src")).st_mtime == 1577836800
    finally:
        res.ref.release()
