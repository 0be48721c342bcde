"""A build context named by URL: ``context=<git or http(s) URL>`` in the frontend options.

``docker buildx build https://host/repo.git#ref:dir`` and ``buildctl build --opt context=<URL>``
send no ``context`` directory; the context is a git checkout or a download, and unless the client
also sends a ``dockerfile`` directory under ``dockerfilekey``, the Dockerfile is read from it. As
BuildKit's dockerui: a git URL is checked out (the Dockerfile is ``filename`` in the checkout); an
http(s) URL is downloaded as a file named ``context``, unpacked when it is an archive (gzip, bzip2,
xz or tar; the Dockerfile is ``filename`` inside), else the file itself is the Dockerfile and the
context. No ``.dockerignore`` applies to a remote context. ``contextsubdir`` narrows the context
(not where the Dockerfile is read).
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass

from buildkitpy import llb
from buildkitpy.errors import InvalidArgument
from buildkitpy.gateway.client import FrontendClient

from .convert_git import GitRefError, checkout, parse_git_ref

HTTP_FILENAME = "context"  # the name BuildKit gives a downloaded context
KEEP_GIT_DIR_ARG = "build-arg:BUILDKIT_CONTEXT_KEEP_GIT_DIR"
_ARCHIVE_MAGIC = (b"BZh", b"\x1f\x8b\x08", b"\xfd7zXZ\x00")


@dataclass
class RemoteContext:
    context: llb.State  # the build context
    dockerfile: llb.State  # where the Dockerfile is read from (unless a local one is forced)
    filename: str  # the Dockerfile's name in ``dockerfile``


def context_spec(opts: dict[str, str]) -> str:
    """The option holding a remote context's URL (``contextkey`` renames it), or ``""``."""
    return opts.get(opts.get("contextkey", "context"), "")


def git_state(spec: str, opts: dict[str, str]) -> llb.State | None:
    """The checkout a git URL names (None when ``spec`` is no git reference)."""
    keep = opts.get(KEEP_GIT_DIR_ARG, "").lower() in ("1", "t", "true")
    try:
        ref = parse_git_ref(spec)
        return None if ref is None else checkout(ref, spec, keep_git_dir=keep)
    except GitRefError as e:
        raise InvalidArgument(f"invalid git context {spec}: {e}") from None


def is_archive(header: bytes) -> bool:
    """BuildKit's test: compressed by gzip, bzip2 or xz, or a tar whose first header reads."""
    if header.startswith(_ARCHIVE_MAGIC):
        return True
    try:
        with tarfile.open(fileobj=io.BytesIO(header), mode="r:") as tar:
            return tar.next() is not None
    except (tarfile.TarError, EOFError, OSError):
        return False


async def detect(client: FrontendClient, opts: dict[str, str], filename: str) -> RemoteContext | None:
    """The remote context the options name, or None for the client's ``context`` directory."""
    spec = context_spec(opts)
    if not spec:
        return None
    state = git_state(spec, opts)
    if state is not None:
        remote = RemoteContext(state, state, filename)
    elif spec.startswith(("http://", "https://")):
        remote = await _http(client, spec, filename)
    else:
        return None
    sub = opts.get("contextsubdir")
    if sub:  # BuildKit's scopeToSubDir
        remote.context = llb.scratch().file(llb.copy(remote.context, sub, "/", copy_dir_contents=True))
    return remote


async def _http(client: FrontendClient, url: str, filename: str) -> RemoteContext:
    download = llb.http(url, filename=HTTP_FILENAME, custom_name="[internal] load remote build context")
    result = await client.solve(definition=llb.marshal(download, caps=client.llb_caps))
    if result.ref is None:
        raise InvalidArgument(f"failed to resolve http context {url}")
    header = await client.read_file(result.ref.id, HTTP_FILENAME, 0, 1024)
    if is_archive(header):
        unpacked = llb.scratch().file(llb.copy(download, "/" + HTTP_FILENAME, "/", attempt_unpack=True))
        return RemoteContext(unpacked, unpacked, filename)
    return RemoteContext(download, download, HTTP_FILENAME)
