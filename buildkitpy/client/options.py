"""Parsing of buildctl-style build options (``--output``, ``--secret``, ``--opt``, ``--local``, ...).

Pure functions: they only look at the strings (and, where buildctl does, at the environment and at
whether a destination path is a directory). Error texts follow buildctl's so scripts and users see
the same messages.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

EXPORTER_LOCAL = "local"
EXPORTER_TAR = "tar"
EXPORTER_OCI = "oci"
EXPORTER_DOCKER = "docker"
EXPORTER_IMAGE = "image"

# buildctl's secrets provider refuses larger secrets (500 KiB).
MAX_SECRET_SIZE = 500 * 1024

KNOWN_ENTITLEMENTS = frozenset({"security.insecure", "network.host", "device"})

STDOUT_DEST = "-"


class OptionError(ValueError):
    """A malformed command-line option; the message names the offending value."""


class NotSupportedYet(OptionError):
    """A well-formed option we do not implement yet (the CLI exits 2 on it)."""


def split_csv(value: str) -> list[str]:
    """One line of CSV fields, quoting like Go's csv reader (``"a,b"`` is one field)."""
    try:
        rows = list(csv.reader([value], skipinitialspace=False, strict=True))
    except csv.Error as exc:
        raise OptionError(f"failed to parse csv {value!r}: {exc}") from exc
    return rows[0] if rows else []


def _cut(field: str) -> tuple[str, str, bool]:
    key, sep, value = field.partition("=")
    return key, value, bool(sep)


# -- outputs -------------------------------------------------------------------------------------

@dataclass
class ExportEntry:
    """One ``--output``: an exporter type, the attrs sent to the daemon, and where the client puts
    what the daemon sends back (a directory for ``local``, a file path or stdout for tar-like)."""

    type: str
    attrs: dict[str, str] = field(default_factory=dict)
    output_dir: Path | None = None   # local exporter: the daemon's files land here
    output_file: str | None = None   # tar / oci / docker: raw bytes go here ("-" = stdout)

    @property
    def writes_to_client(self) -> bool:
        return self.output_dir is not None or self.output_file is not None


def parse_output(value: str, *, stdout_is_tty: bool | None = None) -> ExportEntry:
    """Parse one ``--output type=...,dest=...`` value like buildctl."""
    entry = ExportEntry(type="")
    for item in split_csv(value):
        key, val, ok = _cut(item)
        if not ok:
            raise OptionError(f"invalid value {item}")
        key = key.lower()
        if key == "type":
            entry.type = val
        else:
            entry.attrs[key] = val
    if not entry.type:
        raise OptionError("--output requires type=<type>")
    if "output" in entry.attrs:
        v = entry.attrs["output"]
        raise OptionError(f"output={v} not supported for --output, you meant dest={v}?")
    try:
        _resolve_destination(entry, stdout_is_tty)
    except OptionError as exc:
        if isinstance(exc, NotSupportedYet):
            raise
        raise OptionError(f"invalid output option: output: {exc}") from exc
    return entry


def _parse_go_bool(value: str) -> bool | None:
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return None


def _resolve_destination(entry: ExportEntry, stdout_is_tty: bool | None) -> None:
    dest = entry.attrs.get("dest", "")
    supports_file = supports_dir = False
    if entry.type == EXPORTER_LOCAL:
        supports_dir = True
    elif entry.type == EXPORTER_TAR:
        supports_file = True
    elif entry.type in (EXPORTER_OCI, EXPORTER_DOCKER):
        as_tar = _parse_go_bool(entry.attrs.get("tar", ""))
        as_tar = True if as_tar is None else as_tar
        supports_file, supports_dir = as_tar, not as_tar

    if supports_dir:
        if not dest:
            raise OptionError(f"output directory is required for {entry.type} exporter")
        if entry.type != EXPORTER_LOCAL:
            raise NotSupportedYet(f"--output type={entry.type},tar=false (OCI layout directory) "
                                  "is not supported yet")
        entry.output_dir = Path(dest)
        del entry.attrs["dest"]
    elif supports_file:
        if dest and dest != STDOUT_DEST:
            if os.path.isdir(dest):
                raise OptionError("destination file is a directory")
            entry.output_file = dest
        else:
            if stdout_is_tty is None:
                stdout_is_tty = os.isatty(1)
            if stdout_is_tty:
                raise OptionError(f"output file is required for {entry.type} exporter. "
                                  "refusing to write to console")
            entry.output_file = STDOUT_DEST
        entry.attrs.pop("dest", None)
    elif dest:
        raise OptionError(f"output {dest} is not supported by {entry.type} exporter")


def parse_outputs(values: list[str], *, stdout_is_tty: bool | None = None) -> list[ExportEntry]:
    return [parse_output(v, stdout_is_tty=stdout_is_tty) for v in values]


# -- secrets -------------------------------------------------------------------------------------

@dataclass
class SecretSource:
    id: str
    file_path: str = ""
    env: str = ""


def parse_secret(value: str) -> SecretSource:
    """Parse one ``--secret id=..,src=..|env=..`` value."""
    src = SecretSource(id="")
    typ = ""
    for item in split_csv(value):
        key, val, ok = _cut(item)
        if not ok:
            raise OptionError(f"invalid field '{item}' must be a key=value pair")
        key = key.lower()
        if key == "type":
            if val not in ("file", "env"):
                raise OptionError(f'unsupported secret type "{val}"')
            typ = val
        elif key == "id":
            src.id = val
        elif key in ("source", "src"):
            src.file_path = val
        elif key == "env":
            src.env = val
        else:
            raise OptionError(f"unexpected key '{key}' in '{item}'")
    if typ == "env" and not src.env:
        src.env, src.file_path = src.file_path, ""
    return src


def load_secrets(sources: list[SecretSource], environ: dict[str, str] | None = None) -> dict[str, bytes]:
    """Resolve secret sources to their values now (files are read, env vars looked up).

    Like buildctl: a source with neither ``src`` nor ``env`` reads the env var named like the id if
    it exists, else the file named like the id.
    """
    env = os.environ if environ is None else environ
    out: dict[str, bytes] = {}
    for s in sources:
        if not s.id:
            raise OptionError("secret missing ID")
        file_path, env_name = s.file_path, s.env
        if not file_path and not env_name:
            if s.id in env:
                env_name = s.id
            else:
                file_path = s.id
        if env_name:
            out[s.id] = env.get(env_name, "").encode()
            continue
        try:
            size = os.stat(file_path).st_size
        except OSError as exc:
            raise OptionError(f"failed to stat {file_path}: {exc.strerror or exc}") from exc
        if size > MAX_SECRET_SIZE:
            raise OptionError(f"secret {s.id} too big. max size 500KiB")
        with open(file_path, "rb") as f:
            out[s.id] = f.read()
    return out


# -- frontend opts, locals, entitlements ---------------------------------------------------------

def attr_map(values: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        key, val, ok = _cut(v)
        if not ok:
            raise OptionError(f"invalid value {v}")
        out[key] = val
    return out


BUILD_ARG_PREFIX = "build-arg:"
PROPAGATED_ENV = ("SOURCE_DATE_EPOCH",)


def parse_opts(values: list[str], environ: dict[str, str] | None = None) -> dict[str, str]:
    """``--opt k=v`` list → frontend attrs.

    ``build-arg:NAME`` without a value takes NAME from the environment (and is dropped when unset),
    and SOURCE_DATE_EPOCH is propagated as a build arg, as buildctl does.
    """
    env = os.environ if environ is None else environ
    out = {BUILD_ARG_PREFIX + k: env[k] for k in PROPAGATED_ENV if k in env}
    resolved: list[str] = []
    for opt in values:
        if opt.startswith(BUILD_ARG_PREFIX):
            name = opt[len(BUILD_ARG_PREFIX):]
            if name and "=" not in name:
                if name not in env:
                    continue
                opt = f"{opt}={env[name]}"
        resolved.append(opt)
    try:
        out.update(attr_map(resolved))
    except OptionError as exc:
        raise OptionError(f"invalid opt: {exc}") from exc
    return out


def parse_locals(values: list[str]) -> dict[str, Path]:
    """``--local name=dir`` list → {name: directory}; each directory must exist."""
    try:
        named = attr_map(values)
    except OptionError as exc:
        raise OptionError(f"invalid local: {exc}") from exc
    out: dict[str, Path] = {}
    for name, directory in named.items():
        path = Path(directory)
        if not path.is_dir():
            reason = "not a directory" if path.exists() else "no such file or directory"
            raise OptionError(f"invalid local: {name}={directory}: {reason}")
        out[name] = path.resolve()
    return out


def validate_allow(values: list[str]) -> list[str]:
    """Check ``--allow`` entitlements (``device`` may carry ``=name[,alias=x]``)."""
    for v in values:
        key, rest, has_cfg = _cut(v)
        name = key if key == "device" else v
        if name not in KNOWN_ENTITLEMENTS:
            raise OptionError(f"unknown entitlement {v}")
        if key == "device" and has_cfg and rest:
            for item in split_csv(rest)[1:]:
                k, _, ok = _cut(item)
                if not ok:
                    raise OptionError(f'invalid device config "{item}"')
                if k != "alias":
                    raise OptionError(f'unknown device config key "{k}"')
    return list(values)


# -- cache ---------------------------------------------------------------------------------------

@dataclass
class CacheOptionsEntry:
    type: str
    attrs: dict[str, str] = field(default_factory=dict)


def _parse_cache_csv(value: str, flag: str) -> CacheOptionsEntry:
    entry = CacheOptionsEntry(type="")
    for item in split_csv(value):
        key, val, ok = _cut(item)
        if not ok:
            raise OptionError(f"invalid value {item}")
        key = key.lower()
        if key == "type":
            entry.type = val
        else:
            entry.attrs[key] = val
    if not entry.type:
        raise OptionError(f"{flag} requires type=<type>")
    return entry


def parse_export_cache(values: list[str]) -> list[CacheOptionsEntry]:
    """``--export-cache``; a bare ref is the deprecated form of ``type=registry,ref=<ref>``."""
    out = []
    for v in values:
        if "type=" not in v:
            out.append(CacheOptionsEntry("registry", {"mode": "min", "ref": v}))
            continue
        entry = _parse_cache_csv(v, "--export-cache")
        entry.attrs.setdefault("mode", "min")
        out.append(entry)
    return out


def parse_import_cache(values: list[str]) -> list[CacheOptionsEntry]:
    """``--import-cache``; a bare ref is the deprecated form of ``type=registry,ref=<ref>``."""
    out = []
    for v in values:
        if "type=" not in v:
            out.append(CacheOptionsEntry("registry", {"ref": v}))
            continue
        out.append(_parse_cache_csv(v, "--import-cache"))
    return out


# -- ssh -----------------------------------------------------------------------------------------

@dataclass
class SSHAgentConfig:
    id: str
    paths: list[str] = field(default_factory=list)
    raw: bool = False


def parse_ssh(values: list[str]) -> list[SSHAgentConfig]:
    """``--ssh default|<id>[=<socket>[,raw=false]|<key>[,<key>]]``; no paths means ``$SSH_AUTH_SOCK``."""
    out = []
    for v in values:
        key, val, ok = _cut(v)
        cfg = SSHAgentConfig(id=key)
        if ok:
            for p in val.split(","):
                k, pv, has = _cut(p)
                if has and k == "raw":
                    b = _parse_go_bool(pv)
                    if b is None:
                        raise OptionError(f"invalid value for 'raw': {pv}")
                    cfg.raw = b
                else:
                    cfg.paths.append(p)
        if cfg.raw and len(cfg.paths) != 1:
            raise OptionError(f'raw mode must supply exactly one socket path for "{cfg.id}"')
        out.append(cfg)
    return out
