"""Source ops: ``image``, ``local``, ``http``, ``git`` (client/llb ``source.go``)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Literal, Unpack
from urllib.parse import urlsplit

from buildkitpy.api import ops_pb2

from . import caps, pathutil
from .constraints import Constraints, OpOptions, marshal_constraints
from .errors import LLBError
from .reference import normalize_image_ref
from .state import State
from .vertex import MarshalContext, MarshalledOp, Output, Vertex

ResolveMode = Literal["default", "pull", "local"]


class SourceOp(Vertex):
    def __init__(self, identifier: str, attrs: Mapping[str, str], constraints: Constraints,
                 local_unique_id: str | None = None) -> None:
        if not identifier:
            raise LLBError("source identifier can't be empty")
        self.identifier = identifier
        self.attrs = dict(attrs)
        self.constraints = constraints
        self.local_unique_id = local_unique_id
        self.output = Output(self, 0, platform=constraints.platform)

    def inputs(self) -> list[Output]:
        return []

    def _marshal(self, ctx: MarshalContext) -> MarshalledOp:
        attrs, constraints = dict(self.attrs), self.constraints
        if self.identifier.startswith("local://") and "local.session" not in attrs:
            attrs["local.unique"] = self.local_unique_id or ctx.local_unique_id
            constraints = constraints.with_cap(caps.SOURCE_LOCAL_UNIQUE)
        op, md = marshal_constraints(ctx.constraints, constraints, ctx.default_platform)
        op.source.CopyFrom(ops_pb2.SourceOp(identifier=self.identifier, attrs=attrs))
        if not self.identifier.startswith(("docker-image://", "oci-layout://")):
            op.ClearField("platform")
        return MarshalledOp.of(op, md, constraints.locations)


def _source_state(identifier: str, attrs: Mapping[str, str], constraints: Constraints,
                  local_unique_id: str | None = None) -> State:
    return State.from_output(SourceOp(identifier, attrs, constraints, local_unique_id).output)


def image(ref: str, *, resolve_mode: ResolveMode | None = None, record_type: str | None = None,
          layer_limit: int | None = None, checksum: str | None = None,
          **options: Unpack[OpOptions]) -> State:
    """A registry image; ``ref`` is normalised (``busybox`` → ``docker.io/library/busybox:latest``).
    Pass ``platform=`` to pick the image variant."""
    ref = normalize_image_ref(ref)
    c = Constraints.from_options(options).with_cap(caps.SOURCE_IMAGE)
    attrs: dict[str, str] = {}
    if resolve_mode not in (None, "default"):
        if resolve_mode not in ("pull", "local"):
            raise LLBError(f"invalid resolve mode {resolve_mode!r}: expected default, pull or local")
        attrs["image.resolvemode"] = resolve_mode
        if resolve_mode == "pull":
            c = c.with_cap(caps.SOURCE_IMAGE_RESOLVE_MODE)
    if record_type:
        attrs["image.recordtype"] = record_type
    if layer_limit is not None:
        attrs["image.layerlimit"] = str(layer_limit)
        c = c.with_cap(caps.SOURCE_IMAGE_LAYER_LIMIT)
    if checksum:
        attrs["image.checksum"] = checksum
        c = c.with_cap(caps.SOURCE_IMAGE_CHECKSUM)
    return _source_state("docker-image://" + ref, attrs, c)


def _json_list(values: Sequence[str] | None) -> str:
    """Go ``json.Marshal`` of a string list (compact, HTML-safe escapes)."""
    if not values:
        return ""
    out = json.dumps(list(values), separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        out = out.replace(char, escaped)
    return out


def local(name: str, *, session_id: str | None = None, include_patterns: Sequence[str] | None = None,
          exclude_patterns: Sequence[str] | None = None, follow_paths: Sequence[str] | None = None,
          shared_key_hint: str | None = None, differ: Literal["none", "metadata"] | None = None,
          differ_required: bool = False, unique: str | None = None,
          **options: Unpack[OpOptions]) -> State:
    """A directory the client shares over the session (``--local name=dir``).

    Without ``session_id`` the source gets a ``local.unique`` attr: ``unique`` or the marshal call's
    ``local_unique_id``.
    """
    if not name:
        raise LLBError("local source name can't be empty")
    c = Constraints.from_options(options)
    attrs: dict[str, str] = {}
    for attr, value, cap in (
        ("local.session", session_id, caps.SOURCE_LOCAL_SESSION_ID),
        ("local.includepattern", _json_list(include_patterns), caps.SOURCE_LOCAL_INCLUDE_PATTERNS),
        ("local.followpaths", _json_list(follow_paths), caps.SOURCE_LOCAL_FOLLOW_PATHS),
        ("local.excludepatterns", _json_list(exclude_patterns), caps.SOURCE_LOCAL_EXCLUDE_PATTERNS),
        ("local.sharedkeyhint", shared_key_hint, caps.SOURCE_LOCAL_SHARED_KEY_HINT),
    ):
        if value:
            attrs[attr] = value
            c = c.with_cap(cap)
    if differ:
        if differ not in ("none", "metadata"):
            raise LLBError(f"invalid local differ {differ!r}: expected none or metadata")
        attrs["local.differ"] = differ
        if differ_required:
            c = c.with_cap(caps.SOURCE_LOCAL_DIFFER)
    return _source_state("local://" + name, attrs, c.with_cap(caps.SOURCE_LOCAL), unique)


def http(url: str, *, checksum: str | None = None, filename: str | None = None, chmod: int | None = None,
         chown: tuple[int, int] | None = None, auth_header_secret: str | None = None,
         headers: Mapping[str, str] | None = None, **options: Unpack[OpOptions]) -> State:
    """A file downloaded from ``url``; ``chmod`` keeps only the permission bits (``0o777``)."""
    if not url:
        raise LLBError("http source url can't be empty")
    c = Constraints.from_options(options)
    attrs: dict[str, str] = {}
    if checksum:
        attrs["http.checksum"] = checksum
        c = c.with_cap(caps.SOURCE_HTTP_CHECKSUM)
    if filename:
        attrs["http.filename"] = filename
    if chmod and chmod & 0o777:
        attrs["http.perm"] = "0" + format(chmod & 0o777, "o")
        c = c.with_cap(caps.SOURCE_HTTP_PERM)
    uid, gid = chown or (0, 0)
    if uid:
        attrs["http.uid"] = str(uid)
        c = c.with_cap(caps.SOURCE_HTTP_UIDGID)
    if gid:
        attrs["http.gid"] = str(gid)
        c = c.with_cap(caps.SOURCE_HTTP_UIDGID)
    if auth_header_secret:
        attrs["http.authheadersecret"] = auth_header_secret
        c = c.with_cap(caps.SOURCE_HTTP_AUTH)
    if headers is not None:
        for name, value in headers.items():
            if value:
                attrs["http.header." + name.lower()] = value
        c = c.with_cap(caps.SOURCE_HTTP_HEADER)
    return _source_state(url, attrs, c.with_cap(caps.SOURCE_HTTP))


_PROTO = re.compile(r"^[a-zA-Z0-9]+://")
_SCP_URL = re.compile(r"^(?:(?P<user>[^@/]+)@)?(?P<host>[^:/]+):(?!//)(?P<path>[^#]*)(?:#.*)?$")


def _parse_git_url(remote: str) -> tuple[str, str, str, str]:
    """(scheme, host, path, remote-without-fragment) like BuildKit's ``gitutil.ParseURL``."""
    proto = _PROTO.match(remote)
    if proto:
        scheme = proto.group()[:-3].lower()
        if scheme not in ("http", "https", "ssh", "git"):
            raise LLBError(f"invalid git remote {remote!r}: unsupported protocol {scheme}")
        u = urlsplit(remote)
        host = u.netloc.rpartition("@")[2]
        return scheme, host, u.path, remote.split("#", 1)[0].split("?", 1)[0]
    m = _SCP_URL.match(remote)
    if m:
        user = f"{m['user']}@" if m["user"] else ""
        return "ssh", m["host"], m["path"], f"{user}{m['host']}:{m['path']}"
    return "", "", "", ""


def git(remote: str, ref: str = "", *, keep_git_dir: bool = False, subdir: str | None = None,
        checksum: str | None = None, auth_token_secret: str = "GIT_AUTH_TOKEN",
        auth_header_secret: str = "GIT_AUTH_HEADER", known_ssh_hosts: str | None = None,
        mount_ssh_sock: str | None = None, skip_submodules: bool = False,
        **options: Unpack[OpOptions]) -> State:
    """A git checkout of ``ref`` (branch, tag or commit) of ``remote``, optionally only ``subdir``."""
    scheme, host, path, url = _parse_git_url(remote)
    if not scheme:  # unknown protocol: BuildKit assumes https
        scheme, host, path, url = _parse_git_url("https://" + remote)
    if subdir:
        subdir = pathutil.join("/", subdir).lstrip("/")
    identifier = host + pathutil.join("/", path)
    if ref or subdir:
        identifier += "#" + ref + (":" + subdir if subdir else "")
    c = Constraints.from_options(options)
    custom_auth = auth_token_secret != "GIT_AUTH_TOKEN" or auth_header_secret != "GIT_AUTH_HEADER"
    attrs: dict[str, str] = {}
    if keep_git_dir:
        attrs["git.keepgitdir"] = "true"
        c = c.with_cap(caps.SOURCE_GIT_KEEP_DIR)
    attrs["git.fullurl"] = url
    c = c.with_cap(caps.SOURCE_GIT_FULL_URL)
    if auth_token_secret:
        attrs["git.authtokensecret"] = auth_token_secret
    if auth_header_secret:
        attrs["git.authheadersecret"] = auth_header_secret
    if custom_auth:
        c = c.with_cap(caps.SOURCE_GIT_HTTP_AUTH)
    if scheme == "ssh":
        if known_ssh_hosts:
            attrs["git.knownsshhosts"] = known_ssh_hosts.rstrip("\n") + "\n"
        attrs["git.mountsshsock"] = mount_ssh_sock or "default"
        c = c.with_cap(caps.SOURCE_GIT_KNOWN_SSH_HOSTS, caps.SOURCE_GIT_MOUNT_SSH_SOCK)
    if checksum:
        attrs["git.checksum"] = checksum
        c = c.with_cap(caps.SOURCE_GIT_CHECKSUM)
    if skip_submodules:
        attrs["git.skipsubmodules"] = "true"
        c = c.with_cap(caps.SOURCE_GIT_SKIP_SUBMODULES)
    return _source_state("git://" + identifier, attrs, c.with_cap(caps.SOURCE_GIT))

