"""Frontend images on a real daemon: ``gateway.v0``/``# syntax=`` pull them from a real registry and
run them in runc with LLBBridge over their stdio (our Dockerfile frontend image, and a tiny test
frontend for the rest of the API and the failure modes)."""

from __future__ import annotations

import json
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from image.registryfixture import busybox_rootfs

from tests.conftest import BIN, needs_root

pytestmark = [needs_root]


def _build(daemon, ctx: Path, *opts: str, out: Path | None = None, frontend: str = "gateway.v0",
           check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
    args = ["build", "--progress", "plain", "--frontend", frontend, "--local", f"context={ctx}",
            "--local", f"dockerfile={ctx}"]
    for opt in opts:
        args += ["--opt", opt]
    if out is not None:
        args += ["--output", f"type=local,dest={out}"]
    return daemon.client(*args, check=check, timeout=timeout)


def _runc_containers(daemon) -> list[str]:
    state = daemon.root / "state" / "executor" / "runc-state"
    res = subprocess.run(["runc", "--root", str(state), "list", "-q"], capture_output=True, text=True)
    return res.stdout.split()


def _context(tmp_path: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    for name, data in (files or {}).items():
        (ctx / name).write_text(data)
    return ctx


def test_our_dockerfile_frontend_image_through_gateway_v0(gw_daemon, images, tmp_path):
    ctx = _context(tmp_path, f"FROM {images.busybox}\nRUN echo ran > /ran\nCOPY a.txt /a.txt\n",
                   {"a.txt": "from the context\n"})
    out = tmp_path / "out"
    res = _build(gw_daemon, ctx, f"source={images.frontend}", out=out)
    assert (out / "ran").read_text() == "ran\n"
    assert (out / "a.txt").read_text() == "from the context\n"
    assert f"docker-image://{images.frontend.rsplit(':', 1)[0]}@sha256:" in res.stderr.decode()
    assert _runc_containers(gw_daemon) == []


def test_syntax_directive_and_buildkit_syntax_run_the_image(gw_daemon, images, tmp_path):
    ctx = _context(tmp_path, f"# syntax={images.frontend}\nFROM {images.busybox}\nCOPY a.txt /b.txt\n",
                   {"a.txt": "syntax\n"})
    out = tmp_path / "out"
    res = _build(gw_daemon, ctx, out=out, frontend="dockerfile.v0")
    assert (out / "b.txt").read_text() == "syntax\n"
    assert f"docker-image://{images.frontend.rsplit(':', 1)[0]}@sha256:" in res.stderr.decode()
    # the image's Dockerfile errors keep their source location across the bridge
    _context(tmp_path, f"FROM {images.busybox}\nRUN exit 5\n")
    res = _build(gw_daemon, ctx, f"build-arg:BUILDKIT_SYNTAX={images.frontend}", frontend="dockerfile.v0",
                 check=False)
    err = res.stderr.decode()
    assert res.returncode == 1
    assert "exit code: 5" in err and "Dockerfile:2" in err, err
    assert f"docker-image://{images.frontend.rsplit(':', 1)[0]}@sha256:" in err


def test_an_sbom_made_inside_a_frontend_image(gw_daemon, images, tmp_path):
    """Our Dockerfile frontend image scans the result through the LLBBridge and returns the scan as
    a bundle attestation in ``Return``; the daemon exports it as the daemon-side frontend's would."""
    from attest.test_sbom import SCAN_SCRIPT, script_layer

    reg = images.registry
    reg.push_image("test/scanner", "1", [(busybox_rootfs(), "gzip"), (script_layer(SCAN_SCRIPT), "gzip")],
                   config={"Env": ["PATH=/bin"], "Entrypoint": ["/bin/sh", "/scan.sh"]})
    ctx = _context(tmp_path, f"FROM {images.busybox}\nCOPY a.txt /a.txt\n", {"a.txt": "scanned\n"})
    dest = tmp_path / "image.tar"
    gw_daemon.client("build", "--progress", "plain", "--frontend", "gateway.v0", "--local", f"context={ctx}",
                     "--local", f"dockerfile={ctx}", "--opt", f"source={images.frontend}",
                     "--opt", f"attest:sbom=generator={reg.host}/test/scanner:1",
                     "--output", f"type=oci,dest={dest}", timeout=180)
    with tarfile.open(dest) as t:
        blobs = {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}
    blob = lambda d: json.loads(blobs["blobs/sha256/" + d[7:]])  # noqa: E731
    index = blob(json.loads(blobs["index.json"])["manifests"][0]["digest"])
    image, entry = index["manifests"]
    assert entry["annotations"]["vnd.docker.reference.digest"] == image["digest"]
    [layer] = blob(entry["digest"])["layers"]
    statement = blob(layer["digest"])
    assert statement["predicateType"] == "https://spdx.dev/Document"
    files = {f["fileName"]: f for f in statement["predicate"]["files"]}
    assert files["/a.txt"]["comment"] == f"layerID: {blob(image['digest'])['layers'][-1]['digest']}"
    assert _runc_containers(gw_daemon) == []


def test_the_bridge_api_from_inside_a_frontend_image(gw_daemon, images, tmp_path):
    ctx = _context(tmp_path, "FROM scratch\nCOPY a.txt /from-dockerfile\n", {"a.txt": "nested\n"})
    out = tmp_path / "out"
    res = _build(gw_daemon, ctx, f"source={images.test_frontend}", "mode=bridge", f"image={images.busybox}",
                 out=out)
    seen = json.loads((out / "seen.json").read_text())
    assert seen["nested_file"] == "nested\n"
    assert seen["readdir"] == ["from-dockerfile"] and seen["stat_size"] == len("nested\n")
    assert seen["image_os"] == "linux" and seen["image_digest"].startswith("sha256:")
    assert seen["source_meta_digest"] == seen["image_digest"]
    assert seen["env_session"] and seen["product"] == "buildkit" and seen["workers"] == 1
    assert seen["metadata_file"]
    assert seen["opts"]["source"] == images.test_frontend
    assert "warning from the test frontend" in res.stderr.decode()


def test_containers_from_inside_a_frontend_image(gw_daemon, images, tmp_path):
    ctx = _context(tmp_path, "FROM scratch\n")
    out = tmp_path / "out"
    _build(gw_daemon, ctx, f"source={images.test_frontend}", "mode=exec", f"image={images.busybox}", out=out)
    assert (out / "code").read_text() == "3"
    assert (out / "stdout").read_text() == "HELLO\n"
    assert (out / "stderr").read_text() == "to-stderr\n"
    # a second process sees the first one's writes to the container's root
    assert (out / "second").read_text() == "kept\n" and (out / "second_code").read_text() == "0"
    assert (out / "unknown_code").read_text() == "255"
    assert "container nope not found" in (out / "unknown_err").read_text()
    assert _runc_containers(gw_daemon) == []


def test_containers_left_behind_are_released(gw_daemon, images, tmp_path):
    ctx = _context(tmp_path, "FROM scratch\n")
    out = tmp_path / "out"
    _build(gw_daemon, ctx, f"source={images.test_frontend}", "mode=leak", f"image={images.busybox}", out=out)
    assert (out / "leak").read_text() == "returned\n"
    assert _runc_containers(gw_daemon) == []


@pytest.mark.parametrize(("mode", "expected"), [
    ("crash", "exited with code 7 without returning a result"),
    ("garbage", "wrote data that is not the gateway's gRPC protocol"),
    ("error", "the test frontend was asked to fail"),
])
def test_failing_frontends_fail_the_build_cleanly(gw_daemon, images, tmp_path, mode, expected):
    ctx = _context(tmp_path, "FROM scratch\n")
    started = time.monotonic()
    res = _build(gw_daemon, ctx, f"source={images.test_frontend}", f"mode={mode}", check=False)
    err = res.stderr.decode()
    assert res.returncode == 1
    assert expected in err, err
    if mode == "crash":
        assert "crashing on purpose" in err  # its stderr, in the error
    assert "Traceback" not in err
    assert time.monotonic() - started < 60
    assert _runc_containers(gw_daemon) == []
    assert gw_daemon.alive()


def test_a_hanging_frontend_dies_with_its_build(gw_daemon, images, tmp_path):
    ctx = _context(tmp_path, "FROM scratch\n")
    cmd = [str(BIN / "buildkitpy"), "--addr", gw_daemon.unix_addr, "build", "--frontend", "gateway.v0",
           "--local", f"context={ctx}", "--local", f"dockerfile={ctx}",
           "--opt", f"source={images.test_frontend}", "--opt", "mode=hang"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not _runc_containers(gw_daemon) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _runc_containers(gw_daemon), "the frontend container never started"
    proc.terminate()  # the client goes away: the build is cancelled
    proc.wait(30)
    deadline = time.monotonic() + 30
    while _runc_containers(gw_daemon) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _runc_containers(gw_daemon) == []
    assert gw_daemon.alive()


def test_frontend_caps_are_checked(gw_daemon, images, tmp_path):
    ctx = _context(tmp_path, "FROM scratch\n")
    res = _build(gw_daemon, ctx, f"source={images.test_frontend}", "mode=error",
                 "frontend.caps=moby.buildkit.frontend.subrequests,moby.buildkit.frontend.unknowncap",
                 check=False)
    assert res.returncode == 1
    assert "unsupported frontend capability moby.buildkit.frontend.unknowncap" in res.stderr.decode()


def test_docker_dockerfile_falls_back_only_when_the_pull_fails(gw_daemon, images, tmp_path):
    ctx = _context(tmp_path, "# syntax=docker/dockerfile:1\nFROM scratch\nCOPY a.txt /a.txt\n",
                   {"a.txt": "a\n"})
    out = tmp_path / "out"
    res = _build(gw_daemon, ctx, out=out, frontend="dockerfile.v0")
    err = res.stderr.decode()
    assert (out / "a.txt").read_text() == "a\n"
    assert "docker-image://docker.io/docker/dockerfile@sha256:" in err, err  # the image ran
    assert "could not be pulled" not in err
    # a tag the registry does not have: built here, and the build says so
    _context(tmp_path, "# syntax=docker/dockerfile:0.0-missing\nFROM scratch\nCOPY a.txt /b.txt\n")
    res = _build(gw_daemon, ctx, out=tmp_path / "out2", frontend="dockerfile.v0")
    err = res.stderr.decode()
    assert (tmp_path / "out2" / "b.txt").read_text() == "a\n"
    assert "docker-image://docker.io/docker/dockerfile" not in err
    assert "syntax docker/dockerfile:0.0-missing: the frontend image could not be pulled" in err, err
    assert "building with buildkitpy's built-in Dockerfile frontend" in err


def test_a_named_context_replaces_the_frontend_image(gw_daemon, images, tmp_path):
    ctx = _context(tmp_path, "FROM scratch\nCOPY a.txt /c.txt\n", {"a.txt": "c\n"})
    out = tmp_path / "out"
    # the source names an image no registry has; the build context for that name supplies it
    _build(gw_daemon, ctx, "source=registry.invalid/some/frontend:1",
           f"context:registry.invalid/some/frontend:1=docker-image://{images.frontend}", out=out)
    assert (out / "c.txt").read_text() == "c\n"


def test_build_checks_through_our_frontend_image(gw_daemon, images, tmp_path):
    """Our frontend running in its image (LLBBridge over stdio): lint warnings of a build reach the
    client, and ``requestid=frontend.lint`` answers without building."""
    ctx = _context(tmp_path, f"FROM {images.busybox} as Base\nENV a b\nRUN echo ok\n")
    res = _build(gw_daemon, ctx, f"source={images.frontend}")
    err = res.stderr.decode()
    assert "WARN: FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 1)" in err
    assert "WARN: LegacyKeyValueFormat: \"ENV key=value\" should be used instead of legacy " \
           "\"ENV key value\" format (line 2)" in err
    res = _build(gw_daemon, ctx, f"source={images.frontend}", "requestid=frontend.lint")
    out = res.stdout.decode()
    assert "WARNING: StageNameCasing - https://docs.docker.com/go/dockerfile/rule/stage-name-casing/" in out
    assert " 2 | >>> ENV a b" in out
    assert "echo ok" not in res.stderr.decode().replace("RUN echo ok\n", "")  # nothing ran
