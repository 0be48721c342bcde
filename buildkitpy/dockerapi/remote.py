"""Remote build contexts (``POST /build?remote=…``), as the Engine detects them: a git repository
(``git://``, ``git@``, ``github.com/``, or an http(s) URL ending in ``.git``, with ``#ref:subdir``),
or an http(s) URL serving a tar archive (any compression) or a plain-text Dockerfile.

Fetching goes through our own solver (an LLB git or http source exported with the local exporter
over our Control API), so the git and HTTP handling, their limits and errors are the sources' own;
a downloaded archive is unpacked with the same checks as an uploaded one.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import anyio

from buildkitpy.dockerapi.contexttar import ContextError, extract
from buildkitpy.dockerapi.http import HTTPError

_GIT_SUFFIX = re.compile(r"\.git(?:#.+)?$")
_ARCHIVE_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")
# A downloaded Dockerfile larger than this is not a Dockerfile.
MAX_REMOTE_DOCKERFILE = 16 << 20


def is_url(remote: str) -> bool:
    return remote.startswith(("http://", "https://"))


def is_git_url(remote: str) -> bool:
    if is_url(remote) and _GIT_SUFFIX.search(remote):
        return True
    return remote.startswith(("git://", "github.com/", "git@"))


def split_git_fragment(remote: str) -> tuple[str, str, str]:
    """``url#ref:subdir`` → (url, ref, subdir)."""
    url, _, fragment = remote.partition("#")
    ref, _, subdir = fragment.partition(":")
    if url.startswith("github.com/"):
        url = "https://" + url
    return url, ref, subdir


async def fetch(control: Any, remote: str, dockerfile: str, dest: Path, workdir: Path) -> None:
    """Put the context named by ``remote`` into ``dest`` (an empty directory)."""
    from buildkitpy import llb

    if remote.startswith("-"):
        raise HTTPError(400, f"invalid remote context {remote!r}")
    if is_git_url(remote):
        url, ref, subdir = split_git_fragment(remote)
        if ".." in subdir.split("/"):
            raise HTTPError(400, f"invalid git context {remote!r}: the subdirectory must stay in the "
                                 "repository")
        try:
            state = llb.git(url, ref, subdir=subdir or None)
        except Exception as exc:  # noqa: BLE001 - the LLB builder's own validation
            raise HTTPError(400, f"invalid git context {remote!r}: {exc}") from None
        await _export(control, state, dest, f"unable to prepare context: failed to fetch {remote}")
        return
    if is_url(remote):
        download = workdir / "remote"
        download.mkdir()
        state = llb.http(remote, filename="context")
        await _export(control, state, download, f"unable to prepare context: failed to download {remote}")
        await anyio.to_thread.run_sync(_unpack_download, download / "context", dockerfile, dest)
        return
    raise HTTPError(400, f"remoteURL ({remote}) could not be recognized as URL")


async def _export(control: Any, state: Any, dest: Path, what: str) -> None:
    from buildkitpy.client.options import ExportEntry
    from buildkitpy.client.rpc_errors import BuildkitError
    from buildkitpy.client.solve import SolveOpt, solve

    opt = SolveOpt(exports=[ExportEntry(type="local", attrs={}, output_dir=dest)], registry_auth=False)
    try:
        await solve(control, opt, definition=state.marshal())
    except BuildkitError as exc:
        raise HTTPError(400, f"{what}: {exc.message}") from None


def _unpack_download(path: Path, dockerfile: str, dest: Path) -> None:
    """A downloaded tar becomes the context; anything else is taken as the Dockerfile (text only)."""
    with open(path, "rb") as f:
        head = f.read(512)
    is_tar = len(head) >= 262 and head[257:262] == b"ustar"
    if is_tar or any(head.startswith(m) for m in _ARCHIVE_MAGIC):
        extract(path, dest)
        return
    if path.stat().st_size > MAX_REMOTE_DOCKERFILE:
        raise ContextError(f"the remote context is neither a tar archive nor a Dockerfile (larger than "
                           f"{MAX_REMOTE_DOCKERFILE} bytes)")
    data = path.read_bytes()
    if b"\0" in data:
        raise ContextError("unable to prepare context: the remote content is neither a tar archive nor a "
                           "text Dockerfile")
    name = Path(dockerfile.lstrip("/") or "Dockerfile")
    if ".." in name.parts:
        raise ContextError(f"the Dockerfile ({dockerfile}) must be within the build context")
    target = dest / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, target)
