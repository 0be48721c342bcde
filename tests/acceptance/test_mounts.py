"""Every exec mount type through the daemon: bind (selector, readonly, output or not), cache (id,
sharing modes, persistence, mode/uid/gid from a source), tmpfs (size) and secrets (file and env
forms, optional and required) served by the CLI's ``--secret``."""

from __future__ import annotations

import os
import uuid

import pytest

from buildkitpy import llb
from tests.acceptance.helpers import base, sh

pytestmark = pytest.mark.root


def data_dir() -> llb.State:
    return (llb.scratch()
            .file(llb.mkdir("/sub", 0o755))
            .file(llb.mkfile("/sub/inner.txt", 0o644, b"inner\n"))
            .file(llb.mkfile("/top.txt", 0o644, b"top\n")))


def test_bind_selector_readonly_and_outputs(bb, tmp_path):
    src = data_dir()
    run = sh(base(), "set -e; ls /sel > /sel.ls; cat /sel/inner.txt > /sel.cat;"
                     "if touch /ro/x 2>/dev/null; then echo rw; else echo ro; fi > /ro.result;"
                     "echo written > /rw/new.txt; echo discarded > /noout/new.txt;"
                     "cat /noout/top.txt > /noout.cat",
             mounts=[llb.bind("/sel", src, selector="/sub", readonly=True),
                     llb.bind("/ro", src, readonly=True),
                     llb.bind("/rw", src),
                     llb.bind("/noout", src, output=False)])
    out = tmp_path / "root"
    bb.build(run.root(), out)
    assert (out / "sel.ls").read_text() == "inner.txt\n"
    assert (out / "sel.cat").read_text() == "inner\n"
    assert (out / "ro.result").read_text() == "ro\n"
    assert (out / "noout.cat").read_text() == "top\n"
    for stub in ("sel", "ro", "rw", "noout"):  # mount stubs never land in the root layer
        assert not (out / stub).exists(), stub

    rw_out = tmp_path / "rw"
    bb.build(run.get_mount("/rw"), rw_out)
    assert (rw_out / "new.txt").read_text() == "written\n"
    assert (rw_out / "top.txt").read_text() == "top\n"

    # the writable mount without output leaves its source untouched for later readers
    after = sh(base(), "ls /m > /listing", mounts=[llb.bind("/m", src, readonly=True)]).root()
    bb.build(after, tmp_path / "after")
    assert (tmp_path / "after" / "listing").read_text() == "sub\ntop.txt\n"

    with pytest.raises(llb.LLBError, match="no-output"):
        run.get_mount("/noout").marshal()


def test_bind_missing_selector_fails_clearly(bb, tmp_path):
    run = sh(base(), "true", mounts=[llb.bind("/m", data_dir(), selector="/nope", readonly=True)])
    r = bb.build(run.root(), None, check=False)
    assert not r.ok
    assert '"/nope": not found' in r.stderr, r.stderr[-1500:]
    assert bb.daemon.alive()


def test_cache_mount_persists_across_builds(bb, tmp_path):
    cid = f"persist-{uuid.uuid4().hex}"
    token = uuid.uuid4().hex
    bb.build(sh(base(), f"echo {token} > /cache/token", mounts=[llb.cache("/cache", cid)]).root(), None)
    out = tmp_path / "out"
    reader = sh(base(), "cat /c/token > /seen; ls -A /c > /c.ls", mounts=[llb.cache("/c", cid)]).root()
    bb.build(reader, out)
    assert (out / "seen").read_text() == f"{token}\n"
    assert not (out / "c").exists()  # the cache dir is never part of the layer
    other = sh(base(), "ls -A /c > /c.ls", mounts=[llb.cache("/c", cid + "-other")]).root()
    bb.build(other, tmp_path / "other")
    assert (tmp_path / "other" / "c.ls").read_text() == ""  # ids are separate caches


def test_cache_mount_mode_uid_gid_from_source(bb, tmp_path):
    """Dockerfile's ``--mount=type=cache,uid=..,gid=..,mode=..`` shape: the cache starts from a
    scratch ``mkdir`` carrying the owner and mode, mounted with a selector."""
    cid = f"perm-{uuid.uuid4().hex}"
    perms = llb.scratch().file(llb.mkdir("/cache", 0o710, chown=(1000, 1000)))
    mount = llb.Mount("/c", perms, selector="/cache", cache_id=cid, cache_sharing="shared")
    run = sh(base(), "stat -c '%a %u %g' /c > /tmp/stat; echo x > /c/f", user="1000:1000", mounts=[mount])
    out = tmp_path / "out"
    bb.build(run.root(), out)
    assert (out / "tmp" / "stat").read_text() == "710 1000 1000\n"
    again = sh(base(), "cat /c/f > /seen", mounts=[mount]).root()
    bb.build(again, tmp_path / "again")
    assert (tmp_path / "again" / "seen").read_text() == "x\n"


def _parallel_pair(script_a: str, script_b: str, mount_a, mount_b) -> llb.State:
    # the cache id is not part of an exec's cache key (as in BuildKit): name it in the scripts so
    # each sub-test really runs
    tag = f": {mount_a.cache_id};"
    a = sh(base(), tag + script_a, mounts=[mount_a]).root()
    b = sh(base(), tag + script_b, mounts=[mount_b]).root()
    return llb.merge([a, b])


WAIT_FOR = ("i=0; while [ ! -e /c/{other} ] && [ $i -lt 30 ]; do sleep 0.05; i=$((i+1)); done;"
            "if [ -e /c/{other} ]; then echo saw; else echo alone; fi > /{me}.result")


def test_cache_mount_sharing_shared_private_locked(bb, tmp_path):
    # shared: two concurrent users see each other's writes
    cid = f"shared-{uuid.uuid4().hex}"
    st = _parallel_pair("touch /c/a; " + WAIT_FOR.format(other="b", me="a"),
                        "touch /c/b; " + WAIT_FOR.format(other="a", me="b"),
                        llb.cache("/c", cid, sharing="shared"), llb.cache("/c", cid, sharing="shared"))
    bb.build(st, tmp_path / "shared")
    assert (tmp_path / "shared" / "a.result").read_text() == "saw\n"
    assert (tmp_path / "shared" / "b.result").read_text() == "saw\n"

    # private: concurrent users get separate directories
    cid = f"private-{uuid.uuid4().hex}"
    st = _parallel_pair("touch /c/a; " + WAIT_FOR.format(other="b", me="a"),
                        "touch /c/b; " + WAIT_FOR.format(other="a", me="b"),
                        llb.cache("/c", cid, sharing="private"), llb.cache("/c", cid, sharing="private"))
    bb.build(st, tmp_path / "private")
    assert (tmp_path / "private" / "a.result").read_text() == "alone\n"
    assert (tmp_path / "private" / "b.result").read_text() == "alone\n"

    # locked: one user at a time (mkdir as a mutual-exclusion probe never finds the other inside)
    cid = f"locked-{uuid.uuid4().hex}"
    probe = ("mkdir /c/inside && echo {me} >> /c/order && sleep 0.5 && rmdir /c/inside"
             " && echo ok > /{me}.result")
    st = _parallel_pair(probe.format(me="a"), probe.format(me="b"),
                        llb.cache("/c", cid, sharing="locked"), llb.cache("/c", cid, sharing="locked"))
    bb.build(st, tmp_path / "locked")
    assert (tmp_path / "locked" / "a.result").read_text() == "ok\n"
    assert (tmp_path / "locked" / "b.result").read_text() == "ok\n"


def test_tmpfs_mount_with_size(bb, tmp_path):
    run = sh(base(), "grep ' /t ' /proc/mounts > /t.mount; echo scratchdata > /t/file; ls /t > /t.ls",
             mounts=[llb.tmpfs("/t", size=4 * 1024 * 1024)])
    out = tmp_path / "out"
    bb.build(run.root(), out)
    line = (out / "t.mount").read_text()
    assert line.split()[2] == "tmpfs" and "size=4096k" in line, line
    assert (out / "t.ls").read_text() == "file\n"
    assert not (out / "t").exists()
    # a write past the size limit fails
    full = sh(base(), "dd if=/dev/zero of=/t/big bs=1024 count=2048",
              mounts=[llb.tmpfs("/t", size=1024 * 1024)])
    r = bb.build(full.root(), None, check=False)
    assert not r.ok and "did not complete successfully" in r.stderr


@pytest.fixture
def secret_file(tmp_path):
    p = tmp_path / "secret.txt"
    p.write_bytes(b"s3cr3t-value")
    return p


def test_secret_file_mount_mode_uid_gid(bb, tmp_path, secret_file):
    run = sh(base(), "stat -c '%a %u %g' /run/secrets/tok > /tmp/stat; "
                     "[ \"$(cat /run/secrets/tok)\" = s3cr3t-value ] && echo match > /tmp/match; "
                     "stat -c '%a %u %g' /etc/custom-secret > /tmp/stat2",
             user="1000:1000",
             mounts=[llb.secret("tok", target="/run/secrets/tok", mode=0o440, uid=1000, gid=1000),
                     llb.secret("tok", target="/etc/custom-secret")])
    out = tmp_path / "out"
    bb.build(run.root(), out, args=("--secret", f"id=tok,src={secret_file}"))
    assert (out / "tmp" / "stat").read_text() == "440 1000 1000\n"
    assert (out / "tmp" / "match").read_text() == "match\n"
    assert (out / "tmp" / "stat2").read_text() == "400 0 0\n"
    assert not (out / "run" / "secrets" / "tok").exists()
    assert not (out / "etc" / "custom-secret").exists()


def test_secret_env_form(bb, tmp_path, secret_file):
    run = sh(base(), "[ \"$TOKEN\" = s3cr3t-value ] && echo match > /match; env | grep -c TOKEN= > /count",
             mounts=[llb.secret("tok", env="TOKEN")])
    out = tmp_path / "out"
    bb.build(run.root(), out, args=("--secret", f"id=tok,src={secret_file}"))
    assert (out / "match").read_text() == "match\n"


def test_secret_optional_and_required(bb, tmp_path, secret_file):
    optional = sh(base(), "if [ -e /run/secrets/missing ]; then echo yes; else echo no; fi > /present;"
                          "echo \"[$OPT]\" > /env",
                  mounts=[llb.secret("missing", target="/run/secrets/missing", optional=True),
                          llb.secret("missing", env="OPT", optional=True)])
    out = tmp_path / "out"
    bb.build(optional.root(), out, args=("--secret", f"id=tok,src={secret_file}"))
    assert (out / "present").read_text() == "no\n"
    assert (out / "env").read_text() == "[]\n"

    # required: the file form with no secrets at all, the env form with other secrets only
    for mount, args in ((llb.secret("missing", target="/run/secrets/missing"), ()),
                        (llb.secret("missing", env="X"), ("--secret", f"id=tok,src={secret_file}"))):
        required = sh(base(), "echo should-not-run", mounts=[mount])
        r = bb.build(required.root(), None, args=args, check=False)
        assert not r.ok
        assert "secret missing: not found" in r.stderr, r.stderr[-2000:]
    assert bb.daemon.alive()


def test_secret_file_from_env_var_source(bb, tmp_path):
    run = sh(base(), "cat /run/secrets/e > /copied", mounts=[llb.secret("e", target="/run/secrets/e")])
    out = tmp_path / "out"
    env = {**os.environ, "MY_SECRET_VAR": "from-env"}
    cmd = ["--secret", "id=e,env=MY_SECRET_VAR"]
    import subprocess

    from tests.conftest import BIN
    data = run.root().marshal().SerializeToString()
    subprocess.run([str(BIN / "buildkitpy"), "--addr", bb.daemon.unix_addr, "build", "--local",
                    f"rootfs={bb.rootfs}", "--output", f"type=local,dest={out}", *cmd],
                   input=data, env=env, check=True, capture_output=True, timeout=60)
    assert (out / "copied").read_text() == "from-env"  # the user chose to copy it: that is theirs to leak
