"""``type=s3``: the cache in an S3 bucket, laid out as BuildKit's s3 cache.

Objects: each layer blob at ``<prefix><blobs_prefix><digest>`` (written once), and the cache config
itself, with every layer's media type, diffID, size and creation time as its annotations (there is
no manifest to carry descriptors), at ``<prefix><manifests_prefix><name>`` for each of the ``;``
separated ``name``s (default ``buildkit``); imports read the first name.

Attrs as BuildKit's: ``bucket`` (or ``$AWS_BUCKET``), ``region`` (or ``$AWS_REGION``), ``prefix``,
``manifests_prefix`` (``manifests/``), ``blobs_prefix`` (``blobs/``), ``name``, ``endpoint_url``,
``use_path_style``, ``access_key_id``/``secret_access_key``/``session_token`` (or the daemon's
``$AWS_ACCESS_KEY_ID``/``$AWS_SECRET_ACCESS_KEY``/``$AWS_SESSION_TOKEN``), ``upload_parallelism``
(4), plus the common ``mode``, ``compression*`` and ``ignore-error``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

import anyio

from buildkitpy.errors import InvalidArgument, NotFound
from buildkitpy.image.reference import Reference
from buildkitpy.image.registry import Descriptor
from buildkitpy.remotecache.chains import LayerDesc, RemoteIndex
from buildkitpy.remotecache.config import LayerAnnotations, dump_config, parse_config
from buildkitpy.remotecache.exporter import CacheBlobs
from buildkitpy.remotecache.jobcache import ImportedCache
from buildkitpy.remotecache.s3client import S3Client, S3Credentials

MAX_CONFIG_BYTES = 64 << 20


def _bool(value: str) -> bool:
    return value.strip().lower() in ("1", "t", "true", "yes", "on")


@dataclass(frozen=True)
class S3Options:
    bucket: str
    region: str
    prefix: str = ""
    manifests_prefix: str = "manifests/"
    blobs_prefix: str = "blobs/"
    names: tuple[str, ...] = ("buildkit",)
    endpoint_url: str = ""
    path_style: bool = False
    credentials: S3Credentials = S3Credentials("", "")
    upload_parallelism: int = 4

    @classmethod
    def from_attrs(cls, attrs: dict[str, str]) -> S3Options:
        bucket = attrs.get("bucket") or os.environ.get("AWS_BUCKET", "")
        if not bucket:
            raise InvalidArgument("bucket ($AWS_BUCKET) not set for s3 cache")
        region = attrs.get("region") or os.environ.get("AWS_REGION", "")
        if not region:
            raise InvalidArgument("region ($AWS_REGION) not set for s3 cache")
        parallel = attrs.get("upload_parallelism", "4")
        if not parallel.isdigit() or int(parallel) <= 0:
            raise InvalidArgument("upload_parallelism must be a positive integer")
        names = tuple(n for n in attrs.get("name", "buildkit").split(";") if n) or ("buildkit",)
        creds = S3Credentials(attrs.get("access_key_id") or os.environ.get("AWS_ACCESS_KEY_ID", ""),
                              attrs.get("secret_access_key") or os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
                              attrs.get("session_token") or os.environ.get("AWS_SESSION_TOKEN", ""))
        if not creds.access_key_id or not creds.secret_access_key:
            raise InvalidArgument("s3 cache needs credentials: access_key_id and secret_access_key (or "
                                  "$AWS_ACCESS_KEY_ID/$AWS_SECRET_ACCESS_KEY in the daemon's environment)")
        return cls(bucket, region, attrs.get("prefix", ""), attrs.get("manifests_prefix", "manifests/"),
                   attrs.get("blobs_prefix", "blobs/"), names, attrs.get("endpoint_url", ""),
                   _bool(attrs.get("use_path_style", "false")), creds, int(parallel))

    def client(self) -> S3Client:
        return S3Client(self.bucket, self.region, self.credentials, endpoint_url=self.endpoint_url,
                        path_style=self.path_style)

    def blob_key(self, digest: str) -> str:
        return f"{self.prefix}{self.blobs_prefix}{digest}"

    def manifest_key(self, name: str) -> str:
        return f"{self.prefix}{self.manifests_prefix}{name}"


async def export(blobs: CacheBlobs, attrs: dict[str, str]) -> dict[str, str]:
    opts = S3Options.from_attrs(attrs)
    client = opts.client()
    limiter = anyio.CapacityLimiter(opts.upload_parallelism)

    def upload(d: LayerDesc) -> None:
        key = opts.blob_key(d.digest)
        if client.head(key) == d.size:
            return
        with open(blobs.store.path(d.digest), "rb") as f:
            client.put(key, f, d.size)

    async def upload_in_thread(d: LayerDesc) -> None:
        await anyio.to_thread.run_sync(upload, d, limiter=limiter)

    async with anyio.create_task_group() as tg:
        for d in blobs.exported.layers:
            tg.start_soon(upload_in_thread, d)
    by_digest = {d.digest: d for d in blobs.exported.layers}
    config = blobs.exported.config
    annotated = replace(config, layers=[replace(layer, annotations=_annotations(by_digest[layer.blob]))
                                        for layer in config.layers])
    data = dump_config(annotated)
    for name in opts.names:
        await anyio.to_thread.run_sync(client.put, opts.manifest_key(name), data, len(data))
    return {}


def _annotations(d: LayerDesc) -> LayerAnnotations:
    return LayerAnnotations(d.media_type, d.diff_id, d.size, d.created_at or "0001-01-01T00:00:00Z")


class _S3BlobSource:
    def __init__(self, client: S3Client, opts: S3Options) -> None:
        self.client = client
        self.opts = opts

    async def fetch_blob(self, ref: Reference, desc: Descriptor, sink: Any, progress: Any = None) -> None:
        done = [0]

        def put(data: bytes) -> None:
            done[0] += len(data)
            if done[0] > desc.size:
                raise InvalidArgument(f"s3 blob {desc.digest} is larger than its descriptor says "
                                      f"({desc.size})")
            sink(data)
            if progress is not None:
                progress(done[0])

        await anyio.to_thread.run_sync(self.client.get, self.opts.blob_key(desc.digest), put)
        if done[0] != desc.size:
            raise InvalidArgument(f"s3 blob {desc.digest}: got {done[0]} of {desc.size} bytes")


async def load(attrs: dict[str, str]) -> ImportedCache | None:
    opts = S3Options.from_attrs(attrs)
    client = opts.client()
    key = opts.manifest_key(opts.names[0])
    name = f"s3 {opts.bucket}/{key}"
    try:
        data = await anyio.to_thread.run_sync(client.get_bytes, key, MAX_CONFIG_BYTES)
    except NotFound:
        return None
    config = parse_config(data)
    layers: dict[str, LayerDesc] = {}
    for layer in config.layers:
        a = layer.annotations
        if a is None or not a.diff_id:
            raise InvalidArgument(f"{name}: cache layer {layer.blob} has no annotations (diffID)")
        layers[layer.blob] = LayerDesc(a.media_type, layer.blob, a.size, a.diff_id, a.created_at)
    return ImportedCache(RemoteIndex(config, layers, name), _S3BlobSource(client, opts),
                         Reference("s3", opts.bucket), name)
