"""The attack shapes of CVE-2024-23651 (cache-mount ``source``/selector escaping the cache, e.g. via
``../`` or a symlink planted in the cache by an earlier build) and CVE-2024-23652 (mount-stub
cleanup following a symlink the step put in place of a stub's parent), through the daemon."""

from __future__ import annotations

import os
import uuid

import pytest

from buildkitpy import llb
from tests.acceptance.helpers import base, sh

pytestmark = pytest.mark.root


def _host_etc() -> set[str]:
    return set(os.listdir("/etc"))


def test_cache_source_selector_escapes_stay_in_the_cache(bb, tmp_path):
    """``source=`` with ``..`` or a symlink out of the source: either a clear error (the path is
    not in the source) or the cache's own directory, never the host's."""
    cid = f"cve23651-src-{uuid.uuid4().hex}"
    src = (llb.scratch().file(llb.mkdir("/cache/etc", 0o755, make_parents=True)
                              .symlink("../../../../../../../etc", "/cache/up")
                              .symlink("/etc", "/cache/abs")))
    for selector in ("../../../../../../../etc", "/cache/../../../../etc", "/cache/up", "/cache/abs"):
        mount = llb.Mount("/c", src, selector=selector, cache_id=cid, cache_sharing="shared")
        out = tmp_path / f"out-{uuid.uuid4().hex[:8]}"
        run = sh(base(), f": {selector}; ls -A /c > /listing", mounts=[mount])
        r = bb.build(run.root(), out, check=False)
        if not r.ok:
            assert '"/etc": not found' in r.stderr, r.stderr[-1500:]
            continue
        listing = set((out / "listing").read_text().split())
        assert listing == set(), f"selector {selector} reached outside the cache: {sorted(listing)[:10]}"
    assert "passwd" in _host_etc()  # the host's /etc is what an escape would have shown
    assert bb.daemon.alive()


def test_cache_symlink_planted_by_an_earlier_build_resolves_inside(bb, tmp_path):
    cid = f"cve23651-link-{uuid.uuid4().hex}"
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "host-only-marker").write_text("host")
    plant = sh(base(), f"ln -s / /c/abs; ln -s ../../../../../../../../.. /c/rel; ln -s {victim} /c/victim",
               mounts=[llb.cache("/c", cid)]).root()
    bb.build(plant, None)
    for link in ("abs/etc", "rel", "victim"):
        mount = llb.Mount("/m", llb.scratch(), selector=link, cache_id=cid, cache_sharing="shared")
        out = tmp_path / f"via-{link.replace('/', '-')}"
        bb.build(sh(base(), f": {link}; ls -A /m > /listing", mounts=[mount]).root(), out)
        listing = set((out / "listing").read_text().split())
        assert "host-only-marker" not in listing and "passwd" not in listing and "proc" not in listing, \
            (link, sorted(listing))
    assert (victim / "host-only-marker").exists()


def test_bind_selector_symlink_resolves_inside_the_input(bb, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "host-only-marker").write_text("host")
    src = sh(base(), f"mkdir /data && ln -s / /data/root && ln -s {victim} /data/victim").root()
    for selector in ("/data/root/etc", "/data/victim"):
        run = sh(base(), f": {selector}; ls -A /m > /listing",
                 mounts=[llb.bind("/m", src, selector=selector, readonly=True)])
        out = tmp_path / f"bind{len(selector)}"
        r = bb.build(run.root(), out, check=False)
        if not r.ok:  # a selector that resolves to nothing inside the input is an error, not an escape
            assert "not found" in r.stderr or "does not exist" in r.stderr, r.stderr[-1500:]
            continue
        listing = set((out / "listing").read_text().split())
        assert "host-only-marker" not in listing, selector
        if selector.endswith("etc"):
            assert listing <= {"passwd", "group", "hosts", "resolv.conf"}, (selector, sorted(listing))


def test_mount_stub_cleanup_never_follows_a_swapped_symlink(bb, tmp_path):
    """The step moves the stub's parent away and puts a symlink to a host directory in its place;
    cleanup must not remove the host's identically named empty file or directory."""
    victim = tmp_path / "victim"
    (victim / "b" / "c").mkdir(parents=True)
    (victim / "stubfile").touch()
    secret = tmp_path / "secret"
    secret.write_text("x")
    script = f"set -e; mv /y /y.moved; ln -s {victim} /y; mv /x /x.moved; ln -s {victim} /x"
    run = sh(base(), script, mounts=[llb.secret("s", target="/y/stubfile"), llb.tmpfs("/x/b/c")])
    out = tmp_path / "out"
    bb.build(run.root(), out, args=("--secret", f"id=s,src={secret}"))
    assert (victim / "stubfile").exists(), "stub cleanup deleted a file outside the rootfs"
    assert (victim / "b" / "c").is_dir(), "stub cleanup deleted a directory outside the rootfs"
    assert (out / "y").is_symlink()  # what the step wrote is kept
    assert (out / "x").is_symlink()
    # the moved stub is the step's own file now (BuildKit leaves it as well); it carries no data
    moved = out / "y.moved" / "stubfile"
    assert not moved.exists() or moved.stat().st_size == 0


def test_mount_stubs_do_not_land_in_the_layer(bb, tmp_path):
    run = sh(base(), "true", mounts=[llb.tmpfs("/new/deep/dir"), llb.cache("/var/cache/x", "stubs-check")])
    out = tmp_path / "out"
    bb.build(run.root(), out)
    assert not (out / "new").exists()
    assert not (out / "var").exists()


def test_cache_selector_on_a_file_fails_clearly(bb, tmp_path):
    cid = f"selector-file-{uuid.uuid4().hex}"
    bb.build(sh(base(), "echo data > /c/afile", mounts=[llb.cache("/c", cid)]).root(), None)
    mount = llb.Mount("/m", llb.scratch(), selector="afile", cache_id=cid, cache_sharing="shared")
    r = bb.build(sh(base(), f": {cid}; ls /m", mounts=[mount]).root(), None, check=False)
    assert not r.ok
    assert "cache mount selector afile" in r.stderr and "not a directory" in r.stderr, r.stderr[-1500:]
    assert bb.daemon.alive()
