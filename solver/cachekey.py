"""Cache keys: what makes two vertex results interchangeable.

Like BuildKit there are two phases. An op's ``CacheMap`` gives a definition digest (the op with
mutable or irrelevant fields removed) and, per input, a selector plus optionally a set of paths
whose *content* is hashed once the input's result exists. Keys are then:

- the fast key: definition digest + each input's key (+ selector); known before anything runs;
- the slow key: definition digest + for content-hashed inputs the content checksum, for the others
  the input's most stable key. This is how ``COPY . /`` after a freshly uploaded context (whose
  source key is random per session) still hits the cache when the files did not change.

Keys of an output carry two flags: ``ephemeral`` keys (derived from per-session local sources) are
never persisted; ``fresh`` outputs come from a run whose result was not validated against the cache
(local sources, ignore-cache), so consumers may not trust key-only matches on them.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field

from google.protobuf.descriptor import FieldDescriptor, OneofDescriptor
from google.protobuf.message import Message


@dataclass(frozen=True)
class Selector:
    """A path of an input whose content a cache key depends on."""

    path: str
    follow_links: bool = False
    wildcard: bool = False
    include_patterns: tuple[str, ...] = ()
    exclude_patterns: tuple[str, ...] = ()
    required_paths: tuple[str, ...] = ()

    @property
    def has_wildcard_or_filters(self) -> bool:
        return self.wildcard or bool(self.include_patterns) or bool(self.exclude_patterns)

    def key(self) -> str:
        return json.dumps([self.path, self.follow_links, self.wildcard, self.include_patterns,
                           self.exclude_patterns, self.required_paths], separators=(",", ":"))


@dataclass
class Dep:
    selector: str = ""  # digest scoping which part of the input the op uses ("" = all of it)
    content: list[Selector] | None = None  # content-hash these paths for the slow key


@dataclass
class CacheMap:
    digest: str
    deps: list[Dep] = field(default_factory=list)
    ephemeral: bool = False  # the op's own key is per-session (local sources): never persisted
    always_run: bool = False  # never look the op up (local sources re-sync every build)


@dataclass(frozen=True)
class OutputKeys:
    """The keys one output of a vertex is known by: the fast key, then (when it differs) the
    content-based key. ``fresh`` outputs come from a run whose result was not validated against
    the cache (local sources, ignore-cache): consumers may not trust key-only matches on them."""

    keys: tuple[CacheKey, ...]
    fresh: bool = False

    @property
    def primary(self) -> CacheKey:
        return self.keys[0]

    @property
    def stable(self) -> CacheKey:
        """The key least tied to a session: a non-ephemeral one if there is any."""
        for k in reversed(self.keys):
            if not k.ephemeral:
                return k
        return self.keys[-1]


def root_key_id(digest: str, output: int) -> str:
    """The id every storage gives a key without inputs (BuildKit's ``rootKey``: sha256 of
    ``"<digest>@<output>"``), so caches written elsewhere are found by the same id."""
    return "sha256:" + hashlib.sha256(f"{digest}@{output}".encode()).hexdigest()


@dataclass(frozen=True, eq=False)
class CacheKey:
    """One output of an op applied to particular input keys (BuildKit's ``CacheKey``).

    ``deps`` has one ``(input key, selector)`` per op input; a key without deps is a root (a
    source, or a content checksum standing for an input). ``id`` is the key's id in our own
    storage: the root id for roots, else a digest of the op digest, the output and the inputs'
    ids and selectors. ``ephemeral`` keys (per-session local sources and everything derived from
    them) are never written to a storage."""

    digest: str
    output: int = 0
    deps: tuple[tuple[CacheKey, str], ...] = ()
    ephemeral: bool = False
    id: str = field(init=False)

    def __post_init__(self) -> None:
        if not self.deps:
            kid = root_key_id(self.digest, self.output)
        else:
            kid = digest_json([self.digest, self.output, [[k.id, sel] for k, sel in self.deps]])
        object.__setattr__(self, "id", kid)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CacheKey) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"CacheKey({self.id[:19]}, digest={self.digest[:19]}, output={self.output}, " \
               f"deps={len(self.deps)})"


def sha256_text(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return "sha256:" + h.hexdigest()


def digest_json(obj: object) -> str:
    data = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(data.encode()).hexdigest()


def selector_digest(paths: list[str]) -> str:
    return "sha256:" + hashlib.sha256("\0".join(paths).encode()).hexdigest()


# --- BuildKit's own digests: Go's encoding/json of its structs and protobuf messages ------------


def go_digest(data: bytes | str) -> str:
    """``digest.FromBytes``."""
    return "sha256:" + hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def go_marshal(value: object) -> bytes:
    """``json.Marshal`` of ``value`` built from dicts (in struct field order), lists, strings, ints
    and bools: compact, HTML-safe escaping, non-ASCII kept as UTF-8."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text.encode()


def _go_name(name: str) -> str:
    """protoc-gen-go's Go name of a oneof (``user`` -> ``User``)."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def go_proto_value(msg: Message) -> dict[str, object]:
    """What ``json.Marshal`` writes for a protoc-gen-go message of BuildKit's ``solver/pb``: fields
    in declaration order under their proto names, zero values omitted (``omitempty``), enums and
    64-bit integers as numbers, bytes in base64, maps with sorted keys, a oneof under its Go name;
    plus the hand-written ``MarshalJSON`` of ``UserOpt`` and ``FileAction`` (``solver/pb/json.go``)."""
    desc = msg.DESCRIPTOR
    if desc.full_name == "pb.UserOpt":
        which = msg.WhichOneof("user")  # type: ignore[attr-defined]
        inner: dict[str, object] = {}
        if which == "byName":
            inner["byName"] = go_proto_value(msg.byName)  # type: ignore[attr-defined]
        elif which == "byID" and msg.byID:  # type: ignore[attr-defined]
            inner["byId"] = msg.byID  # type: ignore[attr-defined]
        return {"User": inner}
    if desc.full_name == "pb.FileAction":
        action: dict[str, object] = {}
        which = msg.WhichOneof("action")  # type: ignore[attr-defined]
        if which in ("copy", "mkfile", "mkdir", "rm"):
            action[which] = go_proto_value(getattr(msg, which))
        return {"input": msg.input, "secondaryInput": msg.secondaryInput,  # type: ignore[attr-defined]
                "output": msg.output, "Action": action}  # type: ignore[attr-defined]
    out: dict[str, object] = {}
    for f in desc.fields:
        oneof = f.containing_oneof
        if oneof is not None and not _synthetic(oneof):
            key = _go_name(oneof.name)
            if key in out:
                continue
            which = msg.WhichOneof(oneof.name)
            out[key] = None if which is None else \
                {_go_name(which): _go_field(msg, desc.fields_by_name[which])}
            continue
        if f.is_repeated:
            values = getattr(msg, f.name)
            if len(values) == 0:
                continue
            if f.message_type is not None and f.message_type.GetOptions().map_entry:
                vf = f.message_type.fields_by_name["value"]
                out[f.name] = {k: _go_scalar(values[k], vf) for k in sorted(values)}
            else:
                out[f.name] = [_go_scalar(v, f) for v in values]
            continue
        if f.has_presence:  # messages and proto3 optionals: pointers, left out when nil
            if msg.HasField(f.name):
                out[f.name] = _go_field(msg, f)
            continue
        value = getattr(msg, f.name)
        if value:
            out[f.name] = _go_scalar(value, f)
    return out


def _synthetic(oneof: OneofDescriptor) -> bool:
    return len(oneof.fields) == 1 and oneof.name == "_" + oneof.fields[0].name


def _go_field(msg: Message, f: FieldDescriptor) -> object:
    return _go_scalar(getattr(msg, f.name), f)


def _go_scalar(value: object, f: FieldDescriptor) -> object:
    if f.message_type is not None and isinstance(value, Message):
        return go_proto_value(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value
