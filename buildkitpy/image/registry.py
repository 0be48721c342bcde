"""A small OCI distribution (registry v2) client over HTTP/1.1.

Requests run on the stdlib ``http.client`` in worker threads (one connection per request, which is
plenty for manifests and lets each blob stream at full speed); the async surface hops threads with
``anyio.to_thread``. Every endpoint of a registry (mirrors first, see ``hosts``) is tried in order;
a failing mirror falls through to the next one. Authorization follows the registry's challenge
(``auth``). Blob and manifest bytes are checked against their digests by the caller that stores
them (``ContentStore`` verifies while writing; manifests are hashed here).

Uploads (push) can reuse ``request``: it takes a method and a body (bytes, or a seekable binary
file that is rewound before each attempt), and a ``path`` starting with ``/`` is used as the URL
path on the endpoint as it is (an upload ``Location``).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import anyio
import grpc

from buildkitpy.errors import BuildkitpyError, InvalidArgument, NotFound, PermissionDenied
from buildkitpy.image import mediatypes
from buildkitpy.image.auth import CredentialsFn, basic_header, parse_challenges, repository_scope
from buildkitpy.image.hosts import Endpoint, endpoints_for
from buildkitpy.image.reference import Reference

MAX_MANIFEST_BYTES = 8 << 20
MAX_ERROR_BODY = 64 << 10
CHUNK = 1 << 20
MAX_REDIRECTS = 5
USER_AGENT = "buildkitpy/0.1"


class RegistryError(BuildkitpyError):
    """A registry answered with an error or could not be reached."""


class RegistryNotFound(NotFound):
    pass


class RegistryUnauthorized(PermissionDenied):
    """The registry refused our credentials. On the wire a plain error (gRPC code Unknown), as
    BuildKit's pull and push failures are, so clients print the registry's reason without a
    ``PermissionDenied:`` prefix."""

    grpc_code = grpc.StatusCode.UNKNOWN


class Canceled(Exception):
    """The async caller went away; the worker thread stops streaming."""


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Mapping[str, Any] | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    urls: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, obj: Any, what: str) -> Descriptor:
        from buildkitpy.content.store import validate_digest

        if not isinstance(obj, dict):
            raise InvalidArgument(f"{what}: descriptor is not an object")
        digest, size = validate_digest(obj.get("digest")), obj.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidArgument(f"{what}: descriptor {digest} has an invalid size {size!r}")
        platform = obj.get("platform")
        annotations = obj.get("annotations") or {}
        urls = obj.get("urls") or ()
        return cls(str(obj.get("mediaType") or ""), digest, size,
                   platform if isinstance(platform, dict) else None,
                   annotations if isinstance(annotations, dict) else {},
                   tuple(u for u in urls if isinstance(u, str)) if isinstance(urls, list) else ())


@dataclass
class Response:
    status: int
    reason: str
    headers: dict[str, str]  # lower-case names
    body: Any  # bytes for errors/small bodies, else what the body handler returned
    url: str


BodyHandler = Callable[[http.client.HTTPResponse, threading.Event], Any]


def _error_summary(body: Any) -> str:
    if not isinstance(body, bytes | bytearray) or not body:
        return ""
    try:
        doc = json.loads(body)
        errs = doc.get("errors") or []
        parts = [f"{e.get('code', '')}: {e.get('message', '')}".strip(": ")
                 for e in errs if isinstance(e, dict)]
        if parts:
            return "; ".join(parts)
    except (ValueError, AttributeError):
        pass
    return body[:200].decode(errors="replace").strip()


class RegistryClient:
    """One client per build or daemon; caches authorization per (host, scope) and credentials per
    host. ``registries`` maps host → ``RegistryConfig``-like objects (daemon config)."""

    def __init__(self, registries: Mapping[str, Any] | None = None,
                 credentials: CredentialsFn | None = None, *, timeout: float = 60.0) -> None:
        self.registries = dict(registries or {})
        self.credentials = credentials
        self.timeout = timeout
        self._authorization: dict[tuple[str, str], str] = {}
        self._credentials_cache: dict[str, tuple[str, str]] = {}
        self._plain_http_hosts: set[str] = set()  # insecure hosts that turned out to speak HTTP
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- high-level calls

    async def get_manifest(self, ref: Reference, obj: str | None = None) -> tuple[Descriptor, bytes]:
        """Fetch a manifest or index by tag or digest (default: the reference's own). The bytes
        are verified against a requested digest; the descriptor carries the computed digest."""
        obj = obj or ref.object
        resp = await self.request(ref, "GET", f"manifests/{obj}", accept=mediatypes.MANIFEST_ACCEPT,
                                  handle_body=_read_limited(MAX_MANIFEST_BYTES))
        data: bytes = resp.body
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if obj.startswith("sha256:") and digest != obj:
            raise RegistryError(f"{ref.name}: manifest {obj} from {resp.url} has digest {digest}")
        header_digest = resp.headers.get("docker-content-digest", "")
        if not obj.startswith("sha256:") and header_digest.startswith("sha256:") and header_digest != digest:
            raise RegistryError(f"{ref.name}:{obj}: registry says manifest digest {header_digest} but "
                                f"the bytes hash to {digest}")
        media_type = resp.headers.get("content-type", "").split(";")[0].strip()
        if media_type in ("application/json", "text/plain", "application/octet-stream"):
            media_type = ""
        return Descriptor(media_type, digest, len(data)), data

    async def fetch_blob(self, ref: Reference, desc: Descriptor,
                         sink: Callable[[bytes], None],
                         progress: Callable[[int], None] | None = None) -> None:
        """Stream blob ``desc`` into ``sink`` (called in a worker thread, chunk by chunk)."""

        def handle(resp: http.client.HTTPResponse, cancel: threading.Event) -> int:
            done = 0
            while True:
                if cancel.is_set():
                    raise Canceled()
                chunk = resp.read(CHUNK)
                if not chunk:
                    break
                done += len(chunk)
                if done > desc.size:
                    raise RegistryError(f"blob {desc.digest} is larger than its descriptor says "
                                        f"({desc.size})")
                sink(chunk)
                if progress is not None:
                    progress(done)
            return done

        resp = await self.request(ref, "GET", f"blobs/{desc.digest}", handle_body=handle)
        if resp.body != desc.size:
            raise RegistryError(f"blob {desc.digest}: got {resp.body} of {desc.size} bytes from {resp.url}")

    async def get_blob_bytes(self, ref: Reference, desc: Descriptor,
                             limit: int = MAX_MANIFEST_BYTES) -> bytes:
        if desc.size > limit:
            raise RegistryError(f"blob {desc.digest} is too large to read into memory ({desc.size} bytes)")
        parts: list[bytes] = []
        await self.fetch_blob(ref, desc, parts.append)
        data = b"".join(parts)
        if "sha256:" + hashlib.sha256(data).hexdigest() != desc.digest:
            raise RegistryError(f"{ref.name}: blob {desc.digest} does not match its digest")
        return data

    # ----------------------------------------------------------------- requests with auth and mirrors

    async def request(self, ref: Reference, method: str, path: str, *, accept: str | None = None,
                      body: bytes | BinaryIO | None = None, headers: Mapping[str, str] | None = None,
                      handle_body: BodyHandler | None = None, actions: str = "pull") -> Response:
        """``method`` on ``<endpoint>/v2/<repository>/<path>`` for each endpoint until one answers
        2xx. 404 becomes ``RegistryNotFound``, a refused authorization ``RegistryUnauthorized``."""
        endpoints = endpoints_for(ref.domain, self.registries)
        failures: list[str] = []
        for ep in endpoints:
            try:
                return await self._request_endpoint(ep, ref, method, path, accept, body, headers,
                                                    handle_body, actions)
            except (OSError, RegistryError, RegistryNotFound, RegistryUnauthorized,
                    http.client.HTTPException) as exc:
                if not ep.mirror:
                    if failures and isinstance(exc, RegistryError | OSError):
                        raise RegistryError(f"{exc} (mirrors failed too: {'; '.join(failures)})") from exc
                    if isinstance(exc, OSError | http.client.HTTPException):
                        raise RegistryError(f"{method} {ep}/{ref.repository}/{path}: "
                                            f"{transport_error(exc, ep.host)}") from exc
                    raise
                failures.append(f"{ep.host}: {transport_error(exc, ep.host)}")
        raise RegistryError(f"no endpoint for {ref.domain}")  # unreachable: the origin is always last

    async def _request_endpoint(self, ep: Endpoint, ref: Reference, method: str, path: str,
                                accept: str | None, body: bytes | BinaryIO | None,
                                headers: Mapping[str, str] | None,
                                handle_body: BodyHandler | None, actions: str) -> Response:
        scope = repository_scope(ref.repository, actions)
        url_path = path if path.startswith("/") else f"{ep.path}/{ref.repository}/{path}"
        authorized_fresh = False
        while True:
            hdrs = {"User-Agent": USER_AGENT, **(headers or {})}
            if accept:
                hdrs["Accept"] = accept
            auth = self._authorization.get((ep.host, scope))
            if auth:
                hdrs["Authorization"] = auth
            resp = await self._run(ep, method, url_path, hdrs, body, handle_body)
            if resp.status == 401:
                if authorized_fresh:
                    raise RegistryUnauthorized(
                        f"{ref.name}: access denied by {ep.host} even with credentials "
                        f"({resp.status} {resp.reason}: {_error_summary(resp.body)})")
                self._authorization.pop((ep.host, scope), None)
                await self._authorize(ep, ref, scope, resp)
                authorized_fresh = True
                continue
            if 200 <= resp.status < 300:
                return resp
            summary = _error_summary(resp.body)
            if resp.status == 404:
                raise RegistryNotFound(f"{ref.name}: {path.split('/')[0][:-1]} {path.split('/', 1)[-1]} not "
                                       f"found at {ep.host}" + (f" ({summary})" if summary else ""))
            if resp.status == 403:
                raise RegistryUnauthorized(f"{ref.name}: {ep.host} refused access ({summary or resp.reason})")
            raise RegistryError(f"{method} {resp.url}: {resp.status} {resp.reason}"
                                + (f": {summary}" if summary else ""))

    async def _run(self, ep: Endpoint, method: str, url_path: str, headers: dict[str, str],
                   body: bytes | BinaryIO | None, handle_body: BodyHandler | None) -> Response:
        cancel = threading.Event()
        try:
            return await anyio.to_thread.run_sync(self._blocking_request, ep, method, url_path, headers,
                                                  body, handle_body, cancel, abandon_on_cancel=True)
        finally:
            cancel.set()  # stops an abandoned thread at its next chunk

    async def _credentials_for(self, host: str) -> tuple[str, str]:
        if self.credentials is None:
            return "", ""
        if host not in self._credentials_cache:
            self._credentials_cache[host] = await self.credentials(host)
        return self._credentials_cache[host]

    async def _authorize(self, ep: Endpoint, ref: Reference, scope: str, resp: Response) -> None:
        header = resp.headers.get("www-authenticate", "")
        challenges = parse_challenges(header)
        if not challenges:
            raise RegistryUnauthorized(f"{ref.name}: {ep.host} answered 401 without an authentication "
                                       f"challenge ({_error_summary(resp.body)})")
        username, secret = await self._credentials_for(ep.host)
        by_scheme = {c.scheme: c for c in challenges}
        if "bearer" in by_scheme:
            token = await self._fetch_token(ep, ref, by_scheme["bearer"].params, scope, username, secret)
            self._authorization[(ep.host, scope)] = f"Bearer {token}"
        elif "basic" in by_scheme:
            if not secret:
                raise RegistryUnauthorized(f"{ref.name}: {ep.host} requires basic authentication and "
                                           f"no credentials are available for it")
            self._authorization[(ep.host, scope)] = basic_header(username, secret)
        else:
            raise RegistryUnauthorized(f"{ref.name}: {ep.host} asks for unsupported authentication "
                                       f"{', '.join(sorted(by_scheme))}")

    async def _fetch_token(self, ep: Endpoint, ref: Reference, params: dict[str, str], scope: str,
                           username: str, secret: str) -> str:
        realm = params.get("realm", "")
        parsed = urllib.parse.urlsplit(realm)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise RegistryUnauthorized(f"{ref.name}: {ep.host} gave an invalid token realm {realm!r}")
        scopes = [s for s in (params.get("scope", ""), scope) if s]
        query: list[tuple[str, str]] = []
        if params.get("service"):
            query.append(("service", params["service"]))
        headers = {"User-Agent": USER_AGENT}
        body: bytes | None = None
        if secret and not username:  # an identity (refresh) token: OAuth2 POST
            method = "POST"
            form = [*query, ("grant_type", "refresh_token"), ("refresh_token", secret),
                    ("client_id", "buildkitpy"), ("scope", " ".join(dict.fromkeys(scopes)))]
            body = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            target = realm
        else:
            method = "GET"
            query += [("scope", s) for s in dict.fromkeys(scopes)]
            if secret:
                headers["Authorization"] = basic_header(username, secret)
            sep = "&" if parsed.query else "?"
            target = realm + sep + urllib.parse.urlencode(query)
        token_ep = Endpoint(parsed.netloc, parsed.scheme, "", ep.insecure, ep.ca)
        path = urllib.parse.urlsplit(target)
        url_path = path.path + (f"?{path.query}" if path.query else "")
        resp = await self._run(token_ep, method, url_path or "/", headers, body, _read_limited(1 << 20))
        if resp.status in (401, 403):
            raise RegistryUnauthorized(f"{ref.name}: token server {parsed.netloc} refused the "
                                       f"credentials ({resp.status} {_error_summary(resp.body)})")
        if not 200 <= resp.status < 300:
            raise RegistryError(f"{ref.name}: token request to {realm} failed: {resp.status} {resp.reason}")
        try:
            doc = json.loads(resp.body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{ref.name}: token server {realm} answered without a token")
        return token

    # ----------------------------------------------------------------- the blocking HTTP exchange

    def _connection(self, ep: Endpoint, scheme: str, host: str) -> http.client.HTTPConnection:
        if scheme == "https":
            return http.client.HTTPSConnection(host, timeout=self.timeout, context=ep.ssl_context(),
                                               blocksize=CHUNK)
        return http.client.HTTPConnection(host, timeout=self.timeout, blocksize=CHUNK)

    def _blocking_request(self, ep: Endpoint, method: str, url_path: str, headers: dict[str, str],
                          body: bytes | BinaryIO | None, handle_body: BodyHandler | None,
                          cancel: threading.Event) -> Response:
        scheme = "http" if ep.host in self._plain_http_hosts else ep.scheme
        host = ep.host
        headers = dict(headers)
        for _ in range(MAX_REDIRECTS + 1):
            conn = self._connection(ep, scheme, host)
            if body is not None and hasattr(body, "seek"):
                body.seek(0)  # a retried or redirected upload sends the whole body again
            try:
                try:
                    conn.request(method, url_path, body=body, headers=headers)
                    resp = conn.getresponse()
                except ssl.SSLError:
                    if not (ep.insecure and scheme == "https" and host == ep.host):
                        raise
                    with self._lock:
                        self._plain_http_hosts.add(ep.host)
                    scheme = "http"
                    continue
                url = f"{scheme}://{host}{url_path}"
                if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
                    target = urllib.parse.urljoin(url, resp.getheader("Location", ""))
                    parts = urllib.parse.urlsplit(target)
                    if parts.scheme not in ("http", "https"):
                        raise RegistryError(f"{url} redirected to unsupported {target!r}")
                    if parts.netloc != host:
                        headers.pop("Authorization", None)  # never leak credentials to storage hosts
                    scheme, host = parts.scheme, parts.netloc
                    url_path = parts.path + (f"?{parts.query}" if parts.query else "")
                    if resp.status == 303:
                        method, body = "GET", None
                    continue
                resp_headers = {k.lower(): v for k, v in resp.getheaders()}
                if 200 <= resp.status < 300 and handle_body is not None and method != "HEAD":
                    result = handle_body(resp, cancel)
                else:
                    result = resp.read(MAX_ERROR_BODY) if method != "HEAD" else b""
                return Response(resp.status, resp.reason, resp_headers, result, url)
            finally:
                conn.close()
        raise RegistryError(f"too many redirects for {ep}{url_path}")


def transport_error(exc: BaseException, host: str) -> str:
    """What went wrong talking to ``host``, in words (no errno numbers, no raw protocol bytes)."""
    import socket

    if isinstance(exc, socket.gaierror):
        return f"failed to resolve host {host}: {(exc.strerror or str(exc)).lower()}"
    if isinstance(exc, ConnectionRefusedError):
        return f"failed to connect to {host}: connection refused"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS handshake with {host} failed: certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with {host} failed: {exc.reason or exc.strerror or 'protocol error'}"
    if isinstance(exc, http.client.BadStatusLine | http.client.LineTooLong | http.client.IncompleteRead):
        return f"{host} did not answer with HTTP/1.1 (is it a registry, and on this port?)"
    if isinstance(exc, http.client.HTTPException):
        return f"{host} broke the HTTP exchange ({type(exc).__name__.lower()})"
    if isinstance(exc, TimeoutError):
        return f"{host} did not answer in time"
    if isinstance(exc, OSError):
        detail = (exc.strerror or str(exc)).lower()
        return f"failed to talk to {host}: {detail}"
    return str(exc)


def _read_limited(limit: int) -> BodyHandler:
    def handle(resp: http.client.HTTPResponse, cancel: threading.Event) -> bytes:
        data = resp.read(limit + 1)
        if len(data) > limit:
            raise RegistryError(f"response from {resp.geturl() or 'registry'} is larger than {limit} bytes")
        return data
    return handle
