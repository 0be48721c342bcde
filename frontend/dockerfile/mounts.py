"""``RUN --mount=...`` and ``RUN --device=...`` specs: comma-separated ``key=value`` CSV records.

BuildKit reads a mount twice. While parsing the Dockerfile it only checks the CSV syntax and that
``from`` holds no variable; the full check, with every value expanded, happens when the RUN is
dispatched, because ``type=$T`` is only known then. ``parse_mount(spec, None)`` is the first pass and
``parse_mount(spec, expander)`` the second.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from buildkitpy.gocompat import parse_bool, parse_uint, quote, ram_in_bytes, with_suggestion
from buildkitpy.llb.exec import CacheSharing

from .errors import DockerfileError

MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
# the --mount sharing values, mapped to the LLB cache sharing mode of the same name
SHARING_MODES: dict[str, CacheSharing] = {"shared": "shared", "private": "private", "locked": "locked"}
_MOUNT_KEYS = [
    "type", "from", "source", "target", "readonly", "id", "sharing", "required", "size", "mode",
    "uid", "gid", "src", "dst", "destination", "ro", "rw", "readwrite", "env",
]  # fmt: skip

Expander = Callable[[str], str]


class MountError(DockerfileError):
    """An invalid ``--mount`` or ``--device`` value (message as BuildKit words it)."""


@dataclass
class Mount:
    """One ``--mount``. Unset optional values stay ``None``/empty so defaults can be applied later
    (a secret's target, a cache's sharing mode), as BuildKit does at dispatch time."""

    type: str = "bind"
    from_: str = ""
    source: str = ""
    target: str = ""
    read_only: bool = False
    size_limit: int = 0
    cache_id: str = ""
    cache_sharing: CacheSharing | Literal[""] = ""
    required: bool = False
    env: str | None = None  # for secrets: expose as this environment variable
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None


@dataclass
class Device:
    """One ``--device`` (a CDI device name)."""

    name: str = ""
    required: bool = False


def csv_fields(line: str) -> list[str]:
    """One CSV record, as ``go-csvvalue`` reads it (``"`` quoting, ``""`` for a literal quote)."""
    if line.endswith("\r\n"):
        line = line[:-2]
    elif line.endswith("\n"):
        line = line[:-1]
    if not line:
        raise ValueError("EOF")

    def err(pos: int, what: str) -> ValueError:
        column = len(line[:pos].encode("utf-8", "surrogateescape")) + 1
        return ValueError(f"parse error on line 1, column {column}: {what}")

    fields: list[str] = []
    pos = 0
    while True:
        if pos >= len(line) or line[pos] != '"':
            end = line.find(",", pos)
            field = line[pos:] if end < 0 else line[pos:end]
            if '"' in field:
                raise err(pos + field.index('"'), 'bare " in non-quoted-field')
            fields.append(field)
            if end < 0:
                return fields
            pos = end + 1
            continue
        pos += 1  # opening quote
        fields.append("")
        while True:
            end = line.find('"', pos)
            if end < 0:
                raise err(pos, 'extraneous or missing " in quoted-field')
            fields[-1] += line[pos:end]
            pos = end + 1
            nxt = line[pos : pos + 1]
            if nxt == '"':
                fields[-1] += '"'
                pos += 1
            elif nxt == ",":
                pos += 1
                break
            elif nxt == "":
                return fields
            else:
                raise err(pos - 1, 'extraneous or missing " in quoted-field')


def parse_mount(spec: str, expander: Expander | None) -> Mount:
    """Parse one ``--mount`` value; without ``expander`` only the parse-time checks run."""
    try:
        fields = csv_fields(spec)
    except ValueError as e:
        raise MountError(f"failed to parse csv mounts: {e}") from None

    m = Mount()
    ro_auto = True
    for fld in fields:
        key, has_value, value = fld.partition("=")
        key = key.lower()
        if not has_value:
            if expander is None:
                continue  # evaluated at dispatch
            if key in ("readonly", "ro"):
                m.read_only, ro_auto = True, False
            elif key in ("readwrite", "rw"):
                m.read_only, ro_auto = False, False
            elif key == "required":
                if m.type not in ("secret", "ssh"):
                    raise MountError(f"unexpected key '{key}' for mount type '{m.type}'")
                m.required = True
            else:
                raise MountError(f"invalid field '{fld}' must be a key=value pair")
            continue

        if expander is not None:
            value = expander(value)
        elif key == "from":
            idx = value.find("$")
            if idx != -1 and idx != len(value) - 1:
                raise MountError(f"'{key}' doesn't support variable expansion, define alias stage instead")
        else:
            continue  # evaluated at dispatch

        if key == "type":
            if value.lower() not in MOUNT_TYPES:
                msg = f"unsupported mount type {quote(value)}"
                raise MountError(with_suggestion(msg, value, list(MOUNT_TYPES), True))
            m.type = value.lower()
        elif key == "from":
            m.from_ = value
        elif key in ("source", "src"):
            m.source = value
        elif key in ("target", "dst", "destination"):
            m.target = value
        elif key in ("readonly", "ro", "readwrite", "rw"):
            try:
                flag = parse_bool(value)
            except ValueError:
                raise MountError(f"invalid value for {key}: {value}") from None
            m.read_only = flag if key in ("readonly", "ro") else not flag
            ro_auto = False
        elif key == "required":
            if m.type not in ("secret", "ssh"):
                raise MountError(f"unexpected key '{key}' for mount type '{m.type}'")
            try:
                m.required = parse_bool(value)
            except ValueError:
                raise MountError(f"invalid value for {key}: {value}") from None
        elif key == "size":
            if m.type != "tmpfs":
                raise MountError(f"unexpected key '{key}' for mount type '{m.type}'")
            try:
                m.size_limit = ram_in_bytes(value)
            except ValueError:
                raise MountError(f"invalid value for {key}: {value}") from None
        elif key == "id":
            m.cache_id = value
        elif key == "sharing":
            if value.lower() not in SHARING_MODES:
                msg = f"unsupported sharing value {quote(value)}"
                raise MountError(with_suggestion(msg, value, list(SHARING_MODES), True))
            m.cache_sharing = SHARING_MODES[value.lower()]
        elif key in ("mode", "uid", "gid"):
            try:
                number = parse_uint(value, 8 if key == "mode" else 10, 32)
            except ValueError:
                raise MountError(f"invalid value {value} for {key}") from None
            setattr(m, key, number)
        elif key == "env":
            m.env = value
        else:
            msg = f"unexpected key '{key}' in '{fld}'"
            raise MountError(with_suggestion(msg, key, _MOUNT_KEYS, True))

    if m.type not in ("secret", "ssh", "cache"):
        for attr in ("mode", "uid", "gid"):
            if getattr(m, attr) is not None:
                raise MountError(f"{attr} not allowed for {quote(m.type)} type mounts")
    if ro_auto:
        m.read_only = m.type not in ("cache", "tmpfs")
    if m.type == "secret":
        if m.from_:
            raise MountError("secret mount should not have a from")
        if m.cache_sharing:
            raise MountError("secret mount should not define sharing")
        if not m.source and not m.target and not m.cache_id:
            raise MountError("invalid secret mount. one of source, target required")
        if m.source and m.cache_id:
            raise MountError("both source and id can't be set")
    if m.cache_sharing and m.type != "cache":
        raise MountError(f"invalid cache sharing set for {m.type} mount")
    return m


def parse_device(spec: str) -> Device:
    """Parse one ``--device`` value: ``name[,required[=bool]]`` or ``name=...``."""
    try:
        fields = csv_fields(spec)
    except ValueError as e:
        raise MountError(f"failed to parse csv devices: {e}") from None
    d = Device()
    for fld in fields:
        key, has_value, value = fld.partition("=")
        key = key.lower()
        if not has_value:
            if key == "required":
                d.required = True
            elif not d.name:
                d.name = fld
            else:
                raise MountError(f"invalid field '{fld}' must be a key=value pair")
            continue
        if key == "name":
            if d.name:
                raise MountError(f"device name already set to {d.name}")
            d.name = value
        elif key == "required":
            try:
                d.required = parse_bool(value)
            except ValueError:
                raise MountError(f"invalid value for {key}: {value}") from None
        elif not d.name:
            d.name = fld  # a CDI name may itself contain "="
        else:
            msg = f"unexpected key '{key}' in '{fld}'"
            raise MountError(with_suggestion(msg, key, ["name", "required"], True))
    return d
