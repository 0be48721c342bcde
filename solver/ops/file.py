"""FileOp: mkdir, mkfile, rm, symlink and copy actions, chained, with one or more outputs.

Action indexes (``input``, ``secondaryInput``, an owner's ``byName.input``): ``-1`` is scratch,
``< len(op.inputs)`` an op input, otherwise the result of action ``index - len(op.inputs)``. An
action result used once, by the next action's ``input`` only and not an output, stays a mutable
snapshot that the next action keeps writing to; anything else is committed.

A copy into a destination made from scratch may hard-link files of the source's layers instead of
copying them (``fscopy``'s module docstring says when that is sound); the inodes linked into each
destination are recorded on it before its commit (``SnapshotManager.record_shared``).
"""

from __future__ import annotations

import base64
import contextlib
import os
import posixpath
import tarfile
from dataclasses import dataclass
from pathlib import Path

from buildkitpy.api import ops_pb2
from buildkitpy.errors import SolveError
from buildkitpy.fsutil.patterns import PatternMatcher, contains_wildcards
from buildkitpy.snapshot.api import ImmutableSnapshot, MutableSnapshot
from buildkitpy.solver.asyncutil import blocking, release_all
from buildkitpy.solver.cachekey import (
    CacheMap,
    Dep,
    Selector,
    go_digest,
    go_marshal,
    go_proto_value,
    selector_digest,
)
from buildkitpy.solver.loader import SCRATCH, Vertex
from buildkitpy.solver.ops.base import OpContext, register_op
from buildkitpy.solver.ops.fscopy import CopyOptions, Sharing, apply_owner, copy, mkdir_all, set_times
from buildkitpy.solver.ops.modestr import ModeSet
from buildkitpy.solver.ops.tarunpack import is_archive, unpack
from buildkitpy.solver.ops.users import lookup_group, lookup_user
from buildkitpy.solver.pathutil import clean_path, resolve_wildcards, secure_join

FILE_CACHE_TYPE = "buildkit.file.v0"


def _ts(value: int) -> int | None:
    """LLB timestamps are Unix nanoseconds; -1 means "leave the current time"."""
    return None if value == -1 else value


MAX_CACHE_MAPS = 16384
# Ops larger than this (inline file data) are not remembered: their maps are made each time.
MAX_REMEMBERED_OP = 8192
_CACHE_MAPS: dict[tuple[bytes, int], CacheMap] = {}  # see FileOp.cache_map


@register_op("file")
class FileOp:
    def __init__(self, vertex: Vertex) -> None:
        self.vertex = vertex
        self.op = vertex.op.file
        self.n_inputs = len(vertex.inputs)

    # -- cache -----------------------------------------------------------------------------------

    def cache_map(self, ctx: OpContext) -> CacheMap:
        """BuildKit's key: json.Marshal of {Type, Actions (each action's own json.Marshal, a copy's
        source cut to its base name when it comes from an input), indexes (left out when they are
        the usual chain)}; per input read by a copy or a user lookup, the selector paths.

        It depends on the op's bytes and its number of inputs only, so it is remembered by them
        (at most ``MAX_CACHE_MAPS`` ops of at most ``MAX_REMEMBERED_OP`` bytes each): a cached
        graph of 500 COPYs made the same 500 again every build (the vertex digests change, the
        context's session being in them), each a walk of the op's fields and two JSON encodings.
        Each call gets its own copy."""
        body = self.op.SerializeToString(deterministic=True)
        if len(body) > MAX_REMEMBERED_OP:
            return self._cache_map()
        key = (body, self.n_inputs)
        cm = _CACHE_MAPS.get(key)
        if cm is None:
            cm = self._cache_map()
            if len(_CACHE_MAPS) >= MAX_CACHE_MAPS:
                _CACHE_MAPS.clear()
            _CACHE_MAPS[key] = cm
        deps = [Dep(d.selector, None if d.content is None else list(d.content)) for d in cm.deps]
        return CacheMap(digest=cm.digest, deps=deps, ephemeral=cm.ephemeral, always_run=cm.always_run)

    def _cache_map(self) -> CacheMap:
        selectors: dict[int, list[Selector]] = {}
        targets: set[int] = set()
        actions: list[str] = []
        indexes = []
        for a in self.op.actions:
            which = a.WhichOneof("action")
            body = getattr(a, which)
            data = go_proto_value(body)
            if a.input != SCRATCH:
                targets.add(a.input)
            if which in ("mkdir", "mkfile", "copy") and body.HasField("owner"):
                self._owner_selectors(body.owner, selectors)
            if which == "copy" and a.secondaryInput != SCRATCH and a.secondaryInput < self.n_inputs:
                c = body
                selectors.setdefault(a.secondaryInput, []).append(Selector(
                    path=c.src, follow_links=c.followSymlink,
                    wildcard=c.allowWildcard and contains_wildcards(c.src),
                    include_patterns=tuple(c.include_patterns), exclude_patterns=tuple(c.exclude_patterns),
                    required_paths=tuple(c.required_paths)))
                data["src"] = _go_base(c.src)
            actions.append(base64.b64encode(go_marshal(data)).decode())
            indexes.append([a.input, a.secondaryInput, a.output])
        deps = [Dep() for _ in range(self.n_inputs)]
        for idx, sels in selectors.items():
            if idx in targets or idx >= self.n_inputs:
                continue
            paths = sorted((s.path for s in sels), key=str.encode, reverse=True)
            deps[idx] = Dep(selector=selector_digest(paths), content=_dedupe(sels))
        key: dict[str, object] = {"Type": FILE_CACHE_TYPE, "Actions": actions}
        if not _default_indexes(indexes):
            key["indexes"] = indexes
        return CacheMap(digest=go_digest(go_marshal(key)), deps=deps)

    @staticmethod
    def _owner_selectors(owner: ops_pb2.ChownOpt, selectors: dict[int, list[Selector]]) -> None:
        for label, db in (("user", "/etc/passwd"), ("group", "/etc/group")):
            if owner.HasField(label) and getattr(owner, label).WhichOneof("user") == "byName":
                idx = getattr(owner, label).byName.input
                selectors.setdefault(idx, []).append(Selector(path=db, follow_links=True))

    # -- run -------------------------------------------------------------------------------------

    async def execute(self, ctx: OpContext,
                      inputs: list[ImmutableSnapshot | None]) -> list[ImmutableSnapshot]:
        run = _FileRun(ctx, self.op, inputs)
        try:
            return await run.run()
        finally:
            await run.cleanup()


@dataclass
class _Slot:
    mutable: MutableSnapshot | None = None
    committed: ImmutableSnapshot | None = None
    linked: dict[int, str] | None = None  # inodes hard-linked into ``mutable`` → their first layer


class _FileRun:
    def __init__(self, ctx: OpContext, op: ops_pb2.FileOp, inputs: list[ImmutableSnapshot | None]) -> None:
        self.ctx = ctx
        self.op = op
        self.inputs = inputs
        self.n_inputs = len(inputs)
        self.slots: dict[int, _Slot] = {}
        self.outputs: dict[int, ImmutableSnapshot] = {}
        self.uses: dict[int, int] = {}
        # Hard links instead of copies only when no action can write into an existing file.
        self.may_share = not any(
            a.WhichOneof("action") == "mkfile"
            or (a.WhichOneof("action") == "copy" and a.copy.attemptUnpackDockerCompatibility)
            for a in op.actions)
        for a in op.actions:
            for idx in (a.input, a.secondaryInput, *self._name_inputs(a)):
                if idx >= self.n_inputs:
                    self.uses[idx] = self.uses.get(idx, 0) + (1 if idx == a.input else 2)

    @staticmethod
    def _name_inputs(a: ops_pb2.FileAction) -> list[int]:
        which = a.WhichOneof("action")
        body = getattr(a, which)
        out = []
        if which in ("mkdir", "mkfile", "symlink", "copy") and body.HasField("owner"):
            for label in ("user", "group"):
                if body.owner.HasField(label) and getattr(body.owner, label).WhichOneof("user") == "byName":
                    out.append(getattr(body.owner, label).byName.input)
        return out

    async def run(self) -> list[ImmutableSnapshot]:
        snapshots = self.ctx.worker.snapshots
        for i, a in enumerate(self.op.actions):
            idx = self.n_inputs + i
            slot = _Slot()
            self.slots[idx] = slot
            prev = self.slots.get(a.input) if a.input >= self.n_inputs else None
            if prev is not None and prev.mutable is not None and self.uses.get(a.input, 0) == 1:
                slot.mutable, prev.mutable = prev.mutable, None  # hand the writable tree over
                slot.linked, prev.linked = prev.linked, None
            else:
                parent = await self._committed(a.input)
                slot.mutable = await blocking(snapshots.new_mutable, parent, self.ctx.vertex.name)
            await blocking(self._apply, a, slot)
            if a.output != -1 or self.uses.get(idx, 0) != 1:
                slot.committed = await blocking(self._commit, slot)
                if a.output != -1:
                    self.outputs[a.output] = await blocking(slot.committed.clone)
        return [self.outputs.pop(i) for i in range(len(self.outputs))]

    async def cleanup(self) -> None:
        handles: list = [s.committed for s in self.slots.values()] + list(self.outputs.values())
        handles += [s.mutable for s in self.slots.values()]
        self.slots.clear()
        self.outputs.clear()
        await release_all(handles)

    async def _committed(self, idx: int) -> ImmutableSnapshot | None:
        if idx == SCRATCH:
            return None
        if idx < self.n_inputs:
            return self.inputs[idx]
        slot = self.slots[idx]
        if slot.committed is None:
            slot.committed = await blocking(self._commit, slot)
        return slot.committed

    def _commit(self, slot: _Slot) -> ImmutableSnapshot:
        mutable, slot.mutable = slot.mutable, None
        assert mutable is not None
        if slot.linked:
            self.ctx.worker.snapshots.record_shared(mutable, slot.linked)
        return mutable.commit()

    def _sharing(self, idx: int, slot: _Slot, src_root: Path, dst_root: Path) -> Sharing | None:
        """Whether this copy may hard-link from source ``idx`` into ``slot`` (blocking)."""
        if not self.may_share or idx == SCRATCH or slot.mutable is None:
            return None
        snapshots = self.ctx.worker.snapshots
        snap = self.inputs[idx] if idx < self.n_inputs else self.slots[idx].committed
        if snap is None or not snapshots.link_target(slot.mutable):
            return None
        source = snapshots.link_source(snap)
        if source is None:
            return None
        if slot.linked is None:
            slot.linked = {}
        return Sharing(source, str(src_root), os.stat(dst_root).st_dev, slot.linked)

    def _source_tree(self, idx: int, stack: contextlib.ExitStack) -> Path | None:
        """A read-only path of an action source (blocking, inside ``stack``)."""
        if idx == SCRATCH:
            return None
        snap = self.inputs[idx] if idx < self.n_inputs else self.slots[idx].committed
        if snap is None:
            raise SolveError(f"internal error: file action source {idx} is not committed")
        return stack.enter_context(snap.mount())

    # -- actions (blocking) ----------------------------------------------------------------------

    def _apply(self, a: ops_pb2.FileAction, slot: _Slot) -> None:
        which = a.WhichOneof("action")
        body = getattr(a, which)
        assert slot.mutable is not None
        with contextlib.ExitStack() as stack:
            root = stack.enter_context(slot.mutable.mount())
            owner = self._owner(body.owner, stack) if which != "rm" and body.HasField("owner") else None
            try:
                if which == "mkdir":
                    self._mkdir(root, body, owner)
                elif which == "mkfile":
                    self._mkfile(root, body, owner)
                elif which == "rm":
                    self._rm(root, body)
                elif which == "symlink":
                    self._symlink(root, body, owner)
                else:
                    src_root = self._source_tree(a.secondaryInput, stack)
                    share = None
                    if src_root is None:
                        src_root = Path(stack.enter_context(_empty_dir()))
                    else:
                        share = self._sharing(a.secondaryInput, slot, src_root, root)
                    self._copy(src_root, root, body, owner, share)
            except SolveError:
                raise
            except OSError as exc:
                detail = exc.strerror or str(exc)
                raise SolveError(f"{which} {_action_path(which, body)}: {detail}") from exc

    def _owner(self, chown: ops_pb2.ChownOpt, stack: contextlib.ExitStack) -> tuple[int, int] | None:
        uid = gid = None
        if chown.HasField("user"):
            u = chown.user
            if u.WhichOneof("user") == "byName":
                uid, gid = lookup_user(self._name_root(u.byName.input, stack), u.byName.name)
            elif u.WhichOneof("user") == "byID":
                uid = gid = u.byID
        if chown.HasField("group"):
            g = chown.group
            if g.WhichOneof("user") == "byName":
                gid = lookup_group(self._name_root(g.byName.input, stack), g.byName.name)
            elif g.WhichOneof("user") == "byID":
                gid = g.byID
        if uid is None and gid is None:
            return None
        return (uid if uid is not None else 0, gid if gid is not None else 0)

    def _name_root(self, idx: int, stack: contextlib.ExitStack) -> Path | None:
        if idx >= self.n_inputs and self.slots.get(idx) and self.slots[idx].committed is None:
            raise SolveError(f"internal error: owner lookup input {idx} is not committed")
        return self._source_tree(idx, stack)

    @staticmethod
    def _mkdir(root: Path, a: ops_pb2.FileActionMkDir, owner: tuple[int, int] | None) -> None:
        p = secure_join(root, a.path)
        mode = a.mode & 0o777
        if a.makeParents:
            mkdir_all(p, mode, owner, _ts(a.timestamp))
            return
        try:
            os.mkdir(p, mode)
        except FileExistsError:
            return
        except FileNotFoundError:
            raise SolveError(f"mkdir {a.path}: parent directory does not exist") from None
        os.chmod(p, mode)
        apply_owner(p, owner)
        set_times(p, _ts(a.timestamp))

    @staticmethod
    def _mkfile(root: Path, a: ops_pb2.FileActionMkFile, owner: tuple[int, int] | None) -> None:
        p = secure_join(root, a.path)
        if p.is_dir():
            raise SolveError(f"mkfile {a.path}: is a directory")
        with open(p, "wb") as f:
            f.write(a.data)
        os.chmod(p, a.mode & 0o777)
        apply_owner(p, owner)
        set_times(p, _ts(a.timestamp))

    @staticmethod
    def _rm(root: Path, a: ops_pb2.FileActionRm) -> None:
        paths = resolve_wildcards(root, clean_path(a.path), False) if a.allowWildcard else [a.path]
        for path in paths:
            norm = posixpath.normpath(posixpath.join("/", path))
            if norm == "/":
                raise SolveError(f"rm {a.path}: refusing to remove the root directory")
            p = secure_join(root, norm, follow_final=False)
            if not os.path.lexists(p):
                if a.allowNotFound:
                    continue
                raise SolveError(f"rm {a.path}: no such file or directory")
            if p.is_dir() and not p.is_symlink():
                import shutil
                shutil.rmtree(p)
            else:
                os.unlink(p)

    @staticmethod
    def _symlink(root: Path, a: ops_pb2.FileActionSymlink, owner: tuple[int, int] | None) -> None:
        p = secure_join(root, posixpath.join("/", a.newpath), follow_final=False)
        os.symlink(a.oldpath, p)
        apply_owner(p, owner)
        set_times(p, _ts(a.timestamp))

    @staticmethod
    def _copy(src_root: Path, dst_root: Path, a: ops_pb2.FileActionCopy,
              owner: tuple[int, int] | None, share: Sharing | None = None) -> None:
        src = clean_path(a.src)
        dest = clean_path(a.dest)
        if not a.createDestPath:
            parent = secure_join(dst_root, posixpath.dirname(posixpath.join("/", a.dest.rstrip("/")) or "/"))
            if not parent.exists():
                raise SolveError(f"failed to copy to {a.dest}: parent directory does not exist "
                                 "(createDestPath is off)")
        mode_set = ModeSet(a.modeStr) if a.modeStr else None
        opts = CopyOptions(chown=owner, utime_ns=_ts(a.timestamp),
                           mode=None if (mode_set is not None or a.mode == -1) else a.mode,
                           mode_set=mode_set, include=PatternMatcher(a.include_patterns),
                           exclude=PatternMatcher(a.exclude_patterns), copy_dir_contents=a.dirCopyContents,
                           follow_links=a.followSymlink, always_replace=a.alwaysReplaceExistingDestPaths,
                           share=share)
        if a.allowWildcard:
            matches = resolve_wildcards(src_root, src, a.followSymlink)
            if not matches:
                if a.allowEmptyWildcard:
                    return
                raise SolveError(f"failed to copy: {a.src}: not found")
        else:
            matches = [src]
        for req in a.required_paths:  # full paths in the source, like BuildKit's contenthash
            if not os.path.lexists(secure_join(src_root, req, follow_final=False)):
                raise SolveError(f"failed to copy: required path {req} not found (copying {a.src})")
        for m in matches:
            if a.attemptUnpackDockerCompatibility:
                archive = secure_join(src_root, m)
                if is_archive(archive):
                    dest_dir = secure_join(dst_root, posixpath.normpath(dest))
                    mkdir_all(dest_dir, 0o755, owner, _ts(a.timestamp))
                    unpack(archive, dest_dir, owner)
                    continue
            copy(src_root, m, dst_root, dest, opts)


def _action_path(which: str, body) -> str:  # noqa: ANN001
    if which == "copy":
        return f"{body.src} -> {body.dest}"
    if which == "symlink":
        return f"{body.newpath} -> {body.oldpath}"
    return body.path


@contextlib.contextmanager
def _empty_dir():  # noqa: ANN202
    import tempfile
    with tempfile.TemporaryDirectory(prefix="buildkitpy-scratch-") as d:
        yield d


def _go_base(p: str) -> str:
    """Go's ``path.Base``."""
    if not p:
        return "."
    p = p.rstrip("/")
    return posixpath.basename(p) if p else "/"


def _default_indexes(indexes: list[list[int]]) -> bool:
    """BuildKit's ``isDefaultIndexes``: a chain whose first action reads input 0, each next one the
    previous action, secondary inputs 1 or none, and only the last action an output (0)."""
    if not indexes:
        return False
    n = len(indexes)
    for i, (inp, secondary, output) in enumerate(indexes):
        if inp != (0 if i == 0 else n + i - 1):
            return False
        if secondary not in (-1, 1):
            return False
        if output != (0 if i == n - 1 else -1):
            return False
    return True


def _dedupe(sels: list[Selector]) -> list[Selector]:
    """Plain paths covered by a parent path are dropped; the result is sorted by path."""
    plain = {s for s in sels if not s.has_wildcard_or_filters and not s.required_paths}
    others = [s for s in sels if s not in plain]
    kept = []
    for s in plain:
        parent_covered = any(o is not s and o.follow_links == s.follow_links and
                             s.path.startswith(o.path.rstrip("/") + "/") for o in plain)
        if not parent_covered:
            kept.append(s)
    return sorted(set(kept) | set(others), key=lambda s: (s.path, s.key()))


__all__ = ["FileOp", "tarfile"]
