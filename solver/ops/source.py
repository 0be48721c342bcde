"""SourceOp: where content enters a build. Sources plug in by identifier scheme.

``local://<name>`` pulls a directory from the client over its session's FileSync. Its cache key is
per session (BuildKit makes it ``random:``): it is never persisted, and the op runs on every build;
what follows it still hits the cache through content checksums. The transfer itself is incremental
like BuildKit's: the previous copy with the same shared key (``local_reuse``: name, shared key hint
and the session's shared key) is the parent of the new snapshot and only entries whose metadata
changed are fetched (``local.differ`` unset or ``metadata``); ``local.differ=none`` fetches
everything; an unchanged transfer returns the previous copy itself (and leaves the record as it
is). As in BuildKit, sessions without a shared key (buildctl's) share one previous copy per name
and hint, which may come from another directory of the client: the sync deletes what the client
does not list and refetches every entry whose metadata differs, and, beyond BuildKit, keeps a
file from such a copy only if its mtime has sub-second digits (a whole-second mtime, as archives
and normalised build dates leave, cannot tell two files of the same size apart). Transfers under
one non-empty key wait for each other (the second fetches only what the first did not); under the
empty key they do not.
``docker-image://``, ``git://`` and ``http(s)://`` register here when they exist.
"""

from __future__ import annotations

import json
import stat as statmod
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any

from buildkitpy.api import fsutil_stat_pb2
from buildkitpy.errors import InvalidArgument, SessionNotFound, Unimplemented
from buildkitpy.fsutil import modes
from buildkitpy.snapshot.api import ImmutableSnapshot, MutableSnapshot, SnapshotManager
from buildkitpy.snapshot.fs import copy_tree
from buildkitpy.solver.asyncutil import blocking
from buildkitpy.solver.cachekey import CacheMap, digest_json, sha256_text
from buildkitpy.solver.contenthash import ChecksumStore, FileMeta, FileRecord, regular_file_hasher
from buildkitpy.solver.loader import Vertex
from buildkitpy.solver.ops.base import OpContext, register_op
from buildkitpy.solver.ops.local_reuse import SharedKeyIndex

ATTR_SESSION = "local.session"
ATTR_UNIQUE = "local.unique"
ATTR_INCLUDE = "local.includepattern"
ATTR_EXCLUDE = "local.excludepatterns"
ATTR_FOLLOW = "local.followpaths"
ATTR_SHARED_KEY_HINT = "local.sharedkeyhint"
ATTR_DIFFER = "local.differ"
ATTR_METADATA_TRANSFER = "local.metadatatransfer"

# A reused copy stacks one overlay layer per transfer; past this depth the previous tree is copied
# locally into a fresh single-layer snapshot first (still far cheaper than a full transfer).
MAX_REUSE_LAYERS = 8

SOURCE_SCHEMES: dict[str, Callable[[Vertex], Any]] = {}


def register_source(scheme: str) -> Callable[[Callable[[Vertex], Any]], Callable[[Vertex], Any]]:
    def deco(factory: Callable[[Vertex], Any]) -> Callable[[Vertex], Any]:
        SOURCE_SCHEMES[scheme] = factory
        return factory
    return deco


@register_op("source")
def source_op(vertex: Vertex) -> Any:
    scheme, _, _ = vertex.op.source.identifier.partition("://")
    factory = SOURCE_SCHEMES.get(scheme)
    if factory is None:
        supported = ", ".join(f"{s}://" for s in sorted(SOURCE_SCHEMES))
        raise Unimplemented(f"source {vertex.op.source.identifier!r}: the {scheme}:// scheme is not "
                            f"supported (supported: {supported})")
    return factory(vertex)


def _json_list(attrs: Any, key: str, vertex: Vertex) -> list[str]:
    raw = attrs.get(key)
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"source {vertex.op.source.identifier}: attribute {key} is not valid JSON: "
                              f"{exc}") from exc
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"source {vertex.op.source.identifier}: attribute {key} must be a JSON list "
                              "of strings")
    return value


@register_source("local")
class LocalSource:
    def __init__(self, vertex: Vertex) -> None:
        self.vertex = vertex
        attrs = vertex.op.source.attrs
        self.name = vertex.op.source.identifier.partition("://")[2]
        if not self.name:
            raise InvalidArgument("local source needs a name (local://<name>)")
        self.session_id = attrs.get(ATTR_SESSION, "")
        if ":" in self.session_id:  # "name:sessionid" form
            self.session_id = self.session_id.split(":", 1)[1]
        self.include_patterns = _json_list(attrs, ATTR_INCLUDE, vertex)
        self.exclude_patterns = _json_list(attrs, ATTR_EXCLUDE, vertex)
        self.follow_paths = _json_list(attrs, ATTR_FOLLOW, vertex)
        self.shared_key_hint = attrs.get(ATTR_SHARED_KEY_HINT, "")
        self.unique = attrs.get(ATTR_UNIQUE, "")
        differ = attrs.get(ATTR_DIFFER, "")
        if differ not in ("", "none", "metadata"):
            raise InvalidArgument(f"local source {self.name}: unknown {ATTR_DIFFER} {differ!r}")
        self.differ = differ or "metadata"
        metadata_only = attrs.get(ATTR_METADATA_TRANSFER, "").lower()
        if metadata_only not in ("", "0", "1", "t", "f", "true", "false"):
            raise InvalidArgument(f"local source {self.name}: invalid {ATTR_METADATA_TRANSFER} "
                                  f"{attrs.get(ATTR_METADATA_TRANSFER)!r} (want true or false)")
        self.metadata_only = metadata_only in ("1", "t", "true")

    def cache_map(self, ctx: OpContext) -> CacheMap:
        ident = digest_json({"SessionID": self.session_id or ",".join(ctx.job.session_ids),
                             "IncludePatterns": self.include_patterns,
                             "ExcludePatterns": self.exclude_patterns,
                             "FollowPaths": self.follow_paths, "Unique": self.unique})
        return CacheMap(digest=sha256_text("buildkit.source.v0", "session:" + self.name, ident),
                        ephemeral=True, always_run=True)

    async def _session(self, ctx: OpContext) -> Any:
        sessions = ctx.worker.sessions
        if sessions is None:
            raise SessionNotFound(f"local source {self.name}: this worker has no session manager")
        if self.session_id:
            try:
                return await sessions.get(self.session_id, timeout=5.0)
            except SessionNotFound:
                pass
        for sid in ctx.job.session_ids:  # BuildKit falls back to any session of the build
            try:
                return await sessions.get(sid, timeout=0.5 if self.session_id else 5.0)
            except SessionNotFound:
                continue
        raise SessionNotFound(f"local source {self.name}: no active session (asked for "
                              f"{self.session_id or 'none'}, build sessions {ctx.job.session_ids})")

    def shared_key(self, session: Any) -> str:
        """BuildKit's key for the previous copy of this directory from the same client."""
        suffix = ":metadata" if self.metadata_only else ""
        return f"{self.name}:{self.shared_key_hint}:{session.shared_key}{suffix}"

    async def execute(self, ctx: OpContext,
                      inputs: list[ImmutableSnapshot | None]) -> list[ImmutableSnapshot]:
        from buildkitpy.session.filesync import receive_dir

        session = await self._session(ctx)
        key = self.shared_key(session)
        index: SharedKeyIndex = ctx.shared.local_sources
        checksums = getattr(ctx.shared, "checksums", None)
        # An empty session key stands for any directory of any buildctl: waiting for another
        # transfer under it would serialise unrelated builds for nothing.
        async with index.claim(key, wait=bool(session.shared_key)) as owned:
            target = await blocking(_Target.open, ctx.worker.snapshots, index if self.differ == "metadata"
                                    else None, key, f"local source for {self.name}")
            try:
                previous_id = target.previous.id if target.previous is not None else None
                records = _FileRecords(checksums.files_of(previous_id) if checksums and previous_id else None)
                if checksums is not None and previous_id:
                    records.previous_metas = checksums.file_metas_of(previous_id)
                progress = _TransferProgress(ctx, self.name)
                stats = await receive_dir(
                    session.channel, target.dest, dir_name=self.name, include_patterns=self.include_patterns,
                    exclude_patterns=self.exclude_patterns, follow_paths=self.follow_paths,
                    progress=progress, mode="sync" if target.previous is not None else "fresh",
                    differ="metadata", fine_mtimes_only=not session.shared_key,
                    on_entry=records, content_hasher=_content_hasher, previous_digests=records.previous,
                    # What a previous transfer saw of the files of the snapshot mounted here (not
                    # of a copy of it): an unchanged 10,000-file context was 10,000 lstats on
                    # the event loop, a third of the time spent on its packets.
                    previous_files=records.previous_metas if target.parent is not None else None,
                    collect_files=True, make_writable=target.writable if target.view is not None else None)
                records.metas = stats.files_as_stated
                progress(progress.last, done=True)
            except BaseException:
                await blocking(target.abandon)
                raise
            # Its records go with it: an unchanged transfer returns the recorded copy itself, with
            # nothing to record (a write with a sync to the disk, 5-50 ms here, for every local
            # source of every build).
            result = await blocking(target.close, stats.modified, records, checksums,
                                    index if owned or not session.shared_key else None, key)
        return [result]


class _Target:
    """Where a transfer writes. With a previous copy under the shared key: a view of it (its mount)
    until the transfer changes something, and then a new snapshot layered on it (``writable``, which
    the DiskWriter calls before its first change), so an unchanged context, the common case, makes,
    mounts and discards no snapshot (~4 ms of every cached build). Without one, or when its layer
    chain is too deep (then a copy of it), a new snapshot from the start. Opened and closed in one
    worker-thread trip each: a trip costs ~0.15 ms, and a cached noop build's three local sources
    made nineteen."""

    def __init__(self, snapshots: SnapshotManager, description: str, previous: ImmutableSnapshot | None,
                 parent: ImmutableSnapshot | None) -> None:
        self.snapshots = snapshots
        self.description = description
        self.previous = previous
        self.parent = parent  # previous, when the new snapshot is (or would be) a layer on it
        self.view: AbstractContextManager[Path] | None = None  # the parent's mount, read only
        self.mutable: MutableSnapshot | None = None  # the new snapshot, once there is one
        self.mount: AbstractContextManager[Path] | None = None  # its mount
        self.dest = Path()

    @classmethod
    def open(cls, snapshots: SnapshotManager, index: SharedKeyIndex | None, key: str,
             description: str) -> _Target:
        """The target on the copy ``index`` has under ``key`` (none without an index)."""
        previous = None
        snapshot_id = index.get(key) if index is not None else None
        if index is not None and snapshot_id is not None:
            try:
                previous = snapshots.get(snapshot_id)
            except KeyError:  # pruned since: start over
                index.forget(key)
        with ExitStack() as undo:  # on a failure, what was taken is let go, last first
            if previous is not None:
                undo.callback(previous.release)
            flatten = previous is not None and len(previous.layers()) >= MAX_REUSE_LAYERS
            target = cls(snapshots, description, previous, previous if not flatten else None)
            if target.parent is not None:
                target.view = target.parent.mount()
                target.dest = undo.enter_context(target.view)
            else:
                target.writable()
                undo.callback(target._drop_new)
                if flatten:
                    assert previous is not None
                    _copy_snapshot(previous, target.dest)
            undo.pop_all()
        return target

    def writable(self) -> Path:
        """The new snapshot's mounted tree, made at the first call: on the parent, the same tree as
        the view. Called by the DiskWriter where it runs (the event loop): once per transfer that
        changes something, a row and an overlay mount (~2 ms here)."""
        if self.mutable is None:
            mutable = self.snapshots.new_mutable(self.parent, self.description)
            try:
                mount = mutable.mount()
                dest = mount.__enter__()
            except BaseException:
                mutable.release()
                raise
            self.mutable, self.mount, self.dest = mutable, mount, dest
        return self.dest

    def _drop_new(self) -> None:
        if self.mutable is not None and self.mount is not None:
            with ExitStack() as undo:
                undo.callback(self.mutable.release)
                undo.push(self.mount)
        self.mutable = self.mount = None

    def close(self, modified: bool, records: _FileRecords, checksums: ChecksumStore | None,
              index: SharedKeyIndex | None, key: str) -> ImmutableSnapshot:
        """The transfer's snapshot: ``previous`` itself (another handle on it) when a sync onto it
        changed nothing, so unchanged contexts never stack layers; else the new one, with its
        files' records, and recorded under ``key`` in ``index`` when one is given."""
        try:
            if self.mutable is None or self.mount is None:  # nothing changed the view
                if modified or self.parent is None:
                    raise RuntimeError(f"{self.description}: a transfer changed its view of the copy")
                result = self.parent.clone()
            else:  # a change made it (or there was no view): it is the result
                try:
                    self.mount.__exit__(None, None, None)
                    result = self.mutable.commit()
                except BaseException:
                    self.mutable.release()
                    raise
        finally:
            with ExitStack() as after:
                if self.previous is not None:
                    after.callback(self.previous.release)
                if self.view is not None:
                    after.push(self.view)
        previous_id = self.previous.id if self.previous is not None else None
        if checksums is not None and result.id != previous_id:
            checksums.remember_files(result.id, records.files)
        if checksums is not None and records.metas is not None:
            checksums.remember_file_metas(result.id, records.metas)
        if index is not None and result.id != previous_id:
            try:
                index.put(key, result.id)
            except BaseException:
                result.release()
                raise
        return result

    def abandon(self) -> None:
        """The transfer failed: nothing is kept."""
        with ExitStack() as undo:  # each step even when the one after it fails
            if self.previous is not None:
                undo.callback(self.previous.release)
            if self.view is not None:
                undo.push(self.view)
            self._drop_new()


class _FileRecords:
    """The digests of the regular files a transfer writes (hashed as they arrive) or keeps from the
    previous copy, for the checksum of the new snapshot (``ChecksumStore.remember_files``): like
    BuildKit's local source, which fills its contenthash records from the transfer, the files are
    then not read back to compute a COPY's cache key."""

    def __init__(self, previous: dict[str, FileRecord] | None) -> None:
        self.files: dict[str, FileRecord] = {}
        # hex digests of the previous copy's files, for DiskWriter's previous_digests
        self.previous = {path: r.digest.removeprefix("sha256:") for path, r in (previous or {}).items()}
        # DiskWriter's previous_files (ChecksumStore.file_metas_of the previous copy), and its
        # files_as_stated of the new copy
        self.previous_metas: dict[str, FileMeta] | None = None
        self.metas: dict[str, FileMeta] | None = None

    def __call__(self, stat: fsutil_stat_pb2.Stat, digest: str | None) -> None:
        if digest is None or stat.linkname or not modes.is_regular(stat.mode):
            return
        meta = (statmod.S_IFREG | modes.permission_bits_from_go(stat.mode), stat.uid, stat.gid, stat.size,
                stat.modTime)
        self.files[stat.path] = FileRecord("sha256:" + digest, meta)


def _content_hasher(stat: fsutil_stat_pb2.Stat) -> Any:
    """The contenthash digest of a regular file as it will be on disk (None when it keeps xattrs,
    which are hashed from the disk)."""
    if stat.xattrs or stat.linkname or not modes.is_regular(stat.mode):
        return None
    return regular_file_hasher(modes.permission_bits_from_go(stat.mode), stat.uid, stat.gid, stat.size)


def _copy_snapshot(snapshot: ImmutableSnapshot, dest: Path) -> None:
    with snapshot.mount() as root:
        copy_tree(root, dest)


class _TransferProgress:
    """Reports "transferring <name>: N bytes" on the vertex like BuildKit."""

    def __init__(self, ctx: OpContext, name: str) -> None:
        self.ctx = ctx
        self.status_id = f"transferring {name}:"
        self.last = 0

    def __call__(self, current: int, done: bool = False) -> None:
        self.last = current
        self.ctx.job.progress.status(self.ctx.vertex.digest, self.status_id, name=self.status_id,
                                     current=current, completed=done)
