"""The ``http://`` and ``https://`` sources: one downloaded file in an otherwise empty snapshot.

Attributes (BuildKit's ``solver/pb/attr.go``): ``http.checksum`` (expected digest), ``http.filename``
(name of the file; else the response's Content-Disposition filename, else the URL's last path
segment, else ``download``), ``http.perm`` (mode, default 0600), ``http.uid``/``http.gid``,
``http.header.<name>`` (only Accept and User-Agent are sent, like BuildKit), and
``http.authheadersecret`` (a session secret holding the Authorization header; without it the
optional secrets ``HTTP_AUTH_HEADER_<host>`` and ``HTTP_AUTH_TOKEN_<host>`` are tried).

Cache key: the content's checksum (with filename, mode and owner), so it is only known after a
download, and ``resolve`` does the network part before the solver looks the key up. A pinned
``http.checksum`` is the key without any I/O. Otherwise downloads that came with an ETag are
remembered (``netsource.SourceRecords``: ETag, checksum, Last-Modified, snapshot) and revalidated
with ``If-None-Match`` (a HEAD first, then a conditional GET): an unchanged file is not downloaded
again and keeps its key, so everything built on it hits the cache.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import threading
import unicodedata
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from email.utils import parsedate_to_datetime
from posixpath import basename
from typing import Any
from urllib.parse import urlsplit

from buildkitpy import __version__
from buildkitpy.errors import InvalidArgument, NotFound, SolveError
from buildkitpy.snapshot.api import ImmutableSnapshot
from buildkitpy.solver.asyncutil import blocking
from buildkitpy.solver.cachekey import CacheMap, digest_json, go_digest, go_marshal, sha256_text
from buildkitpy.solver.loader import Vertex
from buildkitpy.solver.ops.base import OpContext
from buildkitpy.solver.ops.netsource import KeyedLocks, check_stop, interruptible, session_secret
from buildkitpy.solver.ops.source import register_source

ATTR_CHECKSUM = "http.checksum"
ATTR_FILENAME = "http.filename"
ATTR_PERM = "http.perm"
ATTR_UID = "http.uid"
ATTR_GID = "http.gid"
ATTR_AUTH_HEADER_SECRET = "http.authheadersecret"
ATTR_HEADER_PREFIX = "http.header."
SENT_USER_HEADERS = ("Accept", "User-Agent")
USER_AGENT = f"buildkitpy/{__version__}"
RECORD_KIND = "http"
TIMEOUT = 60.0  # seconds without progress on a connection
CHUNK = 1 << 20
DIGEST_ALGORITHMS = {"sha256": 64, "sha384": 96, "sha512": 128}

_locks = KeyedLocks()


def _go_int(value: str, attr: str, url: str) -> int:
    """An integer the way Go's ``strconv.ParseInt(v, 0, 64)`` reads it (``0644`` is octal)."""
    text = value.strip().replace("_", "")
    sign = -1 if text.startswith("-") else 1
    body = text.lstrip("+-")
    try:
        if len(body) > 1 and body[0] == "0" and body[1].isdigit():
            return sign * int(body, 8)
        return sign * int(body, 0)
    except ValueError:
        raise InvalidArgument(f"http source {url}: invalid {attr} {value!r}: not an integer") from None


def _parse_digest(value: str, url: str) -> str:
    algo, sep, hexpart = value.partition(":")
    want = DIGEST_ALGORITHMS.get(algo)
    if not sep or want is None or len(hexpart) != want or any(c not in "0123456789abcdef" for c in hexpart):
        raise InvalidArgument(f"http source {url}: invalid {ATTR_CHECKSUM} {value!r} (want "
                              f"sha256:<64 hex digits>, or sha384/sha512)")
    return value


def safe_file_name(name: str) -> str:
    """The base name of ``name``, or ``download`` if that is empty, ``.``/``..`` or has control
    characters (BuildKit's pathutil.SafeFileName)."""
    name = basename(name.strip().rstrip("/")) if name.strip() not in ("/", "") else ""
    if name in ("", ".", "..") or any(c == "\0" or unicodedata.category(c) == "Cc" for c in name):
        return "download"
    return name


def file_name(url: str, manual: str, disposition: str | None) -> str:
    if manual:
        return safe_file_name(manual)
    if disposition:
        msg = Message()
        msg["content-disposition"] = disposition
        fname = msg.get_param("filename", header="content-disposition")
        if isinstance(fname, tuple):  # RFC 2231 form
            fname = fname[2]
        if isinstance(fname, str) and fname and not fname.endswith("/"):
            return safe_file_name(fname)
    path = urlsplit(url).path
    base = basename(path.rstrip("/")) if path.strip("/") else ""
    return safe_file_name(base)


@dataclass
class Resolved:
    digest: str
    filename: str
    last_modified: str = ""  # the Last-Modified header as sent, "" if none
    snapshot_id: str = ""  # a snapshot already holding the file, if one is known


@dataclass
class Download:
    digest: str
    filename: str
    last_modified: str
    etag: str
    snapshot_id: str


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects, but never carries the Authorization header to another host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urlsplit(newurl).netloc != urlsplit(req.full_url).netloc:
            new.remove_header("Authorization")
        return new


_opener = urllib.request.build_opener(_Redirects)


def _etag_value(v: str) -> str:
    return v[2:] if v.startswith("W/") else v


def _mtime(last_modified: str) -> float:
    if last_modified:
        try:
            return parsedate_to_datetime(last_modified).timestamp()
        except (TypeError, ValueError, IndexError):
            pass
    return 0.0


def _http_time(last_modified: str) -> str:
    """``Last-Modified`` as Go's ``http.ParseTime`` then ``Format(http.TimeFormat)`` gives it
    ("" when it does not parse)."""
    try:
        when = parsedate_to_datetime(last_modified)
    except (TypeError, ValueError, IndexError):
        return ""
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.astimezone(datetime.UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")


def _canonical_header(name: str) -> str:
    return "-".join(p[:1].upper() + p[1:].lower() for p in name.split("-"))


@register_source("http")
@register_source("https")
class HTTPSource:
    def __init__(self, vertex: Vertex) -> None:
        self.vertex = vertex
        self.url = vertex.op.source.identifier
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidArgument(f"invalid http source url {self.url!r}")
        attrs = vertex.op.source.attrs
        self.checksum = _parse_digest(attrs[ATTR_CHECKSUM], self.url) if attrs.get(ATTR_CHECKSUM) else ""
        self.filename = attrs.get(ATTR_FILENAME, "")
        self.perm = _go_int(attrs[ATTR_PERM], ATTR_PERM, self.url) if attrs.get(ATTR_PERM) else 0
        self.uid = _go_int(attrs[ATTR_UID], ATTR_UID, self.url) if attrs.get(ATTR_UID) else 0
        self.gid = _go_int(attrs[ATTR_GID], ATTR_GID, self.url) if attrs.get(ATTR_GID) else 0
        if not 0 <= self.perm <= 0o7777:
            raise InvalidArgument(f"http source {self.url}: {ATTR_PERM} {attrs[ATTR_PERM]!r} is not a "
                                  "file mode")
        if self.uid < 0 or self.gid < 0:
            raise InvalidArgument(f"http source {self.url}: {ATTR_UID}/{ATTR_GID} must not be negative")
        self.auth_header_secret = attrs.get(ATTR_AUTH_HEADER_SECRET, "")
        headers: dict[str, str] = {}
        for key, value in attrs.items():
            if key.startswith(ATTR_HEADER_PREFIX):
                name = _canonical_header(key[len(ATTR_HEADER_PREFIX):])
                if name in SENT_USER_HEADERS:
                    headers[name] = value
        self.headers = sorted(headers.items())
        self.resolved: Resolved | None = None

    # -- keys ------------------------------------------------------------------------------------

    def url_key(self) -> str:
        """Where this URL's downloads are remembered (URL, filename and every output-shaping attr)."""
        return digest_json({"url": self.url, "filename": self.filename, "perm": self.perm, "uid": self.uid,
                            "gid": self.gid, "auth": self.auth_header_secret, "headers": self.headers})

    def cache_map(self, ctx: OpContext) -> CacheMap:
        r = self.resolved
        if r is None:  # resolve() not run (not through the scheduler): never trust a key
            return CacheMap(digest=sha256_text("buildkit.source.v0", "http", self.url_key()),
                            ephemeral=True, always_run=True)
        # BuildKit's formatCacheKey (json.Marshal of this struct) under the source op's prefix.
        key: dict[str, object] = {"Filename": r.filename, "Perm": self.perm, "UID": self.uid, "GID": self.gid,
                                  "Checksum": r.digest}
        if r.last_modified and _http_time(r.last_modified):
            key["LastModTime"] = _http_time(r.last_modified)
        if self.auth_header_secret:
            key["AuthHeaderSecret"] = self.auth_header_secret
        if self.headers:
            key["Header"] = [{"Name": name, "Value": value} for name, value in self.headers]
        return CacheMap(digest=go_digest("buildkit.source.v0:" + go_digest(go_marshal(key))))

    # -- resolve: find the content's checksum ----------------------------------------------------

    async def resolve(self, ctx: OpContext) -> None:
        if self.checksum:  # pinned: the key needs no I/O
            self.resolved = Resolved(self.checksum, file_name(self.url, self.filename, None))
            return
        records = ctx.worker.source_records
        url_key = self.url_key()
        async with _locks((str(ctx.worker.root), url_key)):
            known: dict[str, dict[str, Any]] = {}
            for sid, meta in await blocking(records.find, RECORD_KIND, url_key):
                if meta.get("etag") and meta.get("digest") and meta["etag"] not in known:
                    snap = await blocking(records.get_snapshot, ctx.worker.snapshots, RECORD_KIND,
                                          url_key, sid)
                    if snap is not None:
                        await blocking(snap.release)
                        known[meta["etag"]] = {**meta, "snapshot_id": sid}
            headers = await self._request_headers(ctx)
            download = await interruptible(lambda stop: self._revalidate_or_download(
                ctx, headers, known, url_key, stop))
            self.resolved = Resolved(download.digest, download.filename, download.last_modified,
                                     download.snapshot_id)

    async def _request_headers(self, ctx: OpContext) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT, **dict(self.headers)}
        host = urlsplit(self.url).hostname or ""
        if self.auth_header_secret:
            value = await session_secret(ctx.worker, ctx.job.session_ids, self.auth_header_secret)
            if value is None:
                raise NotFound(f"failed to retrieve HTTP auth secret {self.auth_header_secret}: not found in "
                               "the build's sessions")
            headers["Authorization"] = value.decode()
            return headers
        value = await session_secret(ctx.worker, ctx.job.session_ids, "HTTP_AUTH_HEADER_" + host)
        if value is not None:
            headers["Authorization"] = value.decode()
        token = await session_secret(ctx.worker, ctx.job.session_ids, "HTTP_AUTH_TOKEN_" + host)
        if token is not None:
            headers["Authorization"] = "Bearer " + token.decode()
        return headers

    def _open(self, method: str, headers: dict[str, str]) -> Any:
        """The response (also for 304 and error statuses) or a SolveError naming the URL."""
        req = urllib.request.Request(self.url, method=method, headers=headers)
        try:
            return _opener.open(req, timeout=TIMEOUT)
        except urllib.error.HTTPError as resp:
            return resp
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SolveError(f"failed to download {self.url}: {reason}") from exc

    def _revalidate_or_download(self, ctx: OpContext, headers: dict[str, str],
                                known: dict[str, dict[str, Any]], url_key: str,
                                stop: threading.Event) -> Download:
        only_etag = next(iter(known)) if len(known) == 1 else ""
        if known:
            headers = {**headers, "If-None-Match": ", ".join(known)}
            try:  # some servers mishandle If-None-Match on GET: compare the ETag of a HEAD first
                with self._open("HEAD", {**headers, "Accept-Encoding": "gzip"}) as resp:
                    hit = self._match(resp, known, only_etag)
            except SolveError:  # HEAD failing is no verdict: the GET decides
                hit = None
            if hit is not None:
                return hit
        check_stop(stop)
        with self._open("GET", headers) as resp:
            status = resp.status
            if status == 304:
                hit = self._match(resp, known, only_etag)
                if hit is None:
                    raise SolveError(f"invalid not-modified ETag from {self.url}: "
                                     f"{_etag_value(resp.headers.get('ETag', ''))!r}")
                return hit
            if status < 200 or status >= 400:
                raise SolveError(f"invalid response status {status} for {self.url}")
            return self._save(ctx, resp, url_key, stop)

    def _match(self, resp: Any, known: dict[str, dict[str, Any]], only_etag: str) -> Download | None:
        if resp.status not in (200, 304):
            return None
        etag = _etag_value(resp.headers.get("ETag", "") or "")
        if not etag and only_etag and resp.status == 304:
            etag = only_etag
        meta = known.get(etag)
        if meta is None:
            return None
        return Download(meta["digest"], file_name(self.url, self.filename,
                                                  resp.headers.get("Content-Disposition")),
                        meta.get("modtime", ""), etag, meta["snapshot_id"])

    def _save(self, ctx: OpContext, resp: Any, url_key: str, stop: threading.Event) -> Download:
        """Stream the body into a new snapshot; commit it and remember it (by ETag) for revalidation.
        Returns only the snapshot's id: the handle is released here, so a result lost to
        cancellation leaks nothing."""
        name = file_name(self.url, self.filename, resp.headers.get("Content-Disposition"))
        last_modified = resp.headers.get("Last-Modified", "") or ""
        etag = _etag_value(resp.headers.get("ETag", "") or "")
        algo = self.checksum.partition(":")[0] if self.checksum else "sha256"
        h = hashlib.new(algo)
        snapshots = ctx.worker.snapshots
        mutable = snapshots.new_mutable(None, f"http url {self.url}")
        try:
            with mutable.mount() as root:
                path = os.path.join(root, name)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as f:
                    while True:
                        check_stop(stop)
                        chunk = resp.read1(CHUNK)
                        if not chunk:
                            break
                        h.update(chunk)
                        f.write(chunk)
                os.chmod(path, (self.perm & 0o777) or 0o600)  # permission bits only, as BuildKit
                if self.uid or self.gid:
                    os.chown(path, self.uid, self.gid)
                mtime = _mtime(last_modified)
                os.utime(path, (mtime, mtime))
            snap = mutable.commit()
        except BaseException:
            mutable.release()
            raise
        try:
            digest = f"{algo}:{h.hexdigest()}"
            if etag:
                ctx.worker.source_records.put(RECORD_KIND, url_key, snap.id,
                                            {"etag": etag, "digest": digest, "modtime": last_modified})
            return Download(digest, name, last_modified, etag, snap.id)
        finally:
            snap.release()

    # -- execute: hand out the snapshot ----------------------------------------------------------

    async def execute(self, ctx: OpContext,
                      inputs: list[ImmutableSnapshot | None]) -> list[ImmutableSnapshot]:
        r = self.resolved
        if r is not None and r.snapshot_id:
            try:
                return [await blocking(ctx.worker.snapshots.get, r.snapshot_id)]
            except KeyError:  # pruned since resolve: download again
                pass
        headers = await self._request_headers(ctx)
        download = await interruptible(lambda stop: self._download(ctx, headers, stop))
        expected = r.digest if r is not None else self.checksum
        if expected and download.digest != expected:
            raise SolveError(f"digest mismatch {download.digest}: {expected}")
        try:
            return [await blocking(ctx.worker.snapshots.get, download.snapshot_id)]
        except KeyError:
            raise SolveError(f"http source {self.url}: the downloaded snapshot disappeared (pruned "
                             "during the build); retry") from None

    def _download(self, ctx: OpContext, headers: dict[str, str], stop: threading.Event) -> Download:
        with self._open("GET", headers) as resp:
            if resp.status < 200 or resp.status >= 400:
                raise SolveError(f"invalid response status {resp.status} for {self.url}")
            return self._save(ctx, resp, self.url_key(), stop)

