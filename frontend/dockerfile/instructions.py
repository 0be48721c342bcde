"""Typed Dockerfile instructions built from parser nodes, and their grouping into build stages.

Validation here is BuildKit's ``instructions`` package: argument counts, flags each instruction
accepts, and the per-instruction rules, with the same messages. Variable expansion is not done here
(see ``expand.py``); values keep their quotes and ``$`` references.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from buildkitpy.gocompat import parse_duration, parse_int, quote, trim_space, with_suggestion

from . import parser as dfparser
from .flags import BFlags, FlagError
from .mounts import Device, Mount, MountError, parse_device, parse_mount
from .parser import DockerfileParseError, Heredoc, Node, ParseResult


class _Invalid(Exception):
    """An instruction BuildKit rejects; located by ``parse_instruction``."""


# --- data ---------------------------------------------------------------------------------------------


@dataclass
class KeyValuePair:
    key: str
    value: str
    no_delim: bool = False  # legacy "ENV key value" form (BuildKit lints it)


@dataclass
class KeyValuePairOptional:
    """An ARG: ``value`` is None when no default was given (``ARG NAME``)."""

    key: str
    value: str | None = None
    doc_comment: str = ""


@dataclass
class SourceContent:
    """A COPY/ADD source given inline as a heredoc: ``path`` is the heredoc name."""

    path: str
    data: str
    expand: bool


@dataclass
class ShellInlineFile:
    """A heredoc attached to RUN (its body is kept as written; ``chomp`` still to be applied)."""

    name: str
    data: str
    chomp: bool = False


@dataclass
class HealthConfig:
    """The image config's Healthcheck; durations in nanoseconds (0 means inherit the default)."""

    test: list[str]
    interval: int = 0
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0


@dataclass(kw_only=True)
class Instruction:
    """What every instruction has: its keyword as written, source text, lines and the comments above."""

    name: str
    code: str
    start_line: int = 0
    end_line: int = 0
    comments: list[str] = field(default_factory=list)

    @property
    def keyword(self) -> str:
        return self.name.lower()


@dataclass(kw_only=True)
class FromCommand(Instruction):
    """``FROM [--platform=p] base [AS name]``; ``stage_name`` is lower-cased, empty when unnamed."""

    base_name: str
    stage_name: str = ""
    platform: str = ""
    doc_comment: str = ""


@dataclass(kw_only=True)
class EnvCommand(Instruction):
    env: list[KeyValuePair]


@dataclass(kw_only=True)
class LabelCommand(Instruction):
    labels: list[KeyValuePair]


@dataclass(kw_only=True)
class MaintainerCommand(Instruction):
    maintainer: str


@dataclass(kw_only=True)
class _SourcesAndDest(Instruction):
    dest_path: str
    source_paths: list[str] = field(default_factory=list)
    source_contents: list[SourceContent] = field(default_factory=list)
    chown: str = ""
    chmod: str = ""
    link: bool = False
    exclude_patterns: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class AddCommand(_SourcesAndDest):
    """``keep_git_dir``/``unpack`` are None unless the flag was given (the defaults depend on the
    source)."""

    checksum: str = ""
    keep_git_dir: bool | None = None
    unpack: bool | None = None


@dataclass(kw_only=True)
class CopyCommand(_SourcesAndDest):
    from_: str = ""
    parents: bool = False


@dataclass(kw_only=True)
class _ShellDependent(Instruction):
    """RUN/CMD/ENTRYPOINT: exec form keeps the JSON items; shell form is one joined string and
    ``prepend_shell`` asks for the stage's SHELL in front."""

    cmd_line: list[str] | None = field(default_factory=list)
    files: list[ShellInlineFile] = field(default_factory=list)
    prepend_shell: bool = True


@dataclass(kw_only=True)
class RunCommand(_ShellDependent):
    """``mount_specs`` are the raw ``--mount`` values; ``mounts`` stays None until ``expand`` has
    evaluated them with the stage's variables, as BuildKit only validates them fully at dispatch."""

    mount_specs: list[str] = field(default_factory=list)
    mounts: list[Mount] | None = None
    network: str = "default"
    security: str = "sandbox"
    devices: list[Device] = field(default_factory=list)
    flags_used: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class CmdCommand(_ShellDependent):
    pass


@dataclass(kw_only=True)
class EntrypointCommand(_ShellDependent):
    """``cmd_line`` is None for ``ENTRYPOINT []``, which clears the entrypoint."""


@dataclass(kw_only=True)
class OnbuildCommand(Instruction):
    """``expression`` is the trigger's source (heredocs appended), re-parsed when the trigger fires."""

    expression: str

    def trigger(self) -> Instruction:
        """Parse the trigger as a child build will (with the default escape token)."""
        result = dfparser.parse(self.expression)
        if len(result.nodes) != 1:
            raise DockerfileParseError("onbuild trigger should be a single expression", self.start_line)
        return parse_instruction(result.nodes[0])


@dataclass(kw_only=True)
class WorkdirCommand(Instruction):
    path: str


@dataclass(kw_only=True)
class HealthCheckCommand(Instruction):
    health: HealthConfig


@dataclass(kw_only=True)
class ExposeCommand(Instruction):
    ports: list[str]


@dataclass(kw_only=True)
class UserCommand(Instruction):
    user: str


@dataclass(kw_only=True)
class VolumeCommand(Instruction):
    volumes: list[str]


@dataclass(kw_only=True)
class StopSignalCommand(Instruction):
    signal: str


@dataclass(kw_only=True)
class ArgCommand(Instruction):
    args: list[KeyValuePairOptional]


@dataclass(kw_only=True)
class ShellCommand(Instruction):
    shell: list[str]


@dataclass
class Stage:
    """A FROM and the instructions up to the next FROM."""

    name: str
    base_name: str
    platform: str = ""
    commands: list[Instruction] = field(default_factory=list)
    orig_cmd: str = "FROM"
    doc_comment: str = ""
    source_code: str = ""
    start_line: int = 0
    end_line: int = 0
    comments: list[str] = field(default_factory=list)


# --- per-instruction parsing ----------------------------------------------------------------------------


@dataclass
class _Request:
    command: str
    args: list[str]
    heredocs: list[Heredoc]
    json: bool
    flags: BFlags
    original: str
    node: Node

    def base(self) -> dict:
        n = self.node
        return dict(
            name=self.command,
            code=trim_space(self.original),
            start_line=n.start_line,
            end_line=n.end_line,
            comments=list(n.comments),
        )

    def parse_flags(self) -> None:
        try:
            self.flags.parse()
        except FlagError as e:
            raise _Invalid(str(e)) from None


def _node_args(node: Node) -> list[str]:
    if node.sub is not None:
        return [node.sub.value, *_node_args(node.sub)]
    return list(node.args)


def _doc_comment(comments: list[str], name: str) -> str:
    if not name:
        return ""
    for line in comments:
        if line.startswith(name + " "):
            return line[len(name) + 1 :]
    return ""


def _handle_json_args(args: list[str], is_json: bool) -> list[str]:
    if not args:
        return []
    return list(args) if is_json else [" ".join(args)]


def _kvps(args: list[str], cmd: str) -> list[KeyValuePair]:
    if not args:
        raise _Invalid(f"{cmd} requires at least one argument")
    if len(args) % 3:
        raise _Invalid(f"Bad input to {cmd}, too many arguments")
    out = []
    for i in range(0, len(args), 3):
        if not args[i]:
            raise _Invalid(f"{cmd} names can not be blank")
        out.append(KeyValuePair(args[i], args[i + 1], no_delim=args[i + 2] == ""))
    return out


def _parse_env(req: _Request) -> EnvCommand:
    req.parse_flags()
    return EnvCommand(env=_kvps(req.args, "ENV"), **req.base())


def _parse_label(req: _Request) -> LabelCommand:
    req.parse_flags()
    return LabelCommand(labels=_kvps(req.args, "LABEL"), **req.base())


def _parse_maintainer(req: _Request) -> MaintainerCommand:
    if len(req.args) != 1:
        raise _Invalid("MAINTAINER requires exactly one argument")
    req.parse_flags()
    return MaintainerCommand(maintainer=req.args[0], **req.base())


def _sources_and_dest(req: _Request, cmd: str) -> dict:
    srcs, dest = req.args[:-1], req.args[-1]
    if _heredoc_or_none(dest) is not None:
        raise _Invalid(f"{cmd} cannot accept a heredoc as a destination")
    by_name = {h.name: h for h in req.heredocs}
    paths: list[str] = []
    contents: list[SourceContent] = []
    for src in srcs:
        doc = _heredoc_or_none(src)
        if doc is None:
            paths.append(src)
            continue
        data = by_name[doc.name].content if doc.name in by_name else ""
        if doc.chomp:
            data = dfparser.chomp_heredoc_content(data)
        contents.append(SourceContent(path=doc.name, data=data, expand=doc.expand))
    return dict(dest_path=dest, source_paths=paths, source_contents=contents)


def _heredoc_or_none(word: str) -> Heredoc | None:
    try:
        return dfparser.parse_heredoc(word)
    except DockerfileParseError:
        return None


def _no_destination(cmd: str) -> _Invalid:
    return _Invalid(
        f"{cmd} requires at least two arguments, but only one was provided. "
        "Destination could not be determined"
    )


def _parse_add(req: _Request) -> AddCommand:
    if len(req.args) < 2:
        raise _no_destination("ADD")
    f = req.flags
    chown, chmod = f.add_string("chown"), f.add_string("chmod")
    link, keep_git = f.add_bool("link"), f.add_bool("keep-git-dir")
    checksum, unpack, excludes = f.add_string("checksum"), f.add_bool("unpack"), f.add_strings("exclude")
    req.parse_flags()
    return AddCommand(
        **_sources_and_dest(req, "ADD"),
        chown=chown.value,
        chmod=chmod.value,
        link=link.is_true,
        keep_git_dir=keep_git.is_true if f.is_used("keep-git-dir") else None,
        checksum=checksum.value,
        exclude_patterns=list(excludes.values),
        unpack=unpack.is_true if f.is_used("unpack") else None,
        **req.base(),
    )


def _parse_copy(req: _Request) -> CopyCommand:
    if len(req.args) < 2:
        raise _no_destination("COPY")
    f = req.flags
    chown, from_, chmod = f.add_string("chown"), f.add_string("from"), f.add_string("chmod")
    link, excludes, parents = f.add_bool("link"), f.add_strings("exclude"), f.add_bool("parents")
    req.parse_flags()
    return CopyCommand(
        **_sources_and_dest(req, "COPY"),
        from_=from_.value,
        chown=chown.value,
        chmod=chmod.value,
        link=link.is_true,
        parents=parents.is_true,
        exclude_patterns=list(excludes.values),
        **req.base(),
    )


_VALID_STAGE_NAME = re.compile(r"[a-z][a-z0-9_.-]*\Z")


def _parse_from(req: _Request) -> FromCommand:
    args = req.args
    stage_name = ""
    if len(args) == 3 and args[1].lower() == "as":
        stage_name = args[2].lower()
        if not _VALID_STAGE_NAME.match(stage_name):
            raise _Invalid(
                f"invalid name for build stage: {quote(args[2])}, name can't start with a number or "
                "contain symbols"
            )
    elif len(args) != 1:
        raise _Invalid("FROM requires either one or three arguments")
    platform = req.flags.add_string("platform")
    req.parse_flags()
    return FromCommand(
        base_name=args[0],
        stage_name=stage_name,
        platform=platform.value,
        doc_comment=_doc_comment(req.node.comments, stage_name),
        **req.base(),
    )


_ONBUILD_PREFIX = re.compile(r"^[\t\n\f\r ]*ONBUILD[\t\n\f\r ]*", re.IGNORECASE)


def _parse_onbuild(req: _Request) -> OnbuildCommand:
    if not req.args:
        raise _Invalid("ONBUILD requires at least one argument")
    req.parse_flags()
    trigger = trim_space(req.args[0]).upper()
    if trigger == "ONBUILD":
        raise _Invalid("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    if trigger in ("MAINTAINER", "FROM"):
        raise _Invalid(f"{trigger} isn't allowed as an ONBUILD trigger")
    expression = _ONBUILD_PREFIX.sub("", req.original, count=1)
    for doc in req.heredocs:
        expression += "\n" + doc.content + doc.name
    return OnbuildCommand(expression=expression, **req.base())


def _parse_workdir(req: _Request) -> WorkdirCommand:
    if len(req.args) != 1:
        raise _Invalid("WORKDIR requires exactly one argument")
    req.parse_flags()
    return WorkdirCommand(path=req.args[0], **req.base())


def _shell_dependent(req: _Request, empty_as_none: bool) -> dict:
    files = [ShellInlineFile(name=h.name, data=h.content, chomp=h.chomp) for h in req.heredocs]
    cmd_line: list[str] | None = _handle_json_args(req.args, req.json)
    if empty_as_none and not cmd_line:
        cmd_line = None
    return dict(cmd_line=cmd_line, files=files, prepend_shell=not req.json)


_NETWORK_MODES = ("default", "none", "host")
_SECURITY_MODES = ("insecure", "sandbox")


def _parse_run(req: _Request) -> RunCommand:
    f = req.flags
    devices, mounts = f.add_strings("device"), f.add_strings("mount")
    network, security = f.add_string("network", "default"), f.add_string("security", "sandbox")
    req.parse_flags()
    cmd = RunCommand(
        **_shell_dependent(req, False),
        flags_used=list(f.used),
        mount_specs=list(mounts.values),
        **req.base(),
    )
    try:
        cmd.devices = [parse_device(spec) for spec in devices.values]
        for spec in mounts.values:
            parse_mount(spec, None)  # the parse-time checks only; see mounts.py
    except MountError as e:
        raise _Invalid(str(e)) from None
    if network.value not in _NETWORK_MODES:
        raise _Invalid(f"invalid network mode {quote(network.value)}")
    if security.value not in _SECURITY_MODES:
        raise _Invalid(f"security {quote(security.value)} is not valid")
    cmd.network, cmd.security = network.value, security.value
    return cmd


def _parse_cmd(req: _Request) -> CmdCommand:
    req.parse_flags()
    return CmdCommand(**_shell_dependent(req, False), **req.base())


def _parse_entrypoint(req: _Request) -> EntrypointCommand:
    req.parse_flags()
    return EntrypointCommand(**_shell_dependent(req, True), **req.base())


_MIN_INTERVAL_NS = 1_000_000  # 1ms


def _parse_interval(name: str, value: str) -> int:
    if not value:
        return 0
    try:
        d = parse_duration(value)
    except ValueError as e:
        raise _Invalid(str(e)) from None
    if d == 0:
        return 0
    if d < _MIN_INTERVAL_NS:
        raise _Invalid(f"Interval {quote(name)} cannot be less than 1ms")
    return d


def _parse_healthcheck(req: _Request) -> HealthCheckCommand:
    if not req.args:
        raise _Invalid("HEALTHCHECK requires at least one argument")
    typ = req.args[0].upper()
    args = req.args[1:]
    if typ == "NONE":
        # BuildKit does not look at flags here: "HEALTHCHECK --bogus NONE" is accepted.
        if args:
            raise _Invalid("HEALTHCHECK NONE takes no arguments")
        return HealthCheckCommand(health=HealthConfig(test=["NONE"]), **req.base())

    f = req.flags
    names = ("interval", "timeout", "start-period", "start-interval")
    durations = {n: f.add_string(n) for n in names}
    retries_flag = f.add_string("retries")
    req.parse_flags()
    if typ != "CMD":
        raise _Invalid(f"Unknown type {quote(typ)} in HEALTHCHECK (try CMD)")
    cmd = _handle_json_args(args, req.json)
    if not cmd:
        raise _Invalid("Missing command after HEALTHCHECK CMD")
    health = HealthConfig(test=["CMD" if req.json else "CMD-SHELL", *cmd])
    health.interval = _parse_interval("interval", durations["interval"].value)
    health.timeout = _parse_interval("timeout", durations["timeout"].value)
    health.start_period = _parse_interval("start-period", durations["start-period"].value)
    health.start_interval = _parse_interval("start-interval", durations["start-interval"].value)
    if retries_flag.value:
        try:
            retries = parse_int(retries_flag.value, 10, 32)
        except ValueError as e:
            raise _Invalid(str(e)) from None
        if retries < 0:
            raise _Invalid(f"--retries cannot be negative ({retries})")
        health.retries = retries
    return HealthCheckCommand(health=health, **req.base())


def _parse_expose(req: _Request) -> ExposeCommand:
    if not req.args:
        raise _Invalid("EXPOSE requires at least one argument")
    req.parse_flags()
    return ExposeCommand(ports=sorted(req.args), **req.base())


def _parse_user(req: _Request) -> UserCommand:
    if len(req.args) != 1:
        raise _Invalid("USER requires exactly one argument")
    req.parse_flags()
    return UserCommand(user=req.args[0], **req.base())


def _parse_volume(req: _Request) -> VolumeCommand:
    if not req.args:
        raise _Invalid("VOLUME requires at least one argument")
    req.parse_flags()
    volumes = []
    for v in req.args:
        v = trim_space(v)
        if not v:
            raise _Invalid("VOLUME specified can not be an empty string")
        volumes.append(v)
    return VolumeCommand(volumes=volumes, **req.base())


def _parse_stopsignal(req: _Request) -> StopSignalCommand:
    # Like BuildKit, flags on STOPSIGNAL (and ARG) are not checked at all.
    if len(req.args) != 1:
        raise _Invalid("STOPSIGNAL requires exactly one argument")
    return StopSignalCommand(signal=req.args[0], **req.base())


def _parse_arg(req: _Request) -> ArgCommand:
    if not req.args:
        raise _Invalid("ARG requires at least one argument")
    pairs = []
    for arg in req.args:
        if "=" in arg:
            key, value = arg.split("=", 1)
            if not key:
                raise _Invalid("ARG names can not be blank")
            pair = KeyValuePairOptional(key, value)
        else:
            pair = KeyValuePairOptional(arg)
        pair.doc_comment = _doc_comment(req.node.comments, pair.key)
        pairs.append(pair)
    return ArgCommand(args=pairs, **req.base())


def _parse_shell(req: _Request) -> ShellCommand:
    req.parse_flags()
    shell = _handle_json_args(req.args, req.json)
    if not shell:
        raise _Invalid("SHELL requires at least one argument")
    if not req.json:
        raise _Invalid("SHELL requires the arguments to be in JSON form")
    return ShellCommand(shell=shell, **req.base())


_PARSERS = {
    "env": _parse_env,
    "maintainer": _parse_maintainer,
    "label": _parse_label,
    "add": _parse_add,
    "copy": _parse_copy,
    "from": _parse_from,
    "onbuild": _parse_onbuild,
    "workdir": _parse_workdir,
    "run": _parse_run,
    "cmd": _parse_cmd,
    "healthcheck": _parse_healthcheck,
    "entrypoint": _parse_entrypoint,
    "expose": _parse_expose,
    "user": _parse_user,
    "volume": _parse_volume,
    "stopsignal": _parse_stopsignal,
    "arg": _parse_arg,
    "shell": _parse_shell,
}


def parse_instruction(node: Node) -> Instruction:
    """Build the typed instruction for one node.

    Raises ``DockerfileParseError`` whose message is BuildKit's bare reason (``parse_instructions``
    adds the ``dockerfile parse error on line N:`` prefix that users see).
    """
    fn = _PARSERS.get(node.keyword)
    try:
        if fn is None:
            msg = f"unknown instruction: {node.value}"
            names = [n.upper() for n in dfparser.INSTRUCTIONS]
            raise _Invalid(with_suggestion(msg, node.value, names, False))
        req = _Request(
            command=node.value,
            args=_node_args(node),
            heredocs=node.heredocs,
            json=node.json,
            flags=BFlags(node.flags),
            original=node.original,
            node=node,
        )
        return fn(req)
    except _Invalid as e:
        raise DockerfileParseError(
            str(e), node.start_line, end_line=node.end_line, text=node.original
        ) from None


def parse_instructions(nodes: ParseResult | list[Node]) -> list[Instruction]:
    """Typed instructions for every node, with BuildKit's user-facing error wording."""
    if isinstance(nodes, ParseResult):
        nodes = nodes.nodes
    out = []
    for node in nodes:
        try:
            out.append(parse_instruction(node))
        except DockerfileParseError as e:
            raise DockerfileParseError(
                f"dockerfile parse error on line {node.start_line}: {e.reason}",
                node.start_line,
                end_line=node.end_line,
                text=node.original,
                reason=e.reason,
            ) from None
    return out


def parse_stages(instructions: list[Instruction]) -> tuple[list[Stage], list[ArgCommand]]:
    """Group instructions into stages; ARGs before the first FROM are returned as global (meta) args."""
    stages: list[Stage] = []
    meta_args: list[ArgCommand] = []
    for ins in instructions:
        if not stages and isinstance(ins, ArgCommand):
            meta_args.append(ins)
            continue
        if isinstance(ins, FromCommand):
            stages.append(
                Stage(
                    name=ins.stage_name,
                    base_name=ins.base_name,
                    platform=ins.platform,
                    orig_cmd=ins.name,
                    doc_comment=ins.doc_comment,
                    source_code=ins.code,
                    start_line=ins.start_line,
                    end_line=ins.end_line,
                    comments=list(ins.comments),
                )
            )
        elif not stages:
            raise DockerfileParseError(
                "no build stage in current context", ins.start_line, end_line=ins.end_line, text=ins.code
            )
        else:
            stages[-1].commands.append(ins)
    return stages, meta_args


def find_stage(stages: list[Stage], name: str) -> int | None:
    """Index of the stage called ``name``; stage names compare case-insensitively."""
    for i, stage in enumerate(stages):
        if stage.name.casefold() == name.casefold():
            return i
    return None


@dataclass
class Dockerfile:
    """Everything the front half produces for one Dockerfile."""

    ast: ParseResult
    stages: list[Stage]
    meta_args: list[ArgCommand]


def parse_dockerfile(data: bytes | str) -> Dockerfile:
    """Parse, type and stage a Dockerfile with the checks the frontend makes before converting it."""
    if not data:
        raise DockerfileParseError("the Dockerfile cannot be empty", 0)
    ast = dfparser.parse(data)
    stages, meta_args = parse_stages(parse_instructions(ast))
    if not stages:
        raise DockerfileParseError("dockerfile contains no stages to build", 0)
    return Dockerfile(ast=ast, stages=stages, meta_args=meta_args)
