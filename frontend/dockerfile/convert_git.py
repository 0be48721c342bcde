"""Git references in ``ADD`` sources, with the Dockerfile frontend's rules (BuildKit's ``dfgitutil``).

A source is a git reference when it is ``git://…``, ``ssh://…``, ``user@host:path`` or an
``http(s)://`` URL whose path ends in ``.git``; ``#ref:subdir`` fragments and a query
(``?ref=``, ``tag=``, ``branch=``, ``subdir=``, ``checksum=``, ``keep-git-dir``, ``submodules``)
refine it. ``github.com/…`` is a git reference only for build contexts, never for ``ADD``.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from buildkitpy import llb
from buildkitpy.gocompat import parse_bool

from .errors import DockerfileError

_PROTO = re.compile(r"^[a-zA-Z0-9]+://")
_SCP = re.compile(r"^([a-zA-Z0-9-_]+)@([a-zA-Z0-9-.]+):(.*?)(?:\?(.*?))?(?:#(.*))?$")
_PROTOCOLS = ("http", "https", "ssh", "git")


class GitRefError(DockerfileError):
    """A source that is a git reference but a malformed one."""


@dataclass
class GitRef:
    remote: str
    ref: str = ""
    subdir: str = ""
    checksum: str = ""
    keep_git_dir: bool | None = None
    submodules: bool | None = None
    fetch_by_commit: bool = False
    indistinguishable_from_local: bool = False


def parse_git_ref(src: str) -> GitRef | None:
    """The git reference ``src`` names, or None when it is no git reference (a local path or a
    plain URL). Raises :class:`GitRefError` for a git reference with a bad query."""
    if src.startswith(("./", "../")):
        return None
    if src.startswith("github.com/"):
        remote, fragment, query = _split_url("https://" + src)
        ref = GitRef(remote.removeprefix("https://"), indistinguishable_from_local=True)
    else:
        proto = _PROTO.match(src)
        if proto:
            scheme = proto.group()[:-3].lower()
            if scheme not in _PROTOCOLS:
                return None
            remote, fragment, query = _split_url(src)
            if scheme in ("http", "https") and not urlsplit(src).path.endswith(".git"):
                return None
        else:
            m = _SCP.match(src)
            if m is None:
                return None
            remote, query, fragment = f"{m[1]}@{m[2]}:{m[3]}", m[4] or "", m[5] or ""
        ref = GitRef(remote)
    if fragment:
        ref.ref, _, subdir = fragment.partition(":")
        ref.subdir = posixpath.normpath(posixpath.join("/", subdir)).lstrip("/")
    _load_query(ref, query)
    return ref


def _split_url(src: str) -> tuple[str, str, str]:
    u = urlsplit(src)
    remote = f"{u.scheme.lower()}://{u.netloc}{u.path}"
    return remote, u.fragment, u.query


def _flag(key: str, values: list[str]) -> bool:
    if not values or values[0] == "":
        return True
    try:
        return parse_bool(values[0])
    except ValueError:
        raise GitRefError(f"invalid {key} value: {values[0]!r}") from None


def _load_query(ref: GitRef, query: str) -> None:
    if not query:
        return
    parsed = parse_qs(query, keep_blank_values=True, separator="&")
    tag = branch = ""
    for key, values in parsed.items():
        if len(values) > 1:
            raise GitRefError(f"query {key!r} has multiple values")
        if values[0] == "" and key not in ("submodules", "keep-git-dir", "fetch-by-commit"):
            raise GitRefError(f"query {key!r} has no value")
        value = values[0]
        if key == "ref":
            if ref.ref and ref.ref != value:
                raise GitRefError(f"ref conflicts: {ref.ref!r} vs {value!r}")
            ref.ref = value
        elif key == "tag":
            tag = value
        elif key == "branch":
            branch = value
        elif key == "subdir":
            if ref.subdir and ref.subdir != value:
                raise GitRefError(f"subdir conflicts: {ref.subdir!r} vs {value!r}")
            ref.subdir = value
        elif key in ("checksum", "commit"):
            ref.checksum = value
        elif key == "keep-git-dir":
            ref.keep_git_dir = _flag(key, values)
        elif key == "submodules":
            ref.submodules = _flag(key, values)
        elif key == "fetch-by-commit":
            ref.fetch_by_commit = _flag(key, values)
        elif key == "mtime":
            if value not in ("checkout", "commit"):
                raise GitRefError(f'invalid mtime value: {value!r} (must be "checkout" or "commit")')
        else:
            raise GitRefError(f"unexpected query {key!r}")
    if tag:
        tag = tag if tag.startswith("refs/tags/") else "refs/tags/" + tag
        if ref.ref and ref.ref != tag:
            raise GitRefError(f"ref conflicts: {ref.ref!r} vs {tag!r}")
        ref.ref = tag
    if branch:
        if tag:
            raise GitRefError("branch conflicts with tag")
        branch = branch if branch.startswith("refs/heads/") else "refs/heads/" + branch
        if ref.ref and ref.ref != branch:
            raise GitRefError(f"ref conflicts: {ref.ref!r} vs {branch!r}")
        ref.ref = branch


def checkout(ref: GitRef, spec: str, *, keep_git_dir: bool = False) -> llb.State:
    """The checkout a git build context names (the main one or a named one), as BuildKit's
    ``DetectGitContext`` makes it; ``spec`` is the URL as given (it names the progress line)."""
    if ref.fetch_by_commit:
        raise GitRefError(f"fetch-by-commit git contexts are not supported yet ({spec})")
    return llb.git(ref.remote, ref.ref, keep_git_dir=keep_git_dir or ref.keep_git_dir is True,
                   checksum=ref.checksum or None, subdir=ref.subdir or None,
                   skip_submodules=ref.submodules is False, custom_name=f"[internal] load git source {spec}")

