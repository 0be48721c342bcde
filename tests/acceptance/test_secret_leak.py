"""Secret non-leakage: a secret used by a RUN (as a file and as an env var) appears in no exported
layer (local and tar), no cache record or snapshot under the daemon's root, and no progress
message; the mount target never lands in the layer; and the secret is not part of the cache key."""

from __future__ import annotations

import os
import stat
import tarfile
import uuid
from pathlib import Path

import pytest

from buildkitpy import llb
from tests.acceptance.helpers import Runner, base, sh

pytestmark = pytest.mark.root


def files_containing(root: Path, needle: bytes) -> list[Path]:
    hits = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            try:
                if not stat.S_ISREG(os.lstat(p).st_mode):
                    continue
                if needle in p.read_bytes():
                    hits.append(p)
            except OSError:
                continue
    return hits


def test_secret_never_reaches_layers_cache_or_logs(make_daemon, busybox_dir, tmp_path):
    daemon = make_daemon()
    runner = Runner(daemon, busybox_dir)
    token = f"SECRET-{uuid.uuid4().hex}".encode()
    secret = tmp_path / "secret"
    secret.write_bytes(token)
    use = sh(base(), "set -e; sha256sum /run/secrets/api | cut -d' ' -f1 > /hash;"
                     "[ \"$API_TOKEN\" = \"$(cat /run/secrets/api)\" ] && echo env-ok > /env;"
                     "echo progress-line; mkdir -p /run/secrets && ls -la /run/secrets",
             mounts=[llb.secret("api", target="/run/secrets/api", mode=0o444),
                     llb.secret("api", env="API_TOKEN")]).root()
    out = tmp_path / "out"
    r = runner.build(use, out, args=("--secret", f"id=api,src={secret}"))
    assert (out / "env").read_text() == "env-ok\n"
    assert b"progress-line" in r.logs()  # the step's output did reach the progress stream
    assert not (out / "run" / "secrets" / "api").exists()  # the mount target is not in the layer
    assert files_containing(out, token) == []

    tar_path = tmp_path / "out.tar"
    r_tar = runner.build(use, tar_path, output="tar", args=("--secret", f"id=api,src={secret}"))
    with tarfile.open(tar_path) as tf:
        names = tf.getnames()
        assert "hash" in names and "run/secrets/api" not in names
        for member in tf.getmembers():
            if member.isfile():
                assert token not in tf.extractfile(member).read(), member.name
    assert token not in tar_path.read_bytes()

    for result in (r, r_tar):
        assert token not in result.proc.stdout and token not in result.proc.stderr
    assert files_containing(daemon.root / "state", token) == []  # cache.db, snapshots, metadata
    assert token not in daemon.log.read_bytes()
    assert files_containing(Path("/dev/shm"), token) == []  # the secret's private tmpfs file is gone

    # a different secret value gives the same cache key: the secret is not part of it
    other = tmp_path / "secret2"
    other.write_bytes(b"another-value")
    r2 = runner.build(use, tmp_path / "out2", args=("--secret", f"id=api,src={other}"))
    run_vertex = next(v for name, v in r2.vertices().items() if name.startswith("/bin/sh -c set -e"))
    assert run_vertex.get("cached") is True


def test_copying_the_secret_is_the_users_choice(bb, tmp_path):
    """BuildKit semantics: the mount never lands in a layer, but what the command writes does."""
    token = f"COPIED-{uuid.uuid4().hex}".encode()
    secret = tmp_path / "secret"
    secret.write_bytes(token)
    leak = sh(base(), "cat /run/secrets/x > /leak", mounts=[llb.secret("x", target="/run/secrets/x")]).root()
    out = tmp_path / "out"
    bb.build(leak, out, args=("--secret", f"id=x,src={secret}"))
    assert (out / "leak").read_bytes() == token
    assert not (out / "run" / "secrets" / "x").exists()
