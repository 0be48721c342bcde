"""Hypothesis strategies for arbitrary protobuf messages of a given type (every field kind, nested
messages to a depth, maps, oneofs), with values chosen to hit edges: negative and huge numbers,
NUL bytes, ``..``, absolute paths, digests, non-UTF-8 bytes."""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

TEXTS = ["", "/", ".", "..", "../..", "../../etc/passwd", "/etc", "a/../../b", "\x00", "a\x00b", "a",
         "sh", "-c", "local://context", "docker-image://docker.io/library/busybox:latest",
         "docker-image://", "git://x/y", "https://x/y", "sha256:" + "0" * 64, "sha256:", "linux", "amd64",
         "arm64", "v7", "..//..", "\udcff", "é", "*", "[", "$HOME", "root", "0:0", "-1", "#", "context",
         "local.sharedkeyhint", "llb.customname", "x" * 300]

_INT_EDGES = [0, 1, -1, 2, 7, 255, 256, 4095, 65535, 2**31 - 1, -(2**31), 2**32 - 1, 2**63 - 1, -(2**63)]


def texts() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(TEXTS), st.text(max_size=12),
                     st.text(alphabet="/.a-\\$*[]{}:@=\x00 ", max_size=16))


def _ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from([v for v in _INT_EDGES if lo <= v <= hi]), st.integers(lo, hi),
                     st.integers(-3, 8).filter(lambda v: lo <= v <= hi))


_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1), FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1), FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1), FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _repeated(field: FieldDescriptor) -> bool:
    flag = getattr(field, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return field.label == FieldDescriptor.LABEL_REPEATED


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _scalar(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    t = field.type
    if t in _RANGES:
        return _ints(*_RANGES[t])
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return st.floats(allow_nan=True, width=32 if t == FieldDescriptor.TYPE_FLOAT else 64)
    if t == FieldDescriptor.TYPE_STRING:
        return texts().map(lambda s: s.encode("utf-8", "surrogatepass").decode("utf-8", "replace"))
    if t == FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.binary(max_size=16), texts().map(lambda s: s.encode("utf-8", "surrogateescape")
                                                              if "\udcff" not in s else b"\xff"))
    if t == FieldDescriptor.TYPE_ENUM:
        values = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(values), st.integers(-2, 40))
    return messages(field.message_type, depth - 1)


def messages(descriptor: Descriptor, depth: int = 3) -> st.SearchStrategy[Message]:
    """Messages of ``descriptor``'s type; below ``depth`` nested messages are left empty."""
    from google.protobuf import message_factory

    cls = message_factory.GetMessageClass(descriptor)

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        msg = cls()
        if depth <= 0:
            return msg
        chosen_oneofs: dict[str, str] = {}
        for oneof in descriptor.oneofs:
            if oneof.fields and draw(st.booleans()):
                chosen_oneofs[oneof.name] = draw(st.sampled_from([f.name for f in oneof.fields]))
        for field in descriptor.fields:
            if field.containing_oneof is not None:
                if chosen_oneofs.get(field.containing_oneof.name) != field.name:
                    continue
            elif not draw(st.integers(0, 2)):  # a third of the fields left unset
                continue
            if _is_map(field):
                key_f = field.message_type.fields_by_name["key"]
                val_f = field.message_type.fields_by_name["value"]
                entries = draw(st.dictionaries(_scalar(key_f, depth), _scalar(val_f, depth), max_size=3))
                target = getattr(msg, field.name)
                for k, v in entries.items():
                    if val_f.message_type is not None:
                        target[k].CopyFrom(v)
                    else:
                        target[k] = v
            elif _repeated(field):
                values = draw(st.lists(_scalar(field, depth), max_size=3))
                target = getattr(msg, field.name)
                for v in values:
                    if field.message_type is not None:
                        target.add().CopyFrom(v)
                    else:
                        target.append(v)
            elif field.message_type is not None:
                getattr(msg, field.name).CopyFrom(draw(_scalar(field, depth)))
            else:
                setattr(msg, field.name, draw(_scalar(field, depth)))
        return msg

    return build()
