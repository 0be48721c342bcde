"""File ops: chains of mkdir / mkfile / rm / symlink / copy actions (client/llb ``fileop.go``).

A chain ``mkdir(...).mkfile(...)`` becomes one ``FileOp``: each action's ``input`` is either an op
input index or, for a chained action, ``len(inputs) + index of the previous action``; only the last
action has an output.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Unpack

from buildkitpy.api import ops_pb2

from . import caps, pathutil
from .constraints import Constraints, OpOptions, marshal_constraints
from .errors import LLBError
from .state import State
from .vertex import MarshalContext, MarshalledOp, Output, Vertex

UserSpec = int | str  # uid, or a name looked up in the target's /etc/passwd (/etc/group)
Timestamp = datetime | int  # datetime or nanoseconds since the epoch


@dataclass(frozen=True)
class Chown:
    user: UserSpec | None = None
    group: UserSpec | None = None

    @classmethod
    def parse(cls, spec: ChownSpec | None) -> Chown | None:
        """``"user[:group]"`` (numbers are ids, ``root`` is 0), ``(uid, gid)`` or a ``Chown``."""
        if spec is None or isinstance(spec, Chown):
            return spec
        if isinstance(spec, tuple):
            uid, gid = spec
            return cls(int(uid), int(gid))
        parts = spec.split(":", 1)
        return cls(*(_parse_id(p) for p in parts))

    def to_pb(self, base: int) -> ops_pb2.ChownOpt:
        opt = ops_pb2.ChownOpt()
        for field, value in (("user", self.user), ("group", self.group)):
            if value is None:
                continue
            if isinstance(value, str) and value:
                getattr(opt, field).byName.CopyFrom(ops_pb2.NamedUserOpt(name=value, input=base))
            else:
                getattr(opt, field).byID = int(value or 0)
        return opt


ChownSpec = str | tuple[int, int] | Chown


_DECIMAL = re.compile(r"[+-]?[0-9]+")


def _parse_id(value: str) -> UserSpec:
    """client/llb's ``parseUID``: a 32-bit signed decimal (Go's ``ParseInt``, so no spaces or ``_``) is
    an id, anything else a name. A negative id is sent as Go converts it, modulo 2**32 (-1 is
    4294967295: chown's "leave unchanged")."""
    if value == "root":
        return 0
    if not _DECIMAL.fullmatch(value):
        return value
    uid = int(value, 10)
    if not -(2**31) <= uid < 2**31:
        return value
    return uid & 0xFFFFFFFF


def _timestamp(t: Timestamp | None) -> int:
    if t is None:
        return -1
    if isinstance(t, datetime):
        return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000
    return int(t)


def _normalize(parent: str, p: str, keep_slash: bool = False) -> str:
    out = pathutil.clean(p)
    if not pathutil.is_abs(out):
        out = pathutil.join("/", parent, out)
    if keep_slash:
        if p.endswith("/") and not out.endswith("/"):
            out += "/"
        elif p.endswith("/."):
            out = (out if out == "/" else out + "/") + "."
    return out


# ---- the five actions ----
@dataclass(frozen=True)
class _Mkdir:
    path: str
    mode: int
    make_parents: bool
    chown: Chown | None
    created: Timestamp | None

    def to_pb(self, parent: str, base: int) -> ops_pb2.FileAction:
        return ops_pb2.FileAction(mkdir=ops_pb2.FileActionMkDir(
            path=_normalize(parent, self.path), mode=self.mode & 0o777, makeParents=self.make_parents,
            owner=self.chown.to_pb(base) if self.chown else None, timestamp=_timestamp(self.created)))


@dataclass(frozen=True)
class _Mkfile:
    path: str
    mode: int
    data: bytes
    chown: Chown | None
    created: Timestamp | None

    def to_pb(self, parent: str, base: int) -> ops_pb2.FileAction:
        return ops_pb2.FileAction(mkfile=ops_pb2.FileActionMkFile(
            path=_normalize(parent, self.path), mode=self.mode & 0o777, data=self.data,
            owner=self.chown.to_pb(base) if self.chown else None, timestamp=_timestamp(self.created)))


@dataclass(frozen=True)
class _Rm:
    path: str
    allow_not_found: bool
    allow_wildcard: bool

    def to_pb(self, parent: str, base: int) -> ops_pb2.FileAction:
        return ops_pb2.FileAction(rm=ops_pb2.FileActionRm(
            path=_normalize(parent, self.path), allowNotFound=self.allow_not_found,
            allowWildcard=self.allow_wildcard))


@dataclass(frozen=True)
class _Symlink:
    oldpath: str
    newpath: str
    chown: Chown | None
    created: Timestamp | None

    def to_pb(self, parent: str, base: int) -> ops_pb2.FileAction:
        # BuildKit does not resolve symlink paths against the working directory.
        return ops_pb2.FileAction(symlink=ops_pb2.FileActionSymlink(
            oldpath=self.oldpath, newpath=self.newpath,
            owner=self.chown.to_pb(base) if self.chown else None, timestamp=_timestamp(self.created)))


@dataclass(frozen=True)
class CopyOptions:
    mode: int | str | None = None  # int bits, or a chmod string like "u+x" (needs file.copy.modestring)
    chown: Chown | None = None
    follow_symlinks: bool = False
    copy_dir_contents: bool = False
    include_patterns: tuple[str, ...] = ()
    exclude_patterns: tuple[str, ...] = ()
    required_paths: tuple[str, ...] = ()
    attempt_unpack: bool = False
    create_dest_path: bool = False
    allow_wildcard: bool = False
    allow_empty_wildcard: bool = False
    always_replace_existing_dest_paths: bool = False
    created: Timestamp | None = None


@dataclass(frozen=True)
class _Copy:
    source: State | BoundFileAction
    src: str
    dest: str
    opts: CopyOptions

    def source_path(self) -> str:
        p = pathutil.clean(self.src)
        if pathutil.is_abs(p):
            return pathutil.join("/", p)
        state = self.source if isinstance(self.source, State) else self.source.action.state
        return pathutil.join(state.get_dir() if state is not None else "/", p)

    def to_pb(self, parent: str, base: int) -> ops_pb2.FileAction:
        o = self.opts
        c = ops_pb2.FileActionCopy(
            src=self.source_path(), dest=_normalize(parent, self.dest, keep_slash=True),
            owner=o.chown.to_pb(base) if o.chown else None, include_patterns=o.include_patterns,
            exclude_patterns=o.exclude_patterns, required_paths=o.required_paths,
            allowWildcard=o.allow_wildcard, allowEmptyWildcard=o.allow_empty_wildcard,
            followSymlink=o.follow_symlinks, dirCopyContents=o.copy_dir_contents,
            attemptUnpackDockerCompatibility=o.attempt_unpack, createDestPath=o.create_dest_path,
            timestamp=_timestamp(o.created),
            alwaysReplaceExistingDestPaths=o.always_replace_existing_dest_paths)
        if isinstance(o.mode, str) and o.mode:
            c.modeStr = o.mode
        else:
            c.mode = -1 if o.mode is None or o.mode == "" else int(o.mode)
        return ops_pb2.FileAction(copy=c)


_SubAction = _Mkdir | _Mkfile | _Rm | _Symlink | _Copy


class FileAction:
    """An immutable chain of file actions; start one with :func:`mkdir`, :func:`mkfile`, :func:`rm`,
    :func:`symlink` or :func:`copy` and extend it with the methods of the same names."""

    __slots__ = ("action", "prev", "state")

    def __init__(self, action: _SubAction, prev: FileAction | None = None, state: State | None = None):
        self.action = action
        self.prev = prev
        self.state = state  # the state the chain operates on, set when bound by State.file

    def _then(self, other: FileAction) -> FileAction:
        return FileAction(other.action, self)

    def mkdir(self, path: str, mode: int, **kw) -> FileAction:
        return self._then(mkdir(path, mode, **kw))

    def mkfile(self, path: str, mode: int, data: bytes | str, **kw) -> FileAction:
        return self._then(mkfile(path, mode, data, **kw))

    def rm(self, path: str, **kw) -> FileAction:
        return self._then(rm(path, **kw))

    def symlink(self, oldpath: str, newpath: str, **kw) -> FileAction:
        return self._then(symlink(oldpath, newpath, **kw))

    def copy(self, source: CopyInput, src: str, dest: str, **kw) -> FileAction:
        return self._then(copy(source, src, dest, **kw))

    def bind(self, state: State) -> FileAction:
        """This chain applied to ``state`` (every action resolves relative paths against its dir)."""
        return FileAction(self.action, self.prev.bind(state) if self.prev else None, state)

    def with_state(self, state: State) -> BoundFileAction:
        """Use the result of this chain applied to ``state`` as a copy source."""
        return BoundFileAction(self.bind(state))

    def chain(self) -> list[FileAction]:
        out: list[FileAction] = []
        node: FileAction | None = self
        while node is not None:
            out.append(node)
            node = node.prev
        return out[::-1]


@dataclass(frozen=True, eq=False)
class BoundFileAction:
    action: FileAction


CopyInput = State | BoundFileAction


def mkdir(path: str, mode: int, *, make_parents: bool = False, chown: ChownSpec | None = None,
          created: Timestamp | None = None) -> FileAction:
    return FileAction(_Mkdir(path, mode, make_parents, Chown.parse(chown), created))


def mkfile(path: str, mode: int, data: bytes | str, *, chown: ChownSpec | None = None,
           created: Timestamp | None = None) -> FileAction:
    data = data.encode() if isinstance(data, str) else bytes(data)
    return FileAction(_Mkfile(path, mode, data, Chown.parse(chown), created))


def rm(path: str, *, allow_not_found: bool = False, allow_wildcard: bool = False) -> FileAction:
    return FileAction(_Rm(path, allow_not_found, allow_wildcard))


def symlink(oldpath: str, newpath: str, *, chown: ChownSpec | None = None,
            created: Timestamp | None = None) -> FileAction:
    """Create ``newpath`` pointing to ``oldpath``."""
    return FileAction(_Symlink(oldpath, newpath, Chown.parse(chown), created))


def copy(source: CopyInput, src: str, dest: str, *, mode: int | str | None = None,
         chown: ChownSpec | None = None, follow_symlinks: bool = False, copy_dir_contents: bool = False,
         include_patterns: Sequence[str] = (), exclude_patterns: Sequence[str] = (),
         required_paths: Sequence[str] = (), attempt_unpack: bool = False, create_dest_path: bool = False,
         allow_wildcard: bool = False, allow_empty_wildcard: bool = False,
         always_replace_existing_dest_paths: bool = False, created: Timestamp | None = None) -> FileAction:
    """Copy ``src`` of ``source`` (a state, or ``action.with_state(state)``) to ``dest``."""
    if not isinstance(source, (State, BoundFileAction)):
        raise LLBError(f"invalid input type {type(source).__name__} for copy: expected a State")
    opts = CopyOptions(mode, Chown.parse(chown), follow_symlinks, copy_dir_contents, tuple(include_patterns),
                       tuple(exclude_patterns), tuple(required_paths), attempt_unpack, create_dest_path,
                       allow_wildcard, allow_empty_wildcard, always_replace_existing_dest_paths, created)
    return FileAction(_Copy(source, src, dest, opts))


@dataclass(eq=False)
class _ActionSlot:
    node: FileAction
    base: int = -1
    input: int = -1
    input_relative: int | None = None
    secondary: int = -1
    secondary_relative: int | None = None
    target: int = 0


class _FileOpBuilder:
    """Assigns op inputs and action indexes, visiting chains depth-first like client/llb."""

    def __init__(self, ctx: MarshalContext) -> None:
        self.ctx = ctx
        self.inputs: list[ops_pb2.Input] = []
        self.slots: list[_ActionSlot] = []
        self._visited: dict[int, _ActionSlot] = {}

    def add_input(self, output: Output) -> int:
        inp = output.to_input(self.ctx)
        for i, existing in enumerate(self.inputs):
            if existing == inp:
                return i
        self.inputs.append(inp)
        return len(self.inputs) - 1

    def add(self, node: FileAction) -> _ActionSlot:
        if id(node) in self._visited:
            return self._visited[id(node)]
        prev = self.add(node.prev) if node.prev is not None else None
        slot = _ActionSlot(node)
        if node.state is not None and node.state.output is not None:
            slot.base = self.add_input(node.state.output)
        if prev is None:
            slot.input = slot.base
        else:
            slot.input_relative = prev.target
        action = node.action
        if isinstance(action, _Copy):
            if isinstance(action.source, State):
                if action.source.output is not None:
                    slot.secondary = self.add_input(action.source.output)
            else:
                slot.secondary_relative = self.add(action.source.action).target
        slot.target = len(self.slots)
        self._visited[id(node)] = slot
        self.slots.append(slot)
        return slot

    def index(self, absolute: int, relative: int | None) -> int:
        return len(self.inputs) + relative if relative is not None else absolute


class FileOp(Vertex):
    def __init__(self, state: State, action: FileAction, constraints: Constraints) -> None:
        self.action = action.bind(state)
        self.constraints = constraints
        self.output = Output(self, 0)

    def inputs(self) -> list[Output]:
        """Outputs from the last action backwards (client/llb's ``allOutputs`` order)."""
        outputs: list[Output] = []

        def add(out: Output | None) -> None:
            if out is not None and all(out is not o for o in outputs):
                outputs.append(out)

        def walk(node: FileAction | None) -> None:
            while node is not None:
                if node.state is not None:
                    add(node.state.output)
                if isinstance(node.action, _Copy):
                    if isinstance(node.action.source, State):
                        add(node.action.source.output)
                    else:
                        walk(node.action.source.action)
                node = node.prev

        walk(self.action)
        return outputs

    def _marshal(self, ctx: MarshalContext) -> MarshalledOp:
        # client/llb only ever adds file.base: its loop adding the per-action caps (modestring,
        # include/exclude patterns, ...) runs over an empty list, so we add exactly what it does.
        c = self.constraints.with_cap(caps.FILE_BASE)
        op, md = marshal_constraints(ctx.constraints, c, ctx.default_platform)
        op.ClearField("platform")
        builder = _FileOpBuilder(ctx)
        builder.add(self.action)
        op.inputs.extend(builder.inputs)
        file_pb = ops_pb2.FileOp()
        for i, slot in enumerate(builder.slots):
            state = slot.node.state
            pb_action = slot.node.action.to_pb(state.get_dir() if state is not None else "", slot.base)
            pb_action.input = builder.index(slot.input, slot.input_relative)
            pb_action.secondaryInput = builder.index(slot.secondary, slot.secondary_relative)
            pb_action.output = 0 if i == len(builder.slots) - 1 else -1
            file_pb.actions.append(pb_action)
        op.file.CopyFrom(file_pb)
        return MarshalledOp.of(op, md, c.locations)


def file_op(state: State, action: FileAction, **options: Unpack[OpOptions]) -> State:
    if not isinstance(action, FileAction):
        raise LLBError(f"file: expected a FileAction (llb.mkdir/mkfile/rm/symlink/copy), got {action!r}")
    return state.with_output(FileOp(state, action, Constraints.from_options(options)).output)
