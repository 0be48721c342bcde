"""A small S3 client: HEAD, GET (streamed) and PUT of objects, signed with AWS Signature V4.

Only what the cache backend needs, over ``http.client`` (blocking: call it from a worker thread).
Path-style (``endpoint/bucket/key``) or virtual-hosted (``bucket.endpoint/key``) addressing; the
payload is sent as ``UNSIGNED-PAYLOAD`` (allowed for S3 over any transport and what large uploads
use), so a blob streams from disk without being read twice.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import http.client
import ssl
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from buildkitpy.errors import BuildkitpyError, NotFound, PermissionDenied

CHUNK = 1 << 20
TIMEOUT = 60.0


class S3Error(BuildkitpyError):
    """An S3 request that failed (the server's code and message, or the transport error)."""


@dataclass(frozen=True)
class S3Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str = ""


def _quote(path: str) -> str:
    return urllib.parse.quote(path, safe="/-_.~")


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def sign(method: str, host: str, path: str, query: str, region: str, creds: S3Credentials,
         now: datetime.datetime | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The headers (``Authorization``, ``x-amz-*``, ``host``) of a SigV4-signed S3 request."""
    now = now or datetime.datetime.now(datetime.UTC)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = now.strftime("%Y%m%d")
    headers = {"host": host, "x-amz-date": amz_date, "x-amz-content-sha256": "UNSIGNED-PAYLOAD"}
    if creds.session_token:
        headers["x-amz-security-token"] = creds.session_token
    for k, v in (extra or {}).items():
        headers[k.lower()] = v
    names = sorted(headers)
    canonical = "\n".join([method, _quote(path), query,
                           "".join(f"{n}:{headers[n].strip()}\n" for n in names), ";".join(names),
                           "UNSIGNED-PAYLOAD"])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(("AWS4" + creds.secret_access_key).encode(), day), region), "s3"),
                "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds.access_key_id}/{scope}, "
                                f"SignedHeaders={';'.join(names)}, Signature={signature}")
    return headers


class S3Client:
    def __init__(self, bucket: str, region: str, creds: S3Credentials, *, endpoint_url: str = "",
                 path_style: bool = False) -> None:
        self.bucket = bucket
        self.region = region
        self.creds = creds
        url = urllib.parse.urlsplit(endpoint_url or f"https://s3.{region}.amazonaws.com")
        if url.scheme not in ("http", "https") or not url.hostname:
            raise BuildkitpyError(f"invalid s3 endpoint_url {endpoint_url!r}")
        self.scheme = url.scheme
        self.path_style = path_style
        netloc = url.netloc
        self.host = netloc if path_style else f"{bucket}.{netloc}"
        self.base = url.path.rstrip("/")

    def _path(self, key: str) -> str:
        return f"{self.base}/{self.bucket}/{key}" if self.path_style else f"{self.base}/{key}"

    def _conn(self) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, timeout=TIMEOUT,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(self.host, timeout=TIMEOUT)

    def _request(self, method: str, key: str, body: BinaryIO | bytes | None = None, size: int = 0,
                 handle: Callable[[http.client.HTTPResponse], object] | None = None,
                 ) -> tuple[int, dict, object]:
        path = self._path(key)
        extra = {"content-length": str(size)} if method == "PUT" else None
        headers = sign(method, self.host, path, "", self.region, self.creds, extra=extra)
        conn = self._conn()
        try:
            conn.request(method, _quote(path), body=body, headers=headers)
            resp = conn.getresponse()
            if resp.status >= 300 or handle is None:
                data = resp.read(1 << 16) if method != "HEAD" else b""
                if resp.status >= 300:
                    self._fail(method, key, resp.status, data)
                return resp.status, dict(resp.getheaders()), data
            return resp.status, dict(resp.getheaders()), handle(resp)
        except (OSError, http.client.HTTPException) as exc:
            raise S3Error(f"s3 {method} {self.bucket}/{key}: {exc}") from None
        finally:
            conn.close()

    def _fail(self, method: str, key: str, status: int, data: bytes) -> None:
        text = data.decode(errors="replace")
        code = _tag(text, "Code") or str(status)
        message = _tag(text, "Message")
        where = f"s3 {method} {self.bucket}/{key}"
        detail = f"{code}" + (f": {message}" if message else "")
        if status == 404:
            raise NotFound(f"{where}: not found ({detail})")
        if status in (401, 403):
            raise PermissionDenied(f"{where}: access denied ({detail})")
        raise S3Error(f"{where}: {detail}")

    def head(self, key: str) -> int | None:
        """The object's size, or None when it does not exist."""
        try:
            _, headers, _ = self._request("HEAD", key)
        except NotFound:
            return None
        lowered = {k.lower(): v for k, v in headers.items()}
        return int(lowered.get("content-length", "0"))

    def get(self, key: str, sink: Callable[[bytes], None]) -> int:
        def handle(resp: http.client.HTTPResponse) -> int:
            done = 0
            while True:
                chunk = resp.read(CHUNK)
                if not chunk:
                    return done
                done += len(chunk)
                sink(chunk)

        _, _, done = self._request("GET", key, handle=handle)
        return int(done)  # type: ignore[call-overload]

    def get_bytes(self, key: str, limit: int) -> bytes:
        parts: list[bytes] = []
        total = [0]

        def sink(data: bytes) -> None:
            total[0] += len(data)
            if total[0] > limit:
                raise S3Error(f"s3 object {self.bucket}/{key} is larger than {limit} bytes")
            parts.append(data)

        self.get(key, sink)
        return b"".join(parts)

    def put(self, key: str, body: BinaryIO | bytes, size: int) -> None:
        self._request("PUT", key, body=body, size=size)


def _tag(xml: str, name: str) -> str:
    start = xml.find(f"<{name}>")
    end = xml.find(f"</{name}>")
    return xml[start + len(name) + 2:end] if 0 <= start < end else ""
