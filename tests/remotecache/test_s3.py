"""``type=s3`` cache against moto's S3-compatible server on loopback: round trip between two fresh
daemons, the objects laid out as BuildKit's s3 cache, and a clear error for a bad bucket."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from buildkitpy.remotecache.s3client import S3Client, S3Credentials
from tests.conftest import free_port, needs_root

from .conftest import build, write_context

DOCKERFILE = """FROM {base}
RUN echo one > /one
COPY input.txt /input.txt
RUN cat /one /input.txt > /two
"""


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory) -> str:
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/").close()
            break
        except urllib.error.HTTPError:
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail("moto.server exited (is the dev dependency moto[server] installed?)")
            time.sleep(0.1)
    urllib.request.urlopen(urllib.request.Request(f"{url}/cache-bucket", method="PUT")).close()
    yield url
    proc.terminate()
    proc.wait(10)


def _attrs(endpoint: str, **extra: str) -> str:
    attrs = {
        "bucket": "cache-bucket",
        "region": "us-east-1",
        "endpoint_url": endpoint,
        "use_path_style": "true",
        "access_key_id": "testing",
        "secret_access_key": "testing",
        **extra,
    }
    return ",".join(f"{k}={v}" for k, v in attrs.items())


@needs_root
def test_s3_roundtrip_between_fresh_daemons(make_daemon, base_image, s3_endpoint, tmp_path: Path):
    ctx = write_context(tmp_path / "ctx", DOCKERFILE.format(base=base_image), {"input.txt": "x\n"})
    attrs = _attrs(s3_endpoint, prefix="proj/", name="main;v1")
    run1 = build(make_daemon(), ctx, tmp_path / "o1", "--export-cache", f"type=s3,{attrs},mode=max")
    assert len(run1.ran()) == 3, run1.text

    client = S3Client(
        "cache-bucket",
        "us-east-1",
        S3Credentials("testing", "testing"),
        endpoint_url=s3_endpoint,
        path_style=True,
    )
    # BuildKit's layout: the config (layers annotated with their diffIDs) under every name, blobs by digest
    for name in ("main", "v1"):
        doc = json.loads(client.get_bytes(f"proj/manifests/{name}", 1 << 20))
        assert doc["layers"] and all(
            layer["annotations"]["diffID"].startswith("sha256:") for layer in doc["layers"]
        )
    blob = doc["layers"][0]["blob"]
    assert client.head(f"proj/blobs/{blob}") == doc["layers"][0]["annotations"]["size"]

    run2 = build(
        make_daemon(),
        ctx,
        tmp_path / "o2",
        "--import-cache",
        f"type=s3,{_attrs(s3_endpoint, prefix='proj/', name='v1')}",
    )
    assert run2.ran() == set() and len(run2.cached()) == 3, run2.text
    assert (tmp_path / "o2" / "two").read_text() == "one\nx\n"


@needs_root
def test_s3_export_to_a_missing_bucket_fails_clearly(make_daemon, base_image, s3_endpoint, tmp_path: Path):
    ctx = write_context(tmp_path / "ctx", DOCKERFILE.format(base=base_image), {"input.txt": "x\n"})
    attrs = _attrs(s3_endpoint).replace("bucket=cache-bucket", "bucket=no-such-bucket")
    failed = build(make_daemon(), ctx, tmp_path / "o1", "--export-cache", f"type=s3,{attrs}", check=False)
    assert failed.proc.returncode != 0
    assert "exporting cache (s3)" in failed.text and "NoSuchBucket" in failed.text, failed.text
    ok = build(make_daemon(), ctx, tmp_path / "o2", "--export-cache", f"type=s3,{attrs},ignore-error=true")
    assert (tmp_path / "o2" / "two").read_text() == "one\nx\n", ok.text
