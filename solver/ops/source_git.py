"""The ``git://`` source: a checkout of a ref of a remote repository, through the ``git`` CLI.

Identifier: ``git://<host>/<path>[#<ref>[:<subdir>]]``; the ``git.fullurl`` attribute carries the
real remote (``https://``, ``http://``, ``git://``; anything without one of those schemes is taken
as ``https://``, like BuildKit, so ``file://`` and ``ext::`` remotes are never reached). The ref may
be a branch, a tag (annotated or not), a full commit sha, or empty for the remote's default branch.

Cache key: the commit (``git ls-remote`` in ``resolve``; a commit-sha ref needs no I/O) plus what
shapes the tree (kept ``.git`` and its ref, subdir, skipped submodules, mtime mode), not the remote:
the same commit from a mirror is the same result.

Each remote gets one shared bare repository under ``<worker root>/git/`` that fetches accumulate
in (shallow, ``--depth=1`` per ref). A checkout is ``git checkout`` of the commit into a new
snapshot, then ``git submodule update --init --recursive`` unless ``git.skipsubmodules``. With
``git.keepgitdir`` (and no subdir) the snapshot gets its own ``.git``, fetched from the shared repo
and pointed back at the real remote. A subdir must be a chain of real directories in the checkout:
``..`` components and symlinks are refused, so it never reaches outside the repository.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import anyio

from buildkitpy.errors import InvalidArgument, SolveError, Unimplemented
from buildkitpy.snapshot.api import ImmutableSnapshot
from buildkitpy.solver.asyncutil import blocking
from buildkitpy.solver.cachekey import CacheMap, go_digest, sha256_text
from buildkitpy.solver.loader import Vertex
from buildkitpy.solver.ops.base import OpContext
from buildkitpy.solver.ops.netsource import KeyedLocks, session_secret
from buildkitpy.solver.ops.source import register_source

ATTR_KEEP_GIT_DIR = "git.keepgitdir"
ATTR_FULL_URL = "git.fullurl"
ATTR_AUTH_HEADER_SECRET = "git.authheadersecret"
ATTR_AUTH_TOKEN_SECRET = "git.authtokensecret"
ATTR_CHECKSUM = "git.checksum"
ATTR_SKIP_SUBMODULES = "git.skipsubmodules"
ATTR_MTIME = "git.mtime"
ATTR_KNOWN_SSH_HOSTS = "git.knownsshhosts"
ATTR_MOUNT_SSH_SOCK = "git.mountsshsock"
# Attributes we do not implement: refusing them beats silently building something else.
UNSUPPORTED_ATTRS = ("git.fetchbycommit", "git.bundle", "git.checkoutbundle", "git.sig.pubkey",
                     "git.sig.rejectexpired", "git.sig.requiresignedtag", "git.sig.ignoresignedtag")
SUPPORTED_PROTOCOLS = ("http", "https", "git", "ssh")

_PROTO = re.compile(r"^([a-zA-Z0-9]+)://")
_SCP_LIKE = re.compile(r"^[^@/\s]+@[^:/\s]+:")
_DEFAULT_BRANCH = re.compile(r"refs/heads/(\S+)")
_HEX = re.compile(r"^[0-9a-fA-F]+$")

_remote_locks = KeyedLocks()


def is_commit_sha(s: str) -> bool:
    return len(s) in (40, 64) and all(c in "0123456789abcdef" for c in s)


def _is_git_transport(remote: str) -> bool:
    m = _PROTO.match(remote)
    if m:
        return m.group(1).lower() in SUPPORTED_PROTOCOLS
    return bool(_SCP_LIKE.match(remote))


@dataclass
class GitIdentifier:
    remote: str
    ref: str = ""
    subdir: str = ""


def parse_identifier(identifier: str) -> GitIdentifier:
    """``git://<remote>[#ref[:subdir]]`` like BuildKit's NewGitIdentifier (https:// if no transport)."""
    scheme, sep, rest = identifier.partition("://")
    if scheme != "git" or not sep or not rest:
        raise InvalidArgument(f"invalid git source identifier {identifier!r} (want git://<remote>#<ref>)")
    if not _is_git_transport(rest):
        rest = "https://" + rest
    remote, _, fragment = rest.partition("#")
    remote = remote.split("?", 1)[0] if _PROTO.match(remote) else remote
    ref, _, subdir = fragment.partition(":")
    return GitIdentifier(remote, ref, subdir)


def clean_subdir(subdir: str, identifier: str) -> str:
    """The subdir relative to the repository root; refuses ``..`` (it could only aim outside)."""
    parts = [p for p in subdir.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArgument(f"git source {identifier}: invalid subdir {subdir!r}: '..' would leave the "
                              "repository")
    return "/".join(parts)


def redact(remote: str) -> str:
    """The remote without credentials (user:password@ in the URL)."""
    parts = urlsplit(remote) if _PROTO.match(remote) else None
    if parts is None or "@" not in parts.netloc:
        return remote
    return parts._replace(netloc="xxxxx@" + parts.netloc.rpartition("@")[2]).geturl()


class GitCommandError(SolveError):
    pass


@register_source("git")
class GitSource:
    def __init__(self, vertex: Vertex) -> None:
        self.vertex = vertex
        self.identifier = vertex.op.source.identifier
        ident = parse_identifier(self.identifier)
        attrs = vertex.op.source.attrs
        for name in UNSUPPORTED_ATTRS:
            if attrs.get(name):
                raise Unimplemented(f"git source {self.identifier}: attribute {name} is not supported")
        full = attrs.get(ATTR_FULL_URL, "")
        if full:
            ident.remote = full if _is_git_transport(full) else "https://" + full
        self.remote = ident.remote
        m = _PROTO.match(self.remote)
        scheme = m.group(1).lower() if m else "ssh"
        if scheme == "ssh" or attrs.get(ATTR_MOUNT_SSH_SOCK) or attrs.get(ATTR_KNOWN_SSH_HOSTS):
            raise Unimplemented(f"git source {redact(self.remote)}: ssh remotes need SSH forwarding, "
                                "which is not supported yet")
        self.ref = ident.ref
        if self.ref.startswith("-"):
            raise InvalidArgument(f"invalid git ref {self.ref!r}")
        self.subdir = clean_subdir(ident.subdir, self.identifier)
        self.keep_git_dir = attrs.get(ATTR_KEEP_GIT_DIR) == "true"
        self.skip_submodules = attrs.get(ATTR_SKIP_SUBMODULES) == "true"
        self.checksum = attrs.get(ATTR_CHECKSUM, "")
        if self.checksum and not _HEX.match(self.checksum):
            raise InvalidArgument(f"invalid checksum {self.checksum} for Git URL, expected hex commit hash")
        self.mtime = attrs.get(ATTR_MTIME, "") or "checkout"
        if self.mtime not in ("checkout", "commit"):
            raise InvalidArgument(f"git source {self.identifier}: invalid {ATTR_MTIME} {self.mtime!r} (want "
                                  "checkout or commit)")
        self.auth_header_secret = attrs.get(ATTR_AUTH_HEADER_SECRET, "")
        self.auth_token_secret = attrs.get(ATTR_AUTH_TOKEN_SECRET, "")
        self.auth_env: dict[str, str] | None = None
        # set by resolve()
        self.commit = ""  # what the ref points at (a tag object for annotated tags)
        self.key_commit = ""  # the commit the cache key names
        self.used_ref = ""

    # -- keys ------------------------------------------------------------------------------------

    def cache_key_text(self) -> str:
        key = self.key_commit
        if self.keep_git_dir:
            key += ".git"
            if self.used_ref:
                key += "#" + self.used_ref
        if self.subdir:
            key += ":" + self.subdir
        if self.skip_submodules:
            key += "(skip-submodules)"
        if self.mtime != "checkout":
            key += "(mtime=" + self.mtime + ")"
        return key

    def cache_map(self, ctx: OpContext) -> CacheMap:
        if not self.key_commit:  # resolve() not run: never trust a key
            return CacheMap(digest=sha256_text("buildkit.source.v0", "git", self.identifier, self.remote),
                            ephemeral=True, always_run=True)
        return CacheMap(digest=go_digest("buildkit.source.v0:" + self.cache_key_text()))

    # -- running git -----------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_TERMINAL_PROMPT": "0",
               "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "HOME": "/nonexistent",
               "LC_ALL": "C"}
        for var in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                    "no_proxy", "all_proxy"):
            if var in os.environ:
                env[var] = os.environ[var]
        env.update(self.auth_env or {})
        return env

    async def git(self, *args: str, git_dir: Path | None = None, work_tree: Path | None = None,
                  cwd: Path | None = None, what: str = "") -> str:
        cmd = ["git"]
        if git_dir is not None:
            cmd.append(f"--git-dir={git_dir}")
        if work_tree is not None:
            cmd.append(f"--work-tree={work_tree}")
        cmd += ["-c", "protocol.ext.allow=never"]
        while True:
            try:
                res = await anyio.run_process([*cmd, *args], check=False, env=self._env(), umask=0o022,
                                              cwd=str(cwd or work_tree or git_dir or "/"), stdin=None)
            except FileNotFoundError:
                raise SolveError("git source: the git binary is not installed on the daemon's host") from None
            if res.returncode == 0:
                return res.stdout.decode(errors="replace")
            out = (res.stderr or res.stdout).decode(errors="replace").strip()
            retry = _fallback_args(args, out)
            if retry is None:
                break
            args = retry
        out = out.replace(self.remote, redact(self.remote))
        prefix = f"{what}: " if what else ""
        raise GitCommandError(f"{prefix}git {args[0]} failed (exit {res.returncode}): {out}")

    async def _auth(self, ctx: OpContext) -> None:
        """An Authorization header for http(s) remotes from the build's optional secrets."""
        if self.auth_env is not None:
            return
        self.auth_env = {}
        if not self.remote.lower().startswith(("http://", "https://")):
            return
        host = urlsplit(self.remote).netloc.rpartition("@")[2]
        candidates = []
        if self.auth_header_secret:
            candidates.append((self.auth_header_secret + "." + host, False))
        if self.auth_token_secret:
            candidates.append((self.auth_token_secret + "." + host, True))
        if self.auth_header_secret:
            candidates.append((self.auth_header_secret, False))
        if self.auth_token_secret:
            candidates.append((self.auth_token_secret, True))
        for name, token in candidates:
            value = await session_secret(ctx.worker, ctx.job.session_ids, name)
            if value is None:
                continue
            header = value.decode()
            if token:
                header = "basic " + base64.b64encode(b"x-access-token:" + value).decode()
            # through the environment, not argv: other processes can read argv
            self.auth_env = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": f"http.{self.remote}.extraheader",
                             "GIT_CONFIG_VALUE_0": "Authorization: " + header}
            return

    # -- resolve: which commit -------------------------------------------------------------------

    async def resolve(self, ctx: OpContext) -> None:
        if is_commit_sha(self.ref):
            if self.checksum and not self.ref.startswith(self.checksum):
                raise SolveError(f"expected checksum to match {self.checksum}, got {self.ref}")
            self.commit = self.key_commit = self.used_ref = self.ref
            return
        await self._auth(ctx)
        where = f"failed to fetch remote {redact(self.remote)}"
        ref = self.ref
        if not ref:
            out = await self.git("ls-remote", "--symref", "--", self.remote, "HEAD",
                                 what=f"error fetching default branch for repository {redact(self.remote)}")
            m = _DEFAULT_BRANCH.search(out)
            if m is None or m.group(1).startswith("-"):
                raise SolveError(f"could not find default branch for repository: {redact(self.remote)}")
            ref = self.ref = m.group(1)
        out = await self.git("ls-remote", "--", self.remote, ref, ref + "^{}", what=where)
        bare = ref.removeprefix("refs/")
        partial, head = "refs/" + bare, "refs/heads/" + ref.removeprefix("refs/heads/")
        tag = "refs/tags/" + ref.removeprefix("refs/tags/")
        sha = head_sha = tag_sha = peeled = used = ""
        for line in out.splitlines():
            line_sha, _, line_ref = line.partition("\t")
            if line_ref == head:
                head_sha = line_sha
            elif line_ref == tag:
                tag_sha = line_sha
            elif line_ref == tag + "^{}":
                peeled = line_sha
            if line_ref == partial:
                sha, used = line_sha, line_ref
        if not sha and head_sha:  # like git checkout, branches win over tags
            sha, used = head_sha, head
        if sha:
            peeled = ""
        if not sha and tag_sha:
            sha, used = tag_sha, tag
        if not sha:
            raise SolveError(f"repository does not contain ref {ref}, output: {out!r}")
        if not is_commit_sha(sha):
            raise SolveError(f"invalid commit sha {sha!r}")
        if self.checksum and not sha.startswith(self.checksum) and not peeled.startswith(self.checksum):
            raise SolveError(f"expected checksum to match {self.checksum}, got {sha}"
                             + (f" or {peeled}" if peeled else ""))
        self.commit, self.used_ref = sha, used
        self.key_commit = peeled if peeled and not self.keep_git_dir else sha

    # -- execute: fetch and check out ------------------------------------------------------------

    async def execute(self, ctx: OpContext,
                      inputs: list[ImmutableSnapshot | None]) -> list[ImmutableSnapshot]:
        if not self.commit:
            await self.resolve(ctx)
        await self._auth(ctx)
        name = hashlib.sha256(self.remote.encode()).hexdigest()[:32]
        bare = Path(ctx.worker.root).absolute() / "git" / name
        async with _remote_locks((str(bare),)):
            await self._fetch(bare)
            return [await self._checkout(ctx, bare)]

    async def _fetch(self, bare: Path) -> None:
        where = f"failed to fetch remote {redact(self.remote)}"
        if not (bare / "HEAD").exists():
            tmp = bare.with_name(bare.name + ".init-" + secrets.token_hex(4))
            await blocking(lambda: tmp.mkdir(parents=True))
            try:
                await self.git("-c", "init.defaultBranch=master", "init", "--bare", "--quiet", str(tmp),
                               cwd=tmp.parent)
                await self.git("remote", "add", "origin", self.remote, git_dir=tmp)
                await blocking(os.rename, tmp, bare)
            except BaseException:
                await blocking(lambda: shutil.rmtree(tmp, ignore_errors=True))
                raise
        await blocking(lambda: (bare / "shallow.lock").unlink(missing_ok=True))
        if await self._has_commit(bare, self.commit):
            return
        if is_commit_sha(self.ref):
            args = ["fetch", "--tags"]
            if (bare / "shallow").exists():
                args.append("--unshallow")
            await self.git(*args, "origin", self.ref, git_dir=bare, what=where)
        else:
            target = self.used_ref if self.used_ref.startswith("refs/tags/") else "refs/tags/" + (
                self.used_ref or self.ref)
            await self.git("fetch", "--depth=1", "--no-tags", "origin", "--force", "--",
                           f"{self.used_ref or self.ref}:{target}", git_dir=bare, what=where)
        if not await self._has_commit(bare, self.commit):
            # the ref moved between ls-remote and fetch: ask for the resolved commit itself
            try:
                await self.git("fetch", "--tags", "origin", self.commit, git_dir=bare, what=where)
            except GitCommandError:
                pass
            if not await self._has_commit(bare, self.commit):
                raise SolveError(f"fetched ref {self.ref} does not match expected commit {self.commit} and "
                                 "commit can not be found in the repository")

    async def _has_commit(self, bare: Path, sha: str) -> bool:
        try:
            await self.git("cat-file", "-e", "--", sha + "^{commit}", git_dir=bare)
            return True
        except GitCommandError:
            return False

    async def _checkout(self, ctx: OpContext, bare: Path) -> ImmutableSnapshot:
        snapshots = ctx.worker.snapshots
        mutable = await blocking(snapshots.new_mutable, None,
                                 f"git snapshot for {redact(self.remote)}#{self.ref}")
        try:
            mount = mutable.mount()
            root = Path(await blocking(mount.__enter__))
            try:
                await self._checkout_into(root, bare)
            finally:
                await blocking(mount.__exit__, None, None, None)
            return await blocking(mutable.commit)
        except BaseException:
            await blocking(mutable.release)
            raise

    async def _checkout_into(self, root: Path, bare: Path) -> None:
        where = f"failed to checkout remote {redact(self.remote)}"
        if self.keep_git_dir and not self.subdir:
            git_dir = root / ".git"
            await self.git("-c", "init.defaultBranch=master", "init", "--quiet", str(root), cwd=root)
            # file:// rather than a path: no local-clone shortcuts (hardlinks into the shared repo)
            await self.git("remote", "add", "origin", "file://" + str(bare), git_dir=git_dir)
            # a temporary ref names the resolved commit (or tag object) in the shared repository, so
            # the fetch never depends on the server allowing wants by sha
            temp = "refs/buildkit/" + secrets.token_hex(12)
            await self.git("update-ref", temp, self.commit, git_dir=bare)
            if is_commit_sha(self.ref) or not self.used_ref.startswith("refs/"):
                pullref = temp
            else:
                pullref = f"{temp}:{self.used_ref}"
            try:
                await self.git("fetch", "-u", "--depth=1", "--no-tags", "--", "origin", pullref,
                               git_dir=git_dir, work_tree=root, what=where)
            finally:
                await self.git("update-ref", "-d", temp, git_dir=bare)
            await self.git("checkout", "--quiet", "FETCH_HEAD", git_dir=git_dir, work_tree=root, what=where)
            await self.git("remote", "set-url", "origin", redact(self.remote), git_dir=git_dir)
            await self.git("reflog", "expire", "--all", "--expire=now", git_dir=git_dir)
            await blocking(lambda: (git_dir / "FETCH_HEAD").unlink(missing_ok=True))
            work, git_dir_for_modules = root, git_dir
        else:
            work = root
            if self.subdir:
                work = Path(await blocking(lambda: tempfile.mkdtemp(prefix=".checkout", dir=root)))
            await self.git("checkout", "--no-overlay", "--quiet", self.commit, "--", ".", git_dir=bare,
                           work_tree=work, what=where)
            git_dir_for_modules = bare
        if not self.skip_submodules and await blocking((work / ".gitmodules").exists):
            await self.git("submodule", "update", "--init", "--recursive", "--depth=1",
                           git_dir=git_dir_for_modules, work_tree=work,
                           what=f"failed to update submodules for {redact(self.remote)}")
        if self.subdir:
            await blocking(_lift_subdir, work, self.subdir, root)
        if self.mtime == "commit":
            out = await self.git("log", "-1", "--format=%ct", self.commit + "^{commit}", git_dir=bare)
            await blocking(_set_mtimes, root, int(out.strip()))


def _fallback_args(args: tuple[str, ...], stderr: str) -> tuple[str, ...] | None:
    """The arguments to retry a failed git command with, as BuildKit's git CLI does, or None.

    A server that cannot serve shallow fetches (git's dumb HTTP transport, some old servers) fails
    ``--depth=1``: fetch the whole history instead. A server that refuses wants by commit ("not our
    ref", "unadvertised object") is asked for its refs without the commit; the caller then checks
    that the commit arrived."""
    if ("--depth" in stderr or "shallow" in stderr) and "--depth=1" in args:
        return tuple(a for a in args if a != "--depth=1")
    if ("not our ref" in stderr or "unadvertised object" in stderr) and len(args) > 2 \
            and args[0] == "fetch" and is_commit_sha(args[-1]):
        return args[:-1]
    return None


def _lift_subdir(work: Path, subdir: str, root: Path) -> None:
    """Move ``work/subdir``'s entries to ``root`` and drop ``work``; every component of ``subdir``
    must be a real directory (a symlink could point anywhere on the host)."""
    try:
        cur = work
        for part in subdir.split("/"):
            cur = cur / part
            try:
                st = os.lstat(cur)
            except FileNotFoundError:
                raise SolveError(f"invalid subdir {subdir}: {part!r} does not exist in the "
                                 "repository") from None
            if stat.S_ISLNK(st.st_mode):
                raise SolveError(f"invalid subdir {subdir}: git subpath {subdir!r} contains symlink "
                                 f"{str(cur.relative_to(work))!r}")
            if not stat.S_ISDIR(st.st_mode):
                raise SolveError(f"invalid subdir {subdir}: git subpath {subdir!r} contains non-directory "
                                 f"{str(cur.relative_to(work))!r}")
        for name in os.listdir(cur):
            os.rename(cur / name, root / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _set_mtimes(root: Path, t: int) -> None:
    dirs: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirs.append(dirpath)
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            os.utime(os.path.join(dirpath, name), (t, t), follow_symlinks=False)
    for d in reversed(dirs):
        os.utime(d, (t, t))

