"""``docker build --cache-from`` on the classic builder: an image pulled into a fresh daemon (no
local build cache) gives " ---> Using cache" for the steps its history continues, RUN steps are not
run again, and steps after a cache hit are built on the cached image."""

from __future__ import annotations

import json

import pytest

from .conftest import start_engine, stop_daemon
from .test_build import _write

DOCKERFILE = """FROM {base}
ARG WHO=world
ENV GREETING=hi
COPY a.txt /a.txt
RUN echo ran-$WHO > /r.txt && cat /a.txt
WORKDIR /w
RUN echo second > s.txt
CMD ["cat", "/r.txt"]
"""


@pytest.fixture(scope="module")
def fresh_engine(tmp_path_factory, busybox_registry):
    e = start_engine(tmp_path_factory.mktemp("cachefrom-engine"), busybox_registry)
    yield e
    stop_daemon(e.daemon)


def _image_id(engine, name: str) -> str:
    return json.loads(engine.docker("image", "inspect", name).stdout)[0]["Id"]


def test_cache_from_a_pulled_image(engine, fresh_engine, busybox_registry, tmp_path):
    # The base has a history entry for each layer, as registry images have (the test registry's
    # busybox has none, and an image built on it gets the missing entries after its own).
    base = f"{busybox_registry.host}/cache/base:v1"
    _write(tmp_path / "base", {"Dockerfile": "FROM busybox\nLABEL base=yes\n"})
    engine.docker("build", "-t", base, str(tmp_path / "base"))
    engine.docker("push", base)
    dockerfile = DOCKERFILE.format(base=base)
    ctx = tmp_path / "app"
    _write(ctx, {"Dockerfile": dockerfile, "a.txt": "content-one\n"})
    first = engine.docker("build", "-t", "cf-app", str(ctx)).stdout.decode()
    assert "ran-world" not in first.splitlines()  # the RUN's output is the cat of /a.txt
    assert "content-one" in first.splitlines()
    original = _image_id(engine, "cf-app")
    remote = f"{busybox_registry.host}/cache/app:v1"
    engine.docker("tag", "cf-app", remote)
    engine.docker("push", remote)

    fresh_engine.docker("pull", remote)  # not the base: FROM pulls it
    assert _image_id(fresh_engine, remote) == original
    # Without --cache-from the fresh daemon has nothing to reuse. (That build fills its local
    # cache; with --cache-from, as in the Engine, local images count only as ancestors of a source.)
    out = fresh_engine.docker("build", str(ctx)).stdout.decode()
    assert "Using cache" not in out and "content-one" in out.splitlines()

    out = fresh_engine.docker("build", "--cache-from", remote, "-t", "cf-hit", str(ctx)).stdout.decode()
    assert out.count(" ---> Using cache") == 7, out
    assert "content-one" not in out.splitlines() and "Running in" not in out, out
    assert out.splitlines()[-2] == f"Successfully built {original[7:19]}", out
    assert _image_id(fresh_engine, "cf-hit") == original
    again = fresh_engine.docker("build", "--cache-from", remote, str(ctx)).stdout.decode()
    assert again.count(" ---> Using cache") == 7 and again.splitlines()[-1].endswith(original[7:19])

    # A different build arg changes the RUN's history: from there on, nothing matches.
    out = fresh_engine.docker("build", "--cache-from", remote, "--build-arg", "WHO=other",
                              str(ctx)).stdout.decode()
    assert "Using cache" not in out.split("Step 3/8")[1] and "content-one" in out.splitlines(), out

    # A step after the cached ones is built on the image the cache gave.
    longer = tmp_path / "longer"
    _write(longer, {"Dockerfile": dockerfile + "RUN echo after > /after.txt && cat /w/s.txt /r.txt\n",
                    "a.txt": "content-one\n"})
    out = fresh_engine.docker("build", "--cache-from", remote, "-t", "cf-longer", str(longer)).stdout.decode()
    lines = out.splitlines()
    assert out.count(" ---> Using cache") == 7, out
    assert lines[lines.index("Step 9/9 : RUN echo after > /after.txt && cat /w/s.txt /r.txt") + 2:][:2] == \
        ["second", "ran-world"], out
    inspect = json.loads(fresh_engine.docker("image", "inspect", "cf-longer").stdout)[0]
    assert inspect["Config"]["Cmd"] == ["cat", "/r.txt"] and inspect["Config"]["WorkingDir"] == "/w"
    history = fresh_engine.docker("history", "--no-trunc", "--format", "{{.CreatedBy}}",
                                  "cf-longer").stdout.decode().splitlines()
    assert history[0].startswith("RUN |1 WHO=world /bin/sh -c echo after")
    assert history[1] == 'CMD ["cat" "/r.txt"]'
    assert not any(h.startswith("ARG WHO") for h in history[:2]), history

    # A changed COPY source stops the cache there.
    (ctx / "a.txt").write_text("content-two\n")
    out = fresh_engine.docker("build", "--cache-from", remote, str(ctx)).stdout.decode()
    assert out.count(" ---> Using cache") == 2 and "content-two" in out.splitlines(), out
