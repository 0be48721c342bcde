"""Decode and validate an LLB ``pb.Definition`` into a graph of vertices (sans-I/O).

Each ``Definition.def`` entry is a marshalled ``pb.Op``; its vertex digest is the sha256 of those
bytes. If an op references an input whose digest changes when recomputed (it never does for a
well-formed definition), the op is re-marshalled with the new input digests and hashed again, like
BuildKit's ``recomputeDigests``. The last op is the terminal op: it has no body and its ``inputs[0]``
selects the build result. Everything wrong with the input becomes ``InvalidArgument`` naming the
vertex, never an unhandled exception.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError, Message

from buildkitpy.api import ops_pb2
from buildkitpy.errors import InvalidArgument, SourceLocation

SCRATCH = -1  # pb.Empty: an input index meaning "no content"
SKIP_OUTPUT = -1  # pb.SkipOutput
OP_KINDS = ("exec", "source", "file", "build", "merge", "diff", "passthrough")
_MOUNT_TYPES = frozenset(ops_pb2.MountType.values())
_SHARING_MODES = frozenset(ops_pb2.CacheSharingOpt.values())
_NET_MODES = frozenset(ops_pb2.NetMode.values())
_SECURITY_MODES = frozenset(ops_pb2.SecurityMode.values())
_PLATFORM_COMPONENT = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class InputRef:
    """One output of a vertex: what an op input or the build result points at."""

    digest: str
    index: int


@dataclass
class Vertex:
    digest: str
    op: ops_pb2.Op
    kind: str
    inputs: list[InputRef]
    name: str
    num_outputs: int
    metadata: ops_pb2.OpMetadata
    sources: list[SourceLocation] = field(default_factory=list)
    original_digest: str = ""

    @property
    def ignore_cache(self) -> bool:
        return self.metadata.ignore_cache

    @property
    def progress_group(self) -> ops_pb2.ProgressGroup | None:
        return self.metadata.progress_group if self.metadata.HasField("progress_group") else None


@dataclass
class LoadedGraph:
    """The vertices reachable from the result, in dependency order (inputs first)."""

    vertices: dict[str, Vertex]
    order: list[str]
    result: InputRef | None

    def vertex(self, digest: str) -> Vertex:
        return self.vertices[digest]


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def load_definition(defn: ops_pb2.Definition) -> LoadedGraph:
    raw_ops: list[bytes] = list(getattr(defn, "def"))  # `def` is a Python keyword
    if not raw_ops:
        return LoadedGraph({}, [], None)
    if len(raw_ops) < 2:
        raise InvalidArgument("invalid LLB definition: need at least 2 ops (one op and the terminal op), "
                              f"got {len(raw_ops)}")

    decoded: dict[str, ops_pb2.Op] = {}
    raw_by_digest: dict[str, bytes] = {}
    for i, data in enumerate(raw_ops):
        dgst = digest_of(data)
        op = ops_pb2.Op()
        try:
            op.ParseFromString(data)
        except DecodeError as exc:
            raise InvalidArgument(
                f"invalid LLB definition: op #{i} ({dgst}) cannot be decoded: {exc}") from exc
        decoded[dgst] = op
        raw_by_digest[dgst] = data

    terminal_digest = digest_of(raw_ops[-1])
    terminal = decoded[terminal_digest]
    if terminal.WhichOneof("op") is not None:
        raise InvalidArgument(f"invalid LLB definition: the last op {terminal_digest} must be the terminal "
                              f"op (no op body), found a {terminal.WhichOneof('op')} op")
    if len(terminal.inputs) != 1:
        raise InvalidArgument(f"invalid LLB definition: the terminal op must have exactly 1 input, got "
                              f"{len(terminal.inputs)}")

    recomputed = _recompute_digests(decoded, raw_by_digest, terminal.inputs[0].digest)
    sources = _source_locations(defn)

    vertices: dict[str, Vertex] = {}
    # Dependency order: iterative post-order DFS from the result (definitions can be deep chains).
    order: list[str] = []
    for orig in _post_order(decoded, terminal.inputs[0].digest):
        op = decoded[orig]
        new = recomputed[orig]
        kind = op.WhichOneof("op")
        if kind is None:
            raise InvalidArgument(f"invalid LLB vertex {orig}: unknown or missing op type (only the last op "
                                  "may have no body)")
        metadata = defn.metadata.get(orig) if orig in defn.metadata else ops_pb2.OpMetadata()
        inputs = [InputRef(recomputed[inp.digest], inp.index) for inp in op.inputs]
        for pos, inp in enumerate(inputs):
            src = vertices[inp.digest]
            if inp.index < 0 or inp.index >= src.num_outputs:
                raise InvalidArgument(f"invalid LLB vertex {orig}: input {pos} selects output {inp.index} of "
                                      f"{src.digest} ({src.name}), which has {src.num_outputs} output(s)")
        valid_key = _validation_key(kind, op)
        num_outputs = _VALID_OPS.get(valid_key)
        if num_outputs is None:
            num_outputs = _validate_op(orig, kind, op)
            if len(_VALID_OPS) >= MAX_VALID_OPS:
                _VALID_OPS.clear()
            _VALID_OPS[valid_key] = num_outputs
        name = metadata.description.get("llb.customname") or _op_name(kind, op, inputs, vertices)
        vertex = Vertex(digest=new, op=op, kind=kind, inputs=inputs, name=name, num_outputs=num_outputs,
                        metadata=metadata, sources=sources.get(orig, []), original_digest=orig)
        vertices[new] = vertex
        order.append(new)

    res = terminal.inputs[0]
    result = InputRef(recomputed[res.digest], res.index)
    top = vertices[result.digest]
    if res.index < 0 or res.index >= top.num_outputs:
        raise InvalidArgument(f"invalid LLB definition: the result selects output {res.index} of "
                              f"{top.digest} ({top.name}), which has {top.num_outputs} output(s)")
    return LoadedGraph(vertices, order, result)


def _post_order(decoded: dict[str, ops_pb2.Op], root: str) -> list[str]:
    """Inputs before users; raises on missing inputs and cycles."""
    if root not in decoded:
        raise InvalidArgument(f"invalid LLB definition: the terminal op references {root}, which is not in "
                              "the definition")
    done: set[str] = set()
    on_stack: set[str] = set()
    out: list[str] = []
    stack: list[tuple[str, int]] = [(root, 0)]
    on_stack.add(root)
    while stack:
        dgst, pos = stack[-1]
        op = decoded[dgst]
        if pos < len(op.inputs):
            stack[-1] = (dgst, pos + 1)
            child = op.inputs[pos].digest
            if child in done:
                continue
            if child in on_stack:
                raise InvalidArgument(f"invalid LLB vertex {dgst}: input {pos} ({child}) forms a cycle")
            if child not in decoded:
                raise InvalidArgument(f"invalid LLB vertex {dgst}: input {pos} references "
                                      f"{child or '<empty>'}, which is not in the definition")
            on_stack.add(child)
            stack.append((child, 0))
        else:
            stack.pop()
            on_stack.discard(dgst)
            done.add(dgst)
            out.append(dgst)
    return out


def _recompute_digests(decoded: dict[str, ops_pb2.Op], raw: dict[str, bytes], root: str) -> dict[str, str]:
    """Original digest -> digest after recomputing inputs (identical for well-formed definitions)."""
    mapping: dict[str, str] = {}
    for dgst in _post_order(decoded, root):
        op = decoded[dgst]
        if any(mapping[inp.digest] != inp.digest for inp in op.inputs):
            copy = ops_pb2.Op()
            copy.CopyFrom(op)
            for inp in copy.inputs:
                inp.digest = mapping[inp.digest]
            mapping[dgst] = digest_of(copy.SerializeToString(deterministic=True))
        else:
            mapping[dgst] = digest_of(raw[dgst])
    return mapping


def _source_locations(defn: ops_pb2.Definition) -> dict[str, list[SourceLocation]]:
    if not defn.HasField("Source"):
        return {}
    infos = defn.Source.infos
    out: dict[str, list[SourceLocation]] = {}
    for dgst, locs in defn.Source.locations.items():
        by_index: dict[int, SourceLocation] = {}
        for loc in locs.locations:
            if loc.sourceIndex < 0 or loc.sourceIndex >= len(infos):
                continue  # a broken location must not turn a build error into a different error
            info = infos[loc.sourceIndex]
            sl = by_index.get(loc.sourceIndex)
            if sl is None:
                sl = SourceLocation(filename=info.filename, data=info.data,
                                    language=info.language or "Dockerfile")
                by_index[loc.sourceIndex] = sl
            for r in loc.ranges:
                sl.ranges.append((r.start.line, r.start.character, r.end.line, r.end.character))
        out[dgst] = list(by_index.values())
    return out


# -- names, as BuildKit shows them when the frontend gave none -----------------------------------

def _op_name(kind: str, op: ops_pb2.Op, inputs: list[InputRef], vertices: dict[str, Vertex]) -> str:
    if kind == "source":
        return op.source.identifier
    if kind == "exec":
        return " ".join(op.exec.meta.args)
    if kind == "file":
        return ", ".join(_file_action_name(a) for a in op.file.actions)
    if kind == "build":
        return "build"
    if kind == "merge":
        return "merge (" + ", ".join(vertices[i.digest].name for i in inputs) + ")"
    if kind == "diff":
        def side(idx: int) -> str:
            return "scratch" if idx == SCRATCH else f"({vertices[inputs[idx].digest].name})"
        return f"diff {side(op.diff.lower.input)} -> {side(op.diff.upper.input)}"
    if kind == "passthrough":
        return "passthrough " + op.passthrough.id
    return "unknown"


def _file_action_name(a: ops_pb2.FileAction) -> str:
    which = a.WhichOneof("action")
    if which == "mkdir":
        return f"mkdir {a.mkdir.path}"
    if which == "mkfile":
        return f"mkfile {a.mkfile.path}"
    if which == "symlink":
        return f"symlink {a.symlink.newpath} -> {a.symlink.oldpath}"
    if which == "rm":
        return f"rm {a.rm.path}"
    if which == "copy":
        return f"copy {a.copy.src} {a.copy.dest}"
    return "unknown"


# -- per-op validation: returns the number of outputs --------------------------------------------

def _bad(dgst: str, msg: str) -> InvalidArgument:
    return InvalidArgument(f"invalid LLB vertex {dgst}: {msg}")


def _nul_field(msg: Message, path: str = "") -> str | None:
    """The path of the first string field (at any depth) holding a NUL byte: no path, argument,
    environment entry or name can contain one, and the OS would refuse it much later and less
    clearly ("embedded null byte")."""
    for fd, value in msg.ListFields():
        name = f"{path}.{fd.name}" if path else fd.name
        if fd.message_type is not None:
            if fd.message_type.GetOptions().map_entry:
                for k, v in value.items():
                    if "\0" in k or (isinstance(v, str) and "\0" in v):
                        return f"{name}[{k!r}]"
                    if isinstance(v, Message) and (found := _nul_field(v, f"{name}[{k!r}]")):
                        return found
            else:
                items = value if fd.is_repeated else [value]
                for i, item in enumerate(items):
                    where = f"{name}[{i}]" if fd.is_repeated else name
                    if found := _nul_field(item, where):
                        return found
        elif fd.type == fd.TYPE_STRING:
            items = value if fd.is_repeated else [value]
            for i, item in enumerate(items):
                if "\0" in item:
                    return f"{name}[{i}]" if fd.is_repeated else name
    return None


def _validate_platform(dgst: str, op: ops_pb2.Op) -> None:
    if not op.HasField("platform"):
        return
    p = op.platform
    for label, value in (("OS", p.OS), ("architecture", p.Architecture), ("variant", p.Variant)):
        if (value or label == "variant") and not _PLATFORM_COMPONENT.fullmatch(value or "x"):
            raise _bad(dgst, f"invalid platform {label} {value[:100]!r} (letters, digits, '_', '.' and '-')")
        if value in (".", ".."):
            raise _bad(dgst, f"invalid platform {label} {value!r}")


# Ops that passed ``_validate_op``, by ``_validation_key``, with their number of outputs: a graph
# is loaded again for every build, and walking every field of every op for NUL bytes was a third
# of loading 500 ops.
# Keyed by a digest, not the bytes: a client's ops can be megabytes each (inline file data).
MAX_VALID_OPS = 65536
_VALID_OPS: dict[bytes, int] = {}


def _validation_key(kind: str, op: ops_pb2.Op) -> bytes:
    """The digest of what ``_validate_op`` reads of an op in the graph: all of it but its inputs'
    digests (those are digests of ops in the definition: no NUL byte to find), which are new for
    every build downstream of a local source (its session is in its op)."""
    h = hashlib.sha256(b"%s\0%d\0" % (kind.encode(), len(op.inputs)))
    platform = op.platform.SerializeToString(deterministic=True) if op.HasField("platform") else b"-"
    constraints = op.constraints.SerializeToString(deterministic=True) if op.HasField("constraints") else b"-"
    for part in (getattr(op, kind).SerializeToString(deterministic=True), platform, constraints):
        h.update(b"%d:" % len(part))
        h.update(part)
    return h.digest()


def _validate_op(dgst: str, kind: str, op: ops_pb2.Op) -> int:
    if where := _nul_field(op):
        raise _bad(dgst, f"{where} contains a NUL byte")
    _validate_platform(dgst, op)
    n_inputs = len(op.inputs)
    if kind == "source":
        ident = op.source.identifier
        if "://" not in ident:
            raise _bad(dgst, f"source identifier {ident!r} has no scheme (expected e.g. local://name)")
        if n_inputs:
            raise _bad(dgst, "a source op takes no inputs")
        return 1
    if kind == "exec":
        return _validate_exec(dgst, op.exec, n_inputs)
    if kind == "file":
        return _validate_file(dgst, op.file, n_inputs)
    if kind == "merge":
        if not op.merge.inputs:
            raise _bad(dgst, "merge op has no inputs")
        for i, m in enumerate(op.merge.inputs):
            if m.input < 0 or m.input >= n_inputs:
                raise _bad(dgst, f"merge input {i} uses op input {m.input}, op has {n_inputs} input(s)")
        return 1
    if kind == "diff":
        if not op.diff.HasField("lower") or not op.diff.HasField("upper"):
            raise _bad(dgst, "diff op needs both lower and upper")
        for side, idx in (("lower", op.diff.lower.input), ("upper", op.diff.upper.input)):
            if idx != SCRATCH and (idx < 0 or idx >= n_inputs):
                raise _bad(dgst, f"diff {side} uses op input {idx}, op has {n_inputs} input(s)")
        return 1
    if kind == "build":
        return 1
    if kind == "passthrough":
        return max(1, len(op.passthrough.outputs))
    raise _bad(dgst, f"unknown op type {kind!r}")


def _validate_exec(dgst: str, ex: ops_pb2.ExecOp, n_inputs: int) -> int:
    if not ex.HasField("meta") or not ex.meta.args:
        raise _bad(dgst, "exec op has no command (meta.args is empty)")
    if ex.network not in _NET_MODES:
        raise _bad(dgst, f"exec op has unknown network mode {ex.network}")
    if ex.security not in _SECURITY_MODES:
        raise _bad(dgst, f"exec op has unknown security mode {ex.security}")
    outputs: set[int] = set()
    has_root = False
    for i, m in enumerate(ex.mounts):
        where = f"mount {i} ({m.dest or '<no dest>'})"
        if m.mountType not in _MOUNT_TYPES:
            raise _bad(dgst, f"{where} has unknown mount type {m.mountType}")
        if not m.dest.startswith("/"):
            raise _bad(dgst, f"{where}: destination must be an absolute path")
        if m.input != SCRATCH and (m.input < 0 or m.input >= n_inputs):
            raise _bad(dgst, f"{where} uses op input {m.input}, op has {n_inputs} input(s)")
        # Only bind mounts produce outputs; other types leave `output` at its proto default (0).
        if m.mountType == ops_pb2.BIND and m.output != SKIP_OUTPUT:
            if m.output < 0:
                raise _bad(dgst, f"{where} has invalid output index {m.output}")
            if m.output in outputs:
                raise _bad(dgst, f"{where} reuses output index {m.output}")
            outputs.add(m.output)
        if m.mountType == ops_pb2.CACHE:
            if not m.HasField("cacheOpt"):
                raise _bad(dgst, f"{where}: cache mount without cacheOpt")
            if m.cacheOpt.sharing not in _SHARING_MODES:
                raise _bad(dgst, f"{where}: unknown cache sharing mode {m.cacheOpt.sharing}")
        elif m.mountType == ops_pb2.SECRET:
            if not m.HasField("secretOpt") or not m.secretOpt.ID:
                raise _bad(dgst, f"{where}: secret mount without a secret id")
        elif m.mountType == ops_pb2.TMPFS and m.input != SCRATCH:
            raise _bad(dgst, f"{where}: a tmpfs mount takes no input")
        if m.dest == "/":
            if m.mountType != ops_pb2.BIND:
                raise _bad(dgst, f"{where}: the root mount must be a bind mount")
            has_root = True
    if not has_root:
        raise _bad(dgst, "exec op has no root mount (dest \"/\")")
    for i in range(len(outputs)):
        if i not in outputs:
            raise _bad(dgst, f"exec op outputs are not contiguous: output {i} is missing")
    return len(outputs)


def _validate_file(dgst: str, fo: ops_pb2.FileOp, n_inputs: int) -> int:
    if not fo.actions:
        raise _bad(dgst, "file op has no actions")
    n_actions = len(fo.actions)
    limit = n_inputs + n_actions
    outputs: set[int] = set()
    for i, a in enumerate(fo.actions):
        where = f"file action {i}"
        which = a.WhichOneof("action")
        if which is None:
            raise _bad(dgst, f"{where} has no (or an unknown) action type")
        for label, idx in (("input", a.input), ("secondaryInput", a.secondaryInput)):
            if idx < SCRATCH or idx >= limit:
                raise _bad(dgst, f"{where}: {label} {idx} is out of range (op has {n_inputs} input(s) and "
                                 f"{n_actions} action(s))")
            if idx >= n_inputs and idx - n_inputs >= i:
                raise _bad(dgst, f"{where}: {label} {idx} refers to action {idx - n_inputs}, which does not "
                                 "come before it")
        if a.output != SKIP_OUTPUT:
            if a.output < 0:
                raise _bad(dgst, f"{where} has invalid output index {a.output}")
            if a.output in outputs:
                raise _bad(dgst, f"{where}: duplicate output {a.output}")
            outputs.add(a.output)
        body = getattr(a, which)
        if which in ("mkdir", "mkfile", "rm") and not body.path:
            raise _bad(dgst, f"{where}: {which} needs a path")
        if which == "symlink" and (not body.newpath or not body.oldpath):
            raise _bad(dgst, f"{where}: symlink needs oldpath and newpath")
        if which == "copy" and (not body.src or not body.dest):
            raise _bad(dgst, f"{where}: copy needs src and dest")
        if which != "copy" and a.secondaryInput != SCRATCH:
            raise _bad(dgst, f"{where}: only copy takes a secondaryInput")
        if which in ("mkdir", "mkfile", "symlink", "copy") and body.HasField("owner"):
            for label in ("user", "group"):
                if not body.owner.HasField(label):
                    continue
                uo = getattr(body.owner, label)
                if uo.WhichOneof("user") == "byName":
                    if not uo.byName.name:
                        raise _bad(dgst, f"{where}: owner {label} by name has an empty name")
                    if uo.byName.input < 0 or uo.byName.input >= limit:
                        raise _bad(dgst, f"{where}: owner {label} reads names from input {uo.byName.input}, "
                                         "which is out of range")
                    if uo.byName.input >= n_inputs and uo.byName.input - n_inputs >= i:
                        raise _bad(dgst, f"{where}: owner {label} reads names from action "
                                         f"{uo.byName.input - n_inputs}, which does not come before it")
    if not outputs:
        raise _bad(dgst, "file op has no outputs")
    for i in range(len(outputs)):
        if i not in outputs:
            raise _bad(dgst, f"file op outputs are not contiguous: output {i} is missing")
    return len(outputs)
