"""``marshal(state) -> pb.Definition``, byte-compatible with client/llb's ``State.Marshal``."""

from __future__ import annotations

import secrets
import string
from collections.abc import Collection
from typing import Unpack, cast

from buildkitpy.api import ops_pb2

from . import caps as capids
from .constraints import Constraints, Metadata, OpOptions
from .platform import Platform, default_platform
from .sourcemap import SourceLocation, SourceMap
from .state import State
from .vertex import MarshalContext, Vertex, digest_of

_ID_ALPHABET = string.digits + string.ascii_lowercase


def new_id() -> str:
    """A random 25-character id like BuildKit's ``identity.NewID``: 128 random bits in base 36,
    zero-padded (36**25 > 2**128). One read of the system's randomness (``secrets.choice`` per
    character was 50 getrandom calls for the two ids of a Dockerfile build, on the event loop)."""
    n = int.from_bytes(secrets.token_bytes(16), "big")
    digits = []
    for _ in range(25):
        n, d = divmod(n, 36)
        digits.append(_ID_ALPHABET[d])
    return "".join(reversed(digits))


class _Collector:
    def __init__(self) -> None:
        self.ops: list[bytes] = []
        self.metadata: dict[str, Metadata] = {}
        self.seen_digests: set[str] = set()
        self.seen_vertices: set[int] = set()
        self.source_maps: list[SourceMap] = []
        self.locations: dict[str, list[SourceLocation]] = {}

    def add_locations(self, dgst: str, locations: tuple[SourceLocation, ...]) -> None:
        for loc in locations:
            if not any(loc.source_map is m or loc.source_map.same_file(m) for m in self.source_maps):
                self.source_maps.append(loc.source_map)
        self.locations.setdefault(dgst, []).extend(locations)

    def source_index(self, sm: SourceMap) -> int:
        for i, m in enumerate(self.source_maps):
            if m is sm or m.same_file(sm):
                return i
        raise AssertionError("source map was not collected")


def _walk(root: Vertex, ctx: MarshalContext, col: _Collector) -> None:
    """Depth-first over inputs, then the vertex itself: a topological order with inputs first.
    Iterative (chains of thousands of ops are plausible), and every vertex is marshalled after its
    inputs, so marshalling one never recurses into them."""
    if id(root) in col.seen_vertices:
        return
    pending = {id(root)}
    stack = [(root, iter(root.inputs()))]
    while stack:
        vertex, inputs = stack[-1]
        for out in inputs:
            child = out.vertex
            if id(child) not in col.seen_vertices and id(child) not in pending:
                pending.add(id(child))
                stack.append((child, iter(child.inputs())))
                break
        else:
            stack.pop()
            _visit(vertex, ctx, col)


def _visit(vertex: Vertex, ctx: MarshalContext, col: _Collector) -> None:
    m = vertex.marshal(ctx)
    col.seen_vertices.add(id(vertex))
    col.metadata[m.digest] = col.metadata.get(m.digest, Metadata()).merged(m.metadata)
    col.add_locations(m.digest, m.locations)
    if m.digest not in col.seen_digests:
        col.seen_digests.add(m.digest)
        col.ops.append(m.data)


# `platform` is both a parameter and an OpOptions key: the parameter takes it (a str is parsed).
def marshal(state: State, *, platform: Platform | str | None = None,  # type: ignore[misc]
            caps: Collection[str] | None = None, local_unique_id: str | None = None,
            **options: Unpack[OpOptions]) -> ops_pb2.Definition:
    """The LLB definition of ``state``: ops in dependency order, then a terminal op selecting the result.

    ``platform`` is the default for ops that set none (the host's otherwise). ``caps`` are the LLB caps
    the daemon supports (``Pong.LLBCaps``); given, exec ops rely on ``exec.meta.setsdefaultpath`` or
    else get a default ``PATH``. ``options`` (``ignore_cache``, ``description``, ...) apply to every op.
    """
    if isinstance(platform, str):
        platform = Platform.parse(platform)
    base = Constraints.from_options(cast(OpOptions, options))
    base.platform = (platform or base.platform or default_platform()).normalized()
    ctx = MarshalContext(base, base.platform, frozenset(caps) if caps is not None else None,
                         local_unique_id or new_id())
    definition = ops_pb2.Definition()
    if state.output is None:
        return definition

    col = _Collector()
    _walk(state.output.vertex, ctx, col)
    terminal = ops_pb2.Op(inputs=[state.output.to_input(ctx)]).SerializeToString(deterministic=True)
    col.ops.append(terminal)
    terminal_md = col.metadata.get(digest_of(terminal), Metadata())
    terminal_md.caps |= {capids.CONSTRAINTS, capids.PLATFORM}
    for md in col.metadata.values():
        if md.ignore_cache:
            terminal_md.caps.add(capids.META_IGNORE_CACHE)
        if md.description:
            terminal_md.caps.add(capids.META_DESCRIPTION)
        if md.export_cache is not None:
            terminal_md.caps.add(capids.META_EXPORT_CACHE)
    col.metadata[digest_of(terminal)] = terminal_md

    getattr(definition, "def").extend(col.ops)
    for dgst, md in col.metadata.items():
        definition.metadata[dgst].CopyFrom(md.to_pb())
    definition.Source.SetInParent()
    for sm in col.source_maps:
        info = definition.Source.infos.add(data=sm.data, filename=sm.filename, language=sm.language)
        if sm.state is not None:
            info.definition.CopyFrom(marshal(sm.state, platform=platform, caps=caps,
                                             local_unique_id=local_unique_id, **options))
    for dgst, locations in col.locations.items():
        entry = definition.Source.locations[dgst]
        for loc in locations:
            entry.locations.add(sourceIndex=col.source_index(loc.source_map), ranges=list(loc.ranges))
    return definition


def head(definition: ops_pb2.Definition) -> str:
    """Digest of the result op: the terminal op's first input (``""`` for an empty definition)."""
    ops = getattr(definition, "def")
    if not ops:
        return ""
    terminal = ops_pb2.Op()
    terminal.ParseFromString(ops[-1])
    return terminal.inputs[0].digest if terminal.inputs else ""


def required_caps(definition: ops_pb2.Definition) -> set[str]:
    """Every LLB cap the definition's metadata names (what a daemon must advertise to accept it)."""
    return {cap for md in definition.metadata.values() for cap, on in md.caps.items() if on}
