"""``docker build`` (classic builder) with the real docker CLI, and the image commands around it."""

from __future__ import annotations

import io
import json
import tarfile
import urllib.parse

import pytest


def _write(ctx, files: dict[str, str]) -> None:
    ctx.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = ctx / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


DOCKERFILE = """FROM busybox
ENV GREETING=hello
COPY a.txt /a.txt
RUN echo "built: $GREETING" && cat /a.txt > /b.txt
CMD ["cat", "/b.txt"]
"""


def test_classic_build_output_cache_and_images(engine, tmp_path):
    ctx = tmp_path / "ctx"
    _write(ctx, {"Dockerfile": DOCKERFILE, "a.txt": "one\n", ".dockerignore": "ignored\n", "ignored": "x"})
    first = engine.docker("build", "-t", "classic-a", str(ctx)).stdout.decode()
    lines = first.splitlines()
    assert [ln for ln in lines if ln.startswith("Step ")] == [
        "Step 1/5 : FROM busybox", "Step 2/5 : ENV GREETING=hello", "Step 3/5 : COPY a.txt /a.txt",
        'Step 4/5 : RUN echo "built: $GREETING" && cat /a.txt > /b.txt', 'Step 5/5 : CMD ["cat", "/b.txt"]']
    assert any(ln.startswith(" ---> Running in ") for ln in lines)
    assert "built: hello" in lines
    assert "Using cache" not in first
    assert lines[-2].startswith("Successfully built ") and lines[-1] == "Successfully tagged classic-a:latest"
    image_id = lines[-2].split()[-1]

    second = engine.docker("build", "-t", "classic-a", str(ctx)).stdout.decode()
    assert second.count(" ---> Using cache") == 4
    assert second.splitlines()[-2] == f"Successfully built {image_id}"

    (ctx / "a.txt").write_text("two\n")
    third = engine.docker("build", "-t", "classic-b", str(ctx)).stdout.decode()
    assert third.count(" ---> Using cache") == 1  # ENV only: the COPY source changed

    listing = engine.docker("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}").stdout.decode()
    assert f"classic-a:latest {image_id}" in listing
    inspect = json.loads(engine.docker("image", "inspect", "classic-a").stdout)[0]
    assert inspect["Id"].startswith("sha256:" + image_id)
    assert inspect["Config"]["Cmd"] == ["cat", "/b.txt"]
    assert "GREETING=hello" in inspect["Config"]["Env"]
    assert inspect["Parent"], "classic images have the previous step as parent"
    history = engine.docker("history", "--no-trunc", "--format", "{{.CreatedBy}}",
                            "classic-a").stdout.decode()
    assert 'CMD ["cat" "/b.txt"]' in history.splitlines()
    assert "COPY a.txt /a.txt" in history

    engine.docker("tag", "classic-a", "example.com/team/app:v1")
    assert "example.com/team/app:v1" in engine.docker("images", "--format",
                                                      "{{.Repository}}:{{.Tag}}").stdout.decode()
    out = engine.docker("rmi", "example.com/team/app:v1").stdout.decode()
    assert out.strip() == "Untagged: example.com/team/app:v1"
    engine.docker("image", "inspect", "classic-a")  # still there under its other name


def test_built_image_is_a_base_and_save_load_roundtrip(engine, tmp_path):
    base_ctx, child_ctx = tmp_path / "base", tmp_path / "child"
    _write(base_ctx, {"Dockerfile": "FROM busybox\nRUN echo base > /base.txt\n"})
    _write(child_ctx, {"Dockerfile": "FROM saved-base\nRUN cat /base.txt > /child.txt\n"})
    engine.docker("build", "-t", "saved-base", str(base_ctx))
    engine.docker("build", "-t", "saved-child", str(child_ctx))
    image_id = json.loads(engine.docker("image", "inspect", "saved-child").stdout)[0]["Id"]

    saved = engine.docker("save", "saved-child").stdout
    with tarfile.open(fileobj=io.BytesIO(saved)) as t:
        manifest = json.loads(t.extractfile("manifest.json").read())
        assert manifest[0]["RepoTags"] == ["saved-child:latest"]
        assert manifest[0]["Config"] == "blobs/sha256/" + image_id.split(":")[1]
        files = set()
        for layer in manifest[0]["Layers"]:
            with tarfile.open(fileobj=io.BytesIO(t.extractfile(layer).read())) as lt:
                files |= set(lt.getnames())
    assert {"base.txt", "child.txt"} <= files

    engine.docker("rmi", "saved-child")
    assert engine.docker("image", "inspect", "saved-child", check=False).returncode != 0
    loaded = engine.docker("load", input=saved).stdout.decode()
    assert "Loaded image: saved-child:latest" in loaded
    assert json.loads(engine.docker("image", "inspect", "saved-child").stdout)[0]["Id"] == image_id


def test_failing_run_reports_the_classic_error(engine, tmp_path):
    ctx = tmp_path / "fail"
    _write(ctx, {"Dockerfile": "FROM busybox\nRUN echo about to fail && exit 3\n"})
    res = engine.docker("build", str(ctx), check=False)
    assert res.returncode == 3
    assert "about to fail" in res.stdout.decode()
    assert "The command '/bin/sh -c echo about to fail && exit 3' returned a non-zero code: 3" in \
        res.stderr.decode()


@pytest.mark.parametrize("name,members,needle", [
    ("dotdot", [("../escape", b"x")], "points outside the context"),
    ("absolute", [("/etc/evil", b"x")], "absolute path"),
])
def test_hostile_context_tars(engine, name, members, needle):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for member, data in [("Dockerfile", b"FROM busybox\n"), *members]:
            info = tarfile.TarInfo(member)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    body = buf.getvalue()
    request = (f"POST /v1.47/build?t={name} HTTP/1.1\r\nHost: d\r\nContent-Type: application/x-tar\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    raw = engine.raw(request)
    assert raw.startswith(b"HTTP/1.1 400"), raw[:200]
    assert needle in json.loads(raw.partition(b"\r\n\r\n")[2])["message"]


def test_malformed_and_compressed_context(engine, tmp_path):
    garbage = b"this is not a tar archive at all" * 50
    request = (f"POST /build HTTP/1.1\r\nHost: d\r\nContent-Length: {len(garbage)}\r\nConnection: close"
               "\r\n\r\n").encode() + garbage
    raw = engine.raw(request)
    assert raw.startswith(b"HTTP/1.1 400")
    assert "not a readable tar archive" in raw.decode(errors="replace")
    for mode in ("w:gz", "w:bz2", "w:xz"):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode=mode) as t:
            data = b"FROM busybox\nLABEL compressed=yes\n"
            info = tarfile.TarInfo("Dockerfile")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        body = buf.getvalue()
        query = urllib.parse.urlencode({"t": f"compressed-{mode[2:]}", "q": "1"})
        raw = engine.raw((f"POST /build?{query} HTTP/1.1\r\nHost: d\r\nContent-Length: {len(body)}\r\n"
                          "Connection: close\r\n\r\n").encode() + body, timeout=120)
        assert raw.startswith(b"HTTP/1.1 200"), raw[:300]
        assert b'"errorDetail"' not in raw, raw
    labels = json.loads(engine.docker("image", "inspect", "compressed-xz").stdout)[0]["Config"]["Labels"]
    assert labels == {"compressed": "yes"}


def test_push_and_pull_through_our_registry_client(engine, busybox_registry, tmp_path):
    ctx = tmp_path / "push"
    _write(ctx, {"Dockerfile": "FROM busybox\nRUN echo pushed > /pushed.txt\n"})
    engine.docker("build", "-t", "to-push", str(ctx))
    image_id = json.loads(engine.docker("image", "inspect", "to-push").stdout)[0]["Id"]
    target = f"{busybox_registry.host}/team/pushed:v1"
    engine.docker("tag", "to-push", target)
    out = engine.docker("push", target).stdout.decode()
    assert f"The push refers to repository [{busybox_registry.host}/team/pushed]" in out
    assert "v1: digest: sha256:" in out
    engine.docker("rmi", target)
    out = engine.docker("pull", target).stdout.decode()
    assert f"Status: Downloaded newer image for {target}" in out
    assert json.loads(engine.docker("image", "inspect", target).stdout)[0]["Id"] == image_id
    missing = engine.docker("pull", f"{busybox_registry.host}/team/absent:v1", check=False)
    assert missing.returncode != 0 and "not found" in missing.stderr.decode()
