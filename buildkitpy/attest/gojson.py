"""LLB ops as BuildKit marshals them to JSON for provenance (``solver/pb/json.go`` on top of Go's
``encoding/json`` of the generated structs).

Keys are the proto field names; zero scalars, empty lists/maps and unset messages are left out
(``omitempty``), a set but empty message is ``{}``; bytes are base64, enums numbers. The three
messages with a oneof have hand-written forms in BuildKit: ``Op`` puts its op under ``"Op"``,
``FileAction`` its action under ``"Action"`` (always writing input/secondaryInput/output; a symlink
action is not among the keys it knows, so it shows as ``{}``), ``UserOpt`` under ``"User"``.
"""

from __future__ import annotations

import base64
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

_ONEOF_KEYS = {"Op": ("op", "Op"), "FileAction": ("action", "Action"), "UserOpt": ("user", "User")}
# The oneof members BuildKit's hand-written JSON knows (and their keys).
_ONEOF_MEMBERS = {
    "Op": {"exec": "exec", "source": "source", "file": "file", "build": "build", "merge": "merge",
           "diff": "diff", "passthrough": "passthrough"},
    "FileAction": {"copy": "copy", "mkfile": "mkfile", "mkdir": "mkdir", "rm": "rm"},
    "UserOpt": {"byName": "byName", "byID": "byId"},
}
_ALWAYS = {"FileAction": ("input", "secondaryInput", "output")}
_FIELD_ORDER = {"Op": ("inputs", "Op", "platform", "constraints")}


def _scalar(fd: FieldDescriptor, value: Any) -> Any:
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode()
    return value


def _value(fd: FieldDescriptor, value: Any) -> Any:
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return to_go(value)
    return _scalar(fd, value)


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.type == FieldDescriptor.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry


def to_go(msg: Message) -> dict[str, Any]:
    """``msg`` as BuildKit's Go JSON (a dict to ``json.dumps``)."""
    desc = msg.DESCRIPTOR
    name = desc.name
    out: dict[str, Any] = {}
    oneof_name, oneof_key = _ONEOF_KEYS.get(name, ("", ""))
    always = _ALWAYS.get(name, ())
    for fd in desc.fields:
        if fd.containing_oneof is not None and fd.containing_oneof.name == oneof_name:
            continue
        if _is_map(fd):
            entries = getattr(msg, fd.name)
            if entries:
                vfd = fd.message_type.fields_by_name["value"]
                out[fd.name] = {k: _value(vfd, entries[k]) for k in sorted(entries)}
        elif fd.is_repeated:
            items = getattr(msg, fd.name)
            if items:
                out[fd.name] = [_value(fd, v) for v in items]
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            if msg.HasField(fd.name):
                out[fd.name] = to_go(getattr(msg, fd.name))
        else:
            value = getattr(msg, fd.name)
            if value or fd.name in always:
                out[fd.name] = _scalar(fd, value)
    if oneof_key:
        group: dict[str, Any] = {}
        which = msg.WhichOneof(oneof_name)
        members = _ONEOF_MEMBERS[name]
        if which in members:
            fd = desc.fields_by_name[which]
            value = getattr(msg, which)
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                group[members[which]] = to_go(value)
            elif value:
                group[members[which]] = _scalar(fd, value)
        out[oneof_key] = group
    order = _FIELD_ORDER.get(name)
    if order:
        out = {k: out[k] for k in order if k in out} | {k: v for k, v in out.items() if k not in order}
    return out
