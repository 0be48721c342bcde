"""The http(s):// source through the real solver against a real loopback HTTP server."""

from __future__ import annotations

import hashlib
import os
import time

import anyio
import pytest

from buildkitpy import llb
from buildkitpy.errors import BuildkitpyError
from buildkitpy.solver.ops import source_http
from tests.solver.conftest import Env
from tests.sources.conftest import FileServer, Resource


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def stat_in(env: Env, defn, path: str) -> os.stat_result:  # noqa: ANN001
    res = env.solve(defn)
    try:
        with res.ref.mount() as root:
            return os.lstat(os.path.join(root, path))
    finally:
        res.ref.release()


def test_download_named_from_url_with_default_mode(env: Env, http_server: FileServer) -> None:
    http_server.resources["/dir/hello.txt"] = Resource(b"hello over http\n", last_modified=1_600_000_000)
    defn = llb.marshal(llb.http(http_server.url("/dir/hello.txt")))
    assert env.tree(defn) == {"hello.txt": b"hello over http\n"}
    st = stat_in(env, defn, "hello.txt")
    assert oct(st.st_mode & 0o7777) == oct(0o600)
    assert (st.st_uid, st.st_gid) == (0, 0)
    assert st.st_mtime == 1_600_000_000  # Last-Modified becomes the file's mtime
    ua = [h.get("User-Agent") for m, p, h in http_server.requests if m == "GET"]
    assert ua and ua[0].startswith("buildkitpy/")


def test_filename_perm_uid_gid_attrs(env: Env, http_server: FileServer) -> None:
    http_server.resources["/f"] = Resource(b"data")
    defn = llb.marshal(llb.http(http_server.url("/f"), filename="renamed.bin", chmod=0o755,
                                chown=(1234, 567)))
    assert env.tree(defn) == {"renamed.bin": b"data"}
    st = stat_in(env, defn, "renamed.bin")
    assert st.st_mode & 0o7777 == 0o755
    assert (st.st_uid, st.st_gid) == (1234, 567)


def test_filename_from_content_disposition_then_default(env: Env, http_server: FileServer) -> None:
    http_server.resources["/get?id=1"] = Resource(b"x", headers={
        "Content-Disposition": 'attachment; filename="../report.csv"'})
    assert env.tree(llb.marshal(llb.http(http_server.url("/get?id=1")))) == {"report.csv": b"x"}
    http_server.resources["/"] = Resource(b"root")
    assert env.tree(llb.marshal(llb.http(http_server.url("/")))) == {"download": b"root"}


def test_checksum_match(env: Env, http_server: FileServer) -> None:
    body = b"pinned payload\n"
    http_server.resources["/p.txt"] = Resource(body)
    defn = llb.marshal(llb.http(http_server.url("/p.txt"), checksum=sha(body)))
    assert env.tree(defn) == {"p.txt": body}
    # A pinned checksum is the cache key: the second solve needs no request at all.
    before = len(http_server.requests)
    assert env.tree(defn) == {"p.txt": body}
    assert len(http_server.requests) == before
    assert env.executed() == []


def test_checksum_mismatch_has_buildkits_error(env: Env, http_server: FileServer) -> None:
    http_server.resources["/p.txt"] = Resource(b"actual content")
    wrong = sha(b"something else")
    with pytest.raises(BuildkitpyError) as exc:
        env.solve(llb.marshal(llb.http(http_server.url("/p.txt"), checksum=wrong)))
    assert str(exc.value) == f"digest mismatch {sha(b'actual content')}: {wrong}"
    assert env.live_handles() == {}


def test_invalid_attrs_are_refused(env: Env, http_server: FileServer) -> None:
    url = http_server.url("/x")
    with pytest.raises(BuildkitpyError, match="invalid http.checksum"):
        env.solve(llb.marshal(llb.http(url, checksum="md5:abc")))
    bad_perm = llb.marshal(llb.http(url))
    from buildkitpy.api import ops_pb2

    # craft an http.perm the builder would never emit
    ops = list(getattr(bad_perm, "def"))
    op = ops_pb2.Op()
    op.ParseFromString(ops[0])
    op.source.attrs["http.perm"] = "rw-r--r--"
    del getattr(bad_perm, "def")[:]
    terminal = ops_pb2.Op()
    terminal.ParseFromString(ops[-1])
    data = op.SerializeToString(deterministic=True)
    terminal.inputs[0].digest = "sha256:" + hashlib.sha256(data).hexdigest()
    getattr(bad_perm, "def").extend([data, terminal.SerializeToString(deterministic=True)])
    bad_perm.metadata.clear()
    with pytest.raises(BuildkitpyError, match=r"invalid http.perm 'rw-r--r--'"):
        env.solve(bad_perm)
    assert http_server.requests == []


def test_404_names_the_url(env: Env, http_server: FileServer) -> None:
    url = http_server.url("/missing.txt")
    with pytest.raises(BuildkitpyError) as exc:
        env.solve(llb.marshal(llb.http(url)))
    assert str(exc.value) == f"invalid response status 404 for {url}"


def test_connection_refused_names_the_url(env: Env, http_server: FileServer) -> None:
    port = http_server.port
    http_server.close()
    url = f"http://127.0.0.1:{port}/gone"
    with pytest.raises(BuildkitpyError, match=f"failed to download {url}: .*[Cc]onnection refused"):
        env.solve(llb.marshal(llb.http(url)))


def test_redirect_is_followed(env: Env, http_server: FileServer) -> None:
    http_server.resources["/old/name.txt"] = Resource(b"", redirect="/new/target.txt")
    http_server.resources["/new/target.txt"] = Resource(b"moved\n")
    # the file is named after the requested URL, like BuildKit
    assert env.tree(llb.marshal(llb.http(http_server.url("/old/name.txt")))) == {"name.txt": b"moved\n"}


def test_unchanged_content_hits_cache_changed_content_downloads(env: Env, http_server: FileServer) -> None:
    http_server.resources["/v.txt"] = Resource(b"version 1\n")
    src = llb.http(http_server.url("/v.txt"))
    # something built on top: it must hit the cache too when the download is unchanged
    built = llb.scratch().file(llb.copy(src, "v.txt", "/out/v.txt", create_dest_path=True))
    defn = llb.marshal(built)
    assert env.tree(defn) == {"out": "dir", "out/v.txt": b"version 1\n"}
    assert http_server.gets("/v.txt") == 1
    assert len(env.executed()) == 2

    assert env.tree(defn) == {"out": "dir", "out/v.txt": b"version 1\n"}
    assert http_server.gets("/v.txt") == 1  # revalidated by ETag (HEAD), not downloaded again
    heads = [h for m, p, h in http_server.requests if m == "HEAD" and p == "/v.txt"]
    assert heads and heads[-1]["If-None-Match"] == http_server.resources["/v.txt"].etag_value
    assert env.executed() == []

    http_server.resources["/v.txt"] = Resource(b"version 2\n")
    assert env.tree(defn) == {"out": "dir", "out/v.txt": b"version 2\n"}
    assert http_server.gets("/v.txt") == 2
    assert len(env.executed()) == 2
    assert env.live_handles() == {}


def test_revalidation_survives_a_restart(env: Env, http_server: FileServer) -> None:
    http_server.resources["/r.txt"] = Resource(b"persist\n")
    defn = llb.marshal(llb.http(http_server.url("/r.txt")))
    assert env.tree(defn) == {"r.txt": b"persist\n"}
    env.restart()
    assert env.tree(defn) == {"r.txt": b"persist\n"}
    assert http_server.gets("/r.txt") == 1
    assert env.executed() == []


def test_without_etag_every_solve_downloads_but_same_content_hits(env: Env, http_server: FileServer) -> None:
    http_server.resources["/n.txt"] = Resource(b"no etag\n", etag=False)
    defn = llb.marshal(llb.http(http_server.url("/n.txt")))
    assert env.tree(defn) == {"n.txt": b"no etag\n"}
    assert env.tree(defn) == {"n.txt": b"no etag\n"}
    assert http_server.gets("/n.txt") == 2
    assert env.executed() == []  # same checksum: the key is the same, the result comes from the cache


def test_accept_header_attr_is_sent_others_dropped(env: Env, http_server: FileServer) -> None:
    http_server.resources["/h"] = Resource(b"h")
    env.tree(llb.marshal(llb.http(http_server.url("/h"), headers={"Accept": "text/plain",
                                                                  "X-Evil": "1"})))
    (_, _, headers), = [r for r in http_server.requests if r[0] == "GET"]
    assert headers["Accept"] == "text/plain"
    assert "X-Evil" not in headers


def test_concurrent_solves_download_once(env: Env, http_server: FileServer) -> None:
    http_server.resources["/c.bin"] = Resource(b"c" * 300_000, chunk_delay=0.02)
    defn = llb.marshal(llb.http(http_server.url("/c.bin")))
    sizes: list[int] = []

    async def one() -> None:
        res = await env.solver.solve(defn, env.job())
        try:
            with res.ref.mount() as root:
                sizes.append(os.path.getsize(os.path.join(root, "c.bin")))
        finally:
            res.ref.release()

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(one)

    anyio.run(main)
    assert sizes == [300_000] * 3
    assert http_server.gets("/c.bin") == 1
    assert env.live_handles() == {}
    assert len(source_http._locks) == 0  # per-URL locks do not pile up


def test_cancelled_download_stops_promptly_and_leaks_nothing(env: Env, http_server: FileServer) -> None:
    # 100 chunks, 0.05 s apart: about 5 s to download completely
    http_server.resources["/slow.bin"] = Resource(b"s" * (65536 * 100), chunk_delay=0.05)
    defn = llb.marshal(llb.http(http_server.url("/slow.bin")))

    async def main() -> bool:
        with anyio.move_on_after(0.5) as scope:
            await env.solver.solve(defn, env.job())
        return scope.cancelled_caught

    started = time.monotonic()
    assert anyio.run(main)
    assert time.monotonic() - started < 2.5
    assert env.live_handles() == {}
    assert env.mutables() == []
    # and the next solve downloads it completely
    http_server.resources["/slow.bin"].chunk_delay = 0
    assert env.tree(defn) == {"slow.bin": b"s" * (65536 * 100)}
