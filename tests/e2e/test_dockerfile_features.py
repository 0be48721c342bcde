"""Dockerfile features end to end through the daemon and our buildctl-compatible CLI: ``ADD <git ref>``
against a real ``git daemon``, named contexts, and the COPY/ADD/RUN flags checked against BuildKit."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.image.conftest import _need_registry
from tests.image.registryfixture import Registry, TarBuilder, busybox_rootfs, start_registry
from tests.sources.gitfixture import GitServer, Repo


def build(daemon, ctx: Path, out: Path, *extra: str, check: bool = True):  # noqa: ANN001, ANN201
    return daemon.client("build", "--progress", "plain", "--frontend", "dockerfile.v0", "--local",
                         f"context={ctx}", "--local", f"dockerfile={ctx}", "--output",
                         f"type=local,dest={out}", *extra, check=check)


def context(tmp_path: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    for rel, data in (files or {}).items():
        p = ctx / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(data)
    return ctx


# ---- ADD <git ref> ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    s = GitServer(tmp_path_factory.mktemp("served"))
    yield s
    s.close()


@pytest.fixture(scope="module")
def project(git_server: GitServer) -> tuple[Repo, str, str]:
    repo = git_server.repo("project")
    repo.write("README", "first\n")
    repo.write("sub/inner.txt", "inner v1\n")
    first = repo.commit("first")
    repo.run("tag", "v1")
    repo.write("README", "second\n")
    repo.write("sub/inner.txt", "inner v2\n")
    second = repo.commit("second")
    return repo, first, second


def test_add_git_ref_subdir_and_keep_git_dir(daemon, tmp_path: Path, project) -> None:  # noqa: ANN001
    repo, first, _ = project
    ctx = context(tmp_path, "FROM scratch\n"
                  f"ADD {repo.url}#v1:sub /tagged/\n"
                  f"ADD {repo.url} /head/\n"
                  f"ADD --keep-git-dir {repo.url}#main /withgit\n"
                  f"ADD --chmod=600 {repo.url}?ref=v1 /mode/\n")
    out = tmp_path / "out"
    build(daemon, ctx, out)
    assert (out / "tagged" / "inner.txt").read_text() == "inner v1\n"
    assert not (out / "tagged" / "README").exists()
    assert (out / "head" / "README").read_text() == "second\n"
    assert not (out / "head" / ".git").exists()
    assert (out / "withgit" / ".git").is_dir()
    assert (out / "withgit" / "README").read_text() == "second\n"
    assert (out / "mode" / "README").read_text() == "first\n"
    assert (out / "mode" / "README").stat().st_mode & 0o777 == 0o600


def test_add_git_checksum_is_verified(daemon, tmp_path: Path, project) -> None:  # noqa: ANN001
    repo, first, second = project
    ctx = context(tmp_path, f"FROM scratch\nADD --checksum={first} {repo.url}#v1 /pinned/\n")
    out = tmp_path / "out"
    build(daemon, ctx, out)
    assert (out / "pinned" / "README").read_text() == "first\n"

    ctx = context(tmp_path, f"FROM scratch\nADD --checksum={second} {repo.url}#v1 /pinned/\n")
    res = build(daemon, ctx, tmp_path / "out2", check=False)
    err = res.stderr.decode()
    assert res.returncode == 1, err
    assert f"expected checksum to match {second}, got {first}" in err, err
    assert daemon.alive()


def test_copy_from_git_ref_is_refused_with_its_line(daemon, tmp_path: Path, project) -> None:  # noqa: ANN001
    repo, _, _ = project
    ctx = context(tmp_path, f"FROM scratch\nCOPY {repo.url} /x\n")
    res = build(daemon, ctx, tmp_path / "out", check=False)
    err = res.stderr.decode()
    assert res.returncode == 1
    assert "source can't be a git ref for COPY" in err, err
    assert daemon.alive()


# ---- named contexts -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    _need_registry()
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    extra = TarBuilder().add("hello.txt", data=b"from the context image\n").bytes()
    reg.push_image("ctx/base", "v1", [(busybox_rootfs(), "gzip"), (extra, "gzip")])
    yield reg
    reg.stop()


def test_docker_image_named_context_for_from_and_copy_from(daemon, tmp_path: Path,  # noqa: ANN001
                                                           registry: Registry) -> None:
    image = f"docker-image://{registry.host}/ctx/base:v1"
    ctx = context(tmp_path, "FROM alpine:3 AS replaced\nRUN exit 1\n"
                  "FROM base\n"
                  "RUN cat /hello.txt > /ran.txt && echo \"$PATH\" > /path.txt\n"
                  "COPY --from=other /hello.txt /copied.txt\n"
                  "COPY --from=replaced /hello.txt /from-stage.txt\n")
    out = tmp_path / "out"
    res = build(daemon, ctx, out, "--opt", f"context:base={image}", "--opt", f"context:other={image}",
                "--opt", f"context:replaced={image}")
    assert (out / "ran.txt").read_text() == "from the context image\n"
    assert (out / "path.txt").read_text() == "/bin\n"  # the env of the context image's config
    assert (out / "copied.txt").read_text() == "from the context image\n"
    assert (out / "from-stage.txt").read_text() == "from the context image\n"
    err = res.stderr.decode()
    # one op for the three contexts (same image, same digest); its name is one of theirs
    assert re.search(rf"\[context (base|other|replaced)\] {re.escape(registry.host)}/ctx/base:v1", err), err


def test_named_context_errors_are_clear(daemon, tmp_path: Path, registry: Registry) -> None:  # noqa: ANN001
    ctx = context(tmp_path, "FROM base\n")
    res = build(daemon, ctx, tmp_path / "o1", "--opt", f"context:base=docker-image://{registry.host}/ctx/none:v1",
                check=False)
    assert res.returncode == 1 and "context base" in res.stderr.decode(), res.stderr.decode()
    res = build(daemon, ctx, tmp_path / "o2", "--opt", "context:base=oci-layout://store@sha256:" + "3" * 64,
                check=False)
    assert res.returncode == 1
    assert "oci-layout named contexts are not supported yet" in res.stderr.decode(), res.stderr.decode()
    res = build(daemon, ctx, tmp_path / "o3", "--opt", "context:base=input:nothing", check=False)
    assert "invalid input nothing for base" in res.stderr.decode(), res.stderr.decode()
    assert daemon.alive()


# ---- COPY/ADD/RUN flags -----------------------------------------------------------------------------------
def test_copy_parents_link_and_exclude(daemon, tmp_path: Path, registry: Registry) -> None:  # noqa: ANN001
    files = {"a/b/c.txt": "c\n", "x/1.txt": "1\n", "x/2.txt": "2\n", "d/e": "e\n",
             "tree/keep.txt": "keep\n", "tree/drop.tmp": "drop\n", "tree/sub/also.tmp": "drop\n"}
    ctx = context(tmp_path, f"FROM {registry.host}/ctx/base:v1\n"
                  "WORKDIR /w\n"
                  "COPY --parents a/./b/c.txt x/*.txt d/e /parents/\n"
                  "COPY --link tree/keep.txt /linked/\n"
                  "ADD --link --chown=7:8 d/e /linked-add/\n"
                  "COPY --exclude=*.tmp --exclude=sub tree /excluded/\n"
                  "RUN cat /hello.txt /linked/keep.txt > proof && stat -c %u:%g /linked-add/e >> proof\n",
                  files)
    out = tmp_path / "out"
    res = build(daemon, ctx, out)
    # resolving FROM's config is a vertex of its own, named as BuildKit's frontend names it
    assert f"[internal] load metadata for {registry.host}/ctx/base:v1\n" in res.stderr.decode()
    parents = out / "parents"
    copied = sorted(str(p.relative_to(parents)) for p in parents.rglob("*") if p.is_file())
    assert copied == ["b/c.txt", "d/e", "x/1.txt", "x/2.txt"]
    assert (out / "linked" / "keep.txt").read_text() == "keep\n"
    assert (out / "bin" / "busybox").exists()  # the linked layers were merged onto the base image
    assert sorted(p.name for p in (out / "excluded").iterdir()) == ["keep.txt"]
    assert (out / "w" / "proof").read_text() == "from the context image\nkeep\n7:8\n"


def test_copy_parents_missing_required_path_fails(daemon, tmp_path: Path) -> None:  # noqa: ANN001
    df = "FROM scratch\nCOPY --parents a/./other.txt a/./missing.txt /p/\n"
    ctx = context(tmp_path, df, {"a/other.txt": "x"})
    res = build(daemon, ctx, tmp_path / "out", check=False)
    err = res.stderr.decode()
    assert res.returncode == 1 and 'required path "/a/missing.txt" not found' in err, err
    assert daemon.alive()


def test_run_network_modes(daemon, make_daemon, tmp_path: Path, registry: Registry) -> None:  # noqa: ANN001
    df = (f"FROM {registry.host}/ctx/base:v1\n"
          "RUN --network=none ls /sys/class/net > /none.txt\n"
          "RUN --network=host ls /sys/class/net > /host.txt\n")
    ctx = context(tmp_path, df)
    res = build(daemon, ctx, tmp_path / "refused", check=False)
    assert res.returncode == 1 and "network.host" in res.stderr.decode(), res.stderr.decode()

    allowed = make_daemon("--allow-insecure-entitlement", "network.host")
    out = tmp_path / "out"
    build(allowed, ctx, out, "--allow", "network.host")
    assert (out / "none.txt").read_text().split() == ["lo"]
    host_ifaces = sorted(p.name for p in Path("/sys/class/net").iterdir())
    assert (out / "host.txt").read_text().split() == host_ifaces


def test_run_security_insecure_needs_the_entitlement(daemon, make_daemon, tmp_path: Path,  # noqa: ANN001
                                                     registry: Registry) -> None:
    df = (f"FROM {registry.host}/ctx/base:v1\n"
          "RUN grep CapEff /proc/self/status > /sandbox.txt\n"
          "RUN --security=insecure grep CapEff /proc/self/status > /insecure.txt\n")
    ctx = context(tmp_path, df)
    res = build(daemon, ctx, tmp_path / "refused", check=False)
    assert res.returncode == 1 and "security.insecure" in res.stderr.decode(), res.stderr.decode()

    allowed = make_daemon("--allow-insecure-entitlement", "security.insecure")
    out = tmp_path / "out"
    build(allowed, ctx, out, "--allow", "security.insecure")
    sandbox = int((out / "sandbox.txt").read_text().split()[1], 16)
    insecure = int((out / "insecure.txt").read_text().split()[1], 16)
    assert insecure & ~sandbox, (hex(sandbox), hex(insecure))  # e.g. CAP_SYS_ADMIN only when insecure
    assert insecure & (1 << 21)  # CAP_SYS_ADMIN
