"""The in-process dockerfile.v0 frontend through the daemon and our CLI (buildctl's invocation)."""

from __future__ import annotations


def test_from_scratch_dockerfile_builds(daemon, tmp_path):
    ctx = tmp_path / "ctx"
    (ctx / "sub").mkdir(parents=True)
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY a.txt /a.txt\nENV X=1\nCOPY sub/ /dst/\n")
    (ctx / "a.txt").write_text("hello\n")
    (ctx / "sub" / "s.txt").write_text("s\n")
    (ctx / ".dockerignore").write_text("sub/ignored*\n")
    (ctx / "sub" / "ignored.txt").write_text("no\n")
    out = tmp_path / "out"
    res = daemon.client("build", "--progress", "plain", "--frontend", "dockerfile.v0", "--local",
                        f"context={ctx}", "--local", f"dockerfile={ctx}", "--output",
                        f"type=local,dest={out}")
    assert "[1/2] COPY a.txt /a.txt" in res.stderr.decode()
    assert (out / "a.txt").read_text() == "hello\n"
    assert (out / "dst" / "s.txt").read_text() == "s\n"
    assert not (out / "dst" / "ignored.txt").exists()


def test_dockerfile_errors_name_the_line(daemon, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY missing.txt /x\n")
    res = daemon.client("build", "--progress", "plain", "--frontend", "dockerfile.v0", "--local",
                        f"context={ctx}", "--local", f"dockerfile={ctx}", check=False)
    err = res.stderr.decode()
    assert res.returncode == 1, err
    assert "missing.txt" in err
    assert "Dockerfile:2" in err, err

    (ctx / "Dockerfile").write_text("FROM scratch\nFROBNICATE x\n")
    res = daemon.client("build", "--frontend", "dockerfile.v0", "--local", f"context={ctx}",
                        "--local", f"dockerfile={ctx}", check=False)
    err = res.stderr.decode()
    assert res.returncode == 1
    assert "unknown instruction: FROBNICATE" in err, err
    assert daemon.alive()


def test_syntax_directive(daemon, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("# syntax=docker/dockerfile:1.7\nFROM scratch\nCOPY Dockerfile /\n")
    out = tmp_path / "out"
    res = daemon.client("build", "--progress", "plain", "--frontend", "dockerfile.v0", "--local",
                        f"context={ctx}", "--local", f"dockerfile={ctx}",
                        "--output", f"type=local,dest={out}")
    assert (out / "Dockerfile").exists()
    # no registry to pull from here: the fallback says so
    assert "could not be pulled" in res.stderr.decode()
    assert "built-in Dockerfile frontend" in res.stderr.decode()

    (ctx / "Dockerfile").write_text("# syntax=example.com/my/frontend:2\nFROM scratch\n")
    res = daemon.client("build", "--frontend", "dockerfile.v0", "--local", f"context={ctx}",
                        "--local", f"dockerfile={ctx}", check=False)
    err = res.stderr.decode()
    assert res.returncode == 1
    assert "failed to resolve frontend image example.com/my/frontend:2" in err, err
